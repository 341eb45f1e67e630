package contract

// The strict JSON object reader every decoder of the contract uses, on both
// sides (requests and queries on the server; replies and events in the
// client): only JSON white space (space, \t, \n, \r) around the object,
// member names matched exactly (after unescaping, as JSON defines a
// string's value), and a name that appears twice is an error.
// encoding/json alone would trim nothing but accept a name in any case
// ({"USERIDS":...}) and let the last of two equal names win, so a message
// could mean something other than what any strict reader sees.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// Errors of objectMembers besides encoding/json's syntax errors.
var (
	errEmptyBody = errors.New("empty body")
	errNotObject = errors.New("expected a JSON object")
)

// objectMembers calls fn with each member of the JSON object in data, in order,
// with its name and raw value, and returns fn's first error. It fails
// without calling fn further when data is not exactly one JSON object with
// JSON white space around it, or when a name repeats (compared after
// unescaping). fn must not keep value beyond its call unless it copies it;
// value is valid JSON.
func objectMembers(data []byte, fn func(name string, value json.RawMessage) error) error {
	i := skipJSONSpace(data)
	if i == len(data) {
		return errEmptyBody
	}
	if data[i] != '{' {
		return errNotObject
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if _, err := dec.Token(); err != nil { // '{'
		return err
	}
	var seen map[string]struct{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return unexpectedEOF(err)
		}
		name, ok := t.(string)
		if !ok {
			return fmt.Errorf("object key is %v, not a string", t)
		}
		if _, dup := seen[name]; dup {
			return fmt.Errorf("duplicate key %q", name)
		}
		if seen == nil {
			seen = make(map[string]struct{}, 2)
		}
		seen[name] = struct{}{}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return unexpectedEOF(err)
		}
		if err := fn(name, v); err != nil {
			return err
		}
	}
	if _, err := dec.Token(); err != nil { // '}'
		return unexpectedEOF(err)
	}
	if rest := data[dec.InputOffset():]; skipJSONSpace(rest) != len(rest) {
		return errors.New("data after the object")
	}
	return nil
}

// decodeObject decodes the object in data (see objectMembers) into fields: the value of
// each member whose name is a key of fields is unmarshalled into that
// destination (a pointer, as for json.Unmarshal); other members are
// ignored.
func decodeObject(data []byte, fields map[string]any) error {
	return objectMembers(data, func(name string, v json.RawMessage) error {
		dst, ok := fields[name]
		if !ok {
			return nil
		}
		return json.Unmarshal(v, dst)
	})
}

// skipJSONSpace returns the index of the first byte of b that is not JSON
// white space.
func skipJSONSpace(b []byte) int {
	i := 0
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// unexpectedEOF words the end of a truncated object as json.Unmarshal
// does.
func unexpectedEOF(err error) error {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return truncated{}
	}
	return err
}

type truncated struct{}

func (truncated) Error() string { return "unexpected end of JSON input" }
func (truncated) Unwrap() error { return io.ErrUnexpectedEOF }
