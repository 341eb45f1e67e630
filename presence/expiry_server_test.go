package presence

import (
	"context"
	"testing"
)

func TestSameServer(t *testing.T) {
	for _, c := range []struct {
		conn, addr string
		want       bool
	}{
		{"127.0.0.1:6379", "127.0.0.1:6379", true},
		{"127.0.0.1:6379", "127.0.0.1:6380", false},
		{"127.0.0.1:6379", "127.0.0.2:6379", false},
		{"127.0.0.1:6379", "localhost:6379", true}, // a name is resolved
		{"[::1]:6379", "::1:6379", false},          // not host:port: an error, no move
		{"[::1]:6379", "[::1]:6379", true},
		{"[::ffff:127.0.0.1]:6379", "127.0.0.1:6379", true},
	} {
		got, err := sameServer(context.Background(), c.conn, c.addr)
		if got != c.want {
			t.Errorf("sameServer(%q, %q) = %v, %v; want %v", c.conn, c.addr, got, err, c.want)
		}
	}
}
