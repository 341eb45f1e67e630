package config

import (
	"errors"
	"log/slog"
	"strconv"
	"time"
)

// field reads a setting's text into its Config field (set) and shows the
// field's value for the log (get); one per setting, so the table alone
// decides what Load fills and what LogValue shows.
type field struct {
	set func(c *Config, v string) error
	get func(c *Config) slog.Value
}

func stringField(f func(*Config) *string) field {
	return field{
		set: func(c *Config, v string) error { *f(c) = v; return nil },
		get: func(c *Config) slog.Value { return slog.StringValue(*f(c)) },
	}
}

// offStringField is stringField where "off" means empty: an empty
// environment variable reads as unset, so "off" is how the environment
// disables what the setting enables.
func offStringField(f func(*Config) *string) field {
	fl := stringField(f)
	set := fl.set
	fl.set = func(c *Config, v string) error {
		if v == "off" {
			v = ""
		}
		return set(c, v)
	}
	return fl
}

func durationField(f func(*Config) *time.Duration) field {
	return field{
		set: func(c *Config, v string) error {
			d, err := time.ParseDuration(v)
			if err != nil {
				return err
			}
			*f(c) = d
			return nil
		},
		get: func(c *Config) slog.Value { return slog.DurationValue(*f(c)) },
	}
}

func boolField(f func(*Config) *bool) field {
	return field{
		set: func(c *Config, v string) error {
			b, err := strconv.ParseBool(v)
			if err != nil {
				return errors.Unwrap(err) // strconv.ErrSyntax: the value is already in the message
			}
			*f(c) = b
			return nil
		},
		get: func(c *Config) slog.Value { return slog.BoolValue(*f(c)) },
	}
}

func intField(f func(*Config) *int) field {
	return field{
		set: func(c *Config, v string) error {
			n, err := strconv.Atoi(v)
			if err != nil {
				return errors.Unwrap(err) // strconv.ErrSyntax or ErrRange: the value is already in the message
			}
			*f(c) = n
			return nil
		},
		get: func(c *Config) slog.Value { return slog.IntValue(*f(c)) },
	}
}
