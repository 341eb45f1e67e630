package config

import (
	"net/url"
	"strings"
)

// mask replaces a secret in logs and error messages.
const mask = "xxxxx"

// RedactURL masks the secrets in a URL or a comma-separated list of URLs,
// for logs and error messages: a password becomes xxxxx (user:xxxxx@), a
// user-only userinfo (a NATS token) becomes xxxxx, and the value of any query
// parameter whose name suggests a secret (password, token, secret, key, auth,
// jwt, cred...) becomes xxxxx. It does not require the URL to parse, and
// leaves the rest of the text as it was.
func RedactURL(u string) string {
	if !strings.Contains(u, ",") {
		return redactOne(u)
	}
	parts := strings.Split(u, ",")
	for i, p := range parts {
		parts[i] = redactOne(p)
	}
	return strings.Join(parts, ",")
}

func redactOne(u string) string {
	query := ""
	if i := strings.IndexByte(u, '?'); i >= 0 {
		u, query = u[:i], u[i:]
	}
	start := 0
	if i := strings.Index(u, "://"); i >= 0 {
		start = i + len("://")
	}
	// The last @ before the query ends the userinfo, so a password holding
	// '/' or '@' is masked whole.
	if at := strings.LastIndexByte(u[start:], '@'); at > 0 {
		userinfo := u[start : start+at]
		if user, _, ok := strings.Cut(userinfo, ":"); ok {
			userinfo = user + ":" + mask
		} else {
			userinfo = mask
		}
		u = u[:start] + userinfo + u[start+at:]
	}
	return u + redactQuery(query)
}

func redactQuery(q string) string {
	if q == "" {
		return ""
	}
	frag := ""
	if i := strings.IndexByte(q, '#'); i >= 0 {
		q, frag = q[:i], q[i:]
	}
	params := strings.Split(q[1:], "&")
	for i, p := range params {
		k, _, ok := strings.Cut(p, "=")
		if ok && secretParam(k) {
			params[i] = k + "=" + mask
		}
	}
	return "?" + strings.Join(params, "&") + frag
}

func secretParam(k string) bool {
	k = strings.ToLower(k)
	if uk, err := url.QueryUnescape(k); err == nil {
		k = uk
	}
	for _, s := range []string{"pass", "pwd", "secret", "token", "key", "auth", "jwt", "cred", "sig"} {
		if strings.Contains(k, s) {
			return true
		}
	}
	return false
}
