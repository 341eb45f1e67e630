package contract_test

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/presenced/presenced/contract"
)

func TestValidateUserID(t *testing.T) {
	cases := []struct {
		id     string
		reason string // "" means valid
	}{
		{"u-1", ""}, {"user@example.com", ""}, {"пользователь", ""}, {"用户", ""}, {"a:b/c", ""},
		{strings.Repeat("x", 256), ""},
		{"", "empty"}, {strings.Repeat("x", 257), "too_long"},
		{"a\x00b", "control_char"}, {"a\nb", "control_char"}, {"a\x7f", "control_char"}, {"a\u0085", "control_char"},
		{"a b", "space"}, {"a\u00a0b", "space"}, {"\ufeffa", "space"},
		{"*", "glob_char"}, {"a?", "glob_char"}, {"[a]", "glob_char"}, {"a]", "glob_char"}, {`a\`, "glob_char"},
		{"a\xffb", "invalid_utf8"}, {"a\ufffdb", "invalid_utf8"},
	}
	for _, c := range cases {
		err := contract.ValidateUserID(c.id)
		if c.reason == "" {
			if err != nil {
				t.Errorf("%q: %v", c.id, err)
			}
			continue
		}
		if !errors.Is(err, contract.ErrInvalidUserID) || contract.InvalidReason(err) != c.reason {
			t.Errorf("%q: err %v (reason %s), want reason %s", c.id, err, contract.InvalidReason(err), c.reason)
		}
	}
}

// FuzzValidateUserID: an accepted id is short, valid UTF-8 and free of
// characters that could address another user's key through a pattern.
func FuzzValidateUserID(f *testing.F) {
	for _, s := range []string{"u-1", "", "*", "a\x00", "\xff", "пользователь", strings.Repeat("x", 257)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		err := contract.ValidateUserID(id)
		if err != nil {
			if !errors.Is(err, contract.ErrInvalidUserID) || contract.InvalidReason(err) == "other" {
				t.Fatalf("unclassified error %v", err)
			}
			return
		}
		if id == "" || len(id) > contract.MaxUserIDLen || !utf8.ValidString(id) || strings.ContainsAny(id, "*?[]\\ \x00\n\r\t") {
			t.Fatalf("accepted %q", id)
		}
	})
}
