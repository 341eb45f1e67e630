package contract

import (
	"errors"
	"fmt"
	"unicode"
	"unicode/utf8"
)

// MaxUserIDLen is the longest user id accepted, in bytes.
const MaxUserIDLen = 256

// ErrInvalidUserID is matched (errors.Is) by every user id validation error.
var ErrInvalidUserID = errors.New("invalid userId")

// InvalidUserIDError says why a user id was refused. Reason is a short
// stable label (for metrics); Error() is the message shown to the sender.
type InvalidUserIDError struct {
	Reason string // empty, too_long, invalid_utf8, control_char, space, glob_char, not_string, malformed
	Detail string
	// Field is the member that holds the value: "" for userId; connectionId
	// and gatewayId follow the same rules.
	Field string
}

func (e *InvalidUserIDError) Error() string {
	f := e.Field
	if f == "" {
		f = "userId"
	}
	return "invalid " + f + ": " + e.Detail
}

// Is makes errors.Is(err, ErrInvalidUserID) true.
func (e *InvalidUserIDError) Is(target error) bool { return target == ErrInvalidUserID }

func invalid(reason, format string, args ...any) error {
	return &InvalidUserIDError{Reason: reason, Detail: fmt.Sprintf(format, args...)}
}

// InvalidReason returns the label of an *InvalidUserIDError in err's chain,
// or "other".
func InvalidReason(err error) string {
	var e *InvalidUserIDError
	if errors.As(err, &e) {
		return e.Reason
	}
	return "other"
}

// NewInvalidUserID returns an invalid-id error with the given reason label,
// for callers that refuse an id before it is a string (e.g. a JSON number).
func NewInvalidUserID(reason, detail string) error {
	return &InvalidUserIDError{Reason: reason, Detail: detail}
}

// ValidateUserID reports why id cannot be a user id, or nil. An id must be
// 1..256 bytes of valid UTF-8 without control characters, white space, the
// replacement character U+FFFD (what a decoder makes of broken encodings) or
// the Redis glob characters * ? [ ] \ (so an id can never match another
// user's key in a SCAN MATCH or KEYS pattern written against the seed's
// key format).
func ValidateUserID(id string) error {
	switch {
	case id == "":
		return invalid("empty", "empty")
	case len(id) > MaxUserIDLen:
		return invalid("too_long", "%d bytes, over the maximum of %d", len(id), MaxUserIDLen)
	}
	for i := 0; i < len(id); {
		c := id[i]
		if c < utf8.RuneSelf {
			switch {
			case c < 0x20 || c == 0x7f:
				return invalid("control_char", "control character 0x%02x at byte %d", c, i)
			case c == ' ':
				return invalid("space", "space at byte %d", i)
			case c == '*' || c == '?' || c == '[' || c == ']' || c == '\\':
				return invalid("glob_char", "glob character %q at byte %d", c, i)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(id[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			return invalid("invalid_utf8", "invalid UTF-8 at byte %d", i)
		case r == utf8.RuneError:
			return invalid("invalid_utf8", "replacement character U+FFFD (broken encoding) at byte %d", i)
		case unicode.IsControl(r):
			return invalid("control_char", "control character %U at byte %d", r, i)
		case unicode.IsSpace(r) || r == '\uFEFF':
			return invalid("space", "white space %U at byte %d", r, i)
		}
		i += size
	}
	return nil
}
