package config

import (
	"fmt"
	"io"
	"log/slog"
	"text/tabwriter"
)

// LogValue implements slog.LogValuer: every setting as a group, keyed by its
// flag name, with secrets in URLs masked by RedactURL and passwords and
// tokens replaced by xxxxx (left empty when unset). File names are shown;
// the files' contents never are.
func (c Config) LogValue() slog.Value {
	attrs := make([]slog.Attr, 0, len(settings))
	for _, st := range settings {
		v := st.field.get(&c)
		switch {
		case st.secret:
			v = slog.StringValue(maskSecret(v.String()))
		case st.url:
			v = slog.StringValue(RedactURL(v.String()))
		}
		attrs = append(attrs, slog.Attr{Key: st.Flag, Value: v})
	}
	return slog.GroupValue(attrs...)
}

// String returns the settings as LogValue shows them, secrets masked, so
// that printing a Config with %v or %+v cannot leak a password.
func (c Config) String() string { return c.LogValue().String() }

// GoString is String, for %#v.
func (c Config) GoString() string { return c.String() }

// Usage writes a table of every setting (flag, environment variable,
// default, meaning) to w, for --help.
func Usage(w io.Writer) {
	fmt.Fprintln(w, "Settings (a flag beats its environment variable, which beats the default):")
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "FLAG\tENVIRONMENT\tDEFAULT\tMEANING")
	for _, s := range settings {
		def := s.Default
		if def == "" {
			def = `""`
		}
		fmt.Fprintf(tw, "--%s\t%s\t%s\t%s\n", s.Flag, s.Env, def, s.Usage)
	}
	tw.Flush()
}
