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

// splitAddrs returns the comma-separated entries of list, trimmed; nil for
// an empty list.
func splitAddrs(list string) []string {
	if strings.TrimSpace(list) == "" {
		return nil
	}
	parts := strings.Split(list, ",")
	for i, p := range parts {
		parts[i] = strings.TrimSpace(p)
	}
	return parts
}

// checkAddrs fails unless every entry of the comma-separated list is
// host:port; an empty list passes.
func checkAddrs(list string) error {
	for _, a := range splitAddrs(list) {
		if a == "" {
			return errors.New("empty entry in list")
		}
		host, port, err := net.SplitHostPort(a)
		if err != nil {
			return fmt.Errorf("%q: want host:port", a)
		}
		if host == "" {
			return fmt.Errorf("%q has no host", a)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("%q: port %q: want a number from 1 to 65535", a, port)
		}
	}
	return nil
}

// checkTopology fails when more than one Redis topology is set: REDIS_URL
// (urlSet), REDIS_SENTINEL_ADDRS or REDIS_CLUSTER_ADDRS.
func checkTopology(c Config, name func(string) string, urlSet bool) error {
	var set []string
	if urlSet {
		set = append(set, name("REDIS_URL"))
	}
	if c.RedisSentinelAddrs != "" {
		set = append(set, name("REDIS_SENTINEL_ADDRS"))
	}
	if c.RedisClusterAddrs != "" {
		set = append(set, name("REDIS_CLUSTER_ADDRS"))
	}
	return exclusive(set, "set one Redis topology (one server, Sentinel or Cluster)")
}

// checkSentinelOnly fails when a Sentinel setting is set (set) without
// REDIS_SENTINEL_ADDRS, where it would silently not be used.
func checkSentinelOnly(c Config, name func(string) string, env string, set bool) error {
	if set && !c.Sentinel() {
		return fmt.Errorf("%s is set without %s", name(env), name("REDIS_SENTINEL_ADDRS"))
	}
	return nil
}
