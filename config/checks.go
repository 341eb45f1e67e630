package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"unicode"

	"github.com/redis/go-redis/v9"
)

func checkNATSURL(list string) error {
	if strings.TrimSpace(list) == "" {
		return errors.New("empty")
	}
	for _, raw := range strings.Split(list, ",") {
		raw = strings.TrimSpace(raw)
		if raw == "" {
			return errors.New("empty entry in list")
		}
		s := raw
		if !strings.Contains(s, "://") {
			s = "nats://" + s // as nats.go does
		}
		u, err := url.Parse(s)
		if err != nil {
			return errors.New("not a URL") // url.Error would repeat the secret
		}
		switch u.Scheme {
		case "nats", "tls", "ws", "wss":
		default:
			return fmt.Errorf("scheme %q: want nats, tls, ws or wss", u.Scheme)
		}
		if u.Hostname() == "" {
			return fmt.Errorf("%q has no host", RedactURL(raw))
		}
	}
	return nil
}

func checkRedisURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return errors.New("not a URL") // url.Error would repeat the secret
	}
	if u.Scheme != "redis" && u.Scheme != "rediss" {
		return fmt.Errorf("scheme %q: want redis or rediss", u.Scheme)
	}
	if u.Hostname() == "" {
		return errors.New("no host")
	}
	o, err := redis.ParseURL(s)
	if err != nil {
		return err
	}
	if o.TLSConfig != nil && o.TLSConfig.InsecureSkipVerify {
		return errors.New("skip_verify is not supported: trust a private CA with REDIS_TLS_CA_FILE")
	}
	return nil
}

func checkSubjectPrefix(p string) error {
	if p == "" {
		return errors.New("empty")
	}
	if r, ok := findSpaceOrControl(p); ok {
		return fmt.Errorf("contains whitespace or control character %q", r)
	}
	if strings.ContainsAny(p, "*>") {
		return errors.New("contains a wildcard (* or >)")
	}
	for _, tok := range strings.Split(p, ".") {
		if tok == "" {
			return errors.New("empty token (leading, trailing or double dot)")
		}
	}
	return nil
}

func checkListenAddr(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("port %q: want a number from 0 to 65535", port)
	}
	return nil
}

func checkIntRange(name string, v, lo, hi int) error {
	if v < lo || v > hi {
		return fmt.Errorf("%s must be between %d and %d, got %d", name, lo, hi, v)
	}
	return nil
}

func findSpaceOrControl(s string) (rune, bool) {
	for _, r := range s {
		if unicode.IsSpace(r) || unicode.IsControl(r) || r == unicode.ReplacementChar {
			return r, true
		}
	}
	return 0, false
}
