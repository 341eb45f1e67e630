package contract

import (
	"encoding/json"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
)

func TestObjectMembers(t *testing.T) {
	cases := []struct {
		name string
		in   string
		keys []string // nil: an error
		err  error
	}{
		{name: "object", in: `{"a":1,"b":[2,{"c":3}]}`, keys: []string{"a", "b"}},
		{name: "empty object", in: `{}`, keys: []string{}},
		{name: "json white space", in: " \t\r\n{ \"a\" : 1 } \t\r\n", keys: []string{"a"}},
		{name: "escaped name", in: `{"\u0061":1}`, keys: []string{"a"}},
		{name: "names differing in case", in: `{"a":1,"A":2}`, keys: []string{"a", "A"}},
		{name: "empty", in: "", err: errEmptyBody},
		{name: "white space only", in: " \n", err: errEmptyBody},
		{name: "vertical tab before", in: "\v{\"a\":1}", err: errNotObject},
		{name: "form feed after", in: "{\"a\":1}\f"},
		{name: "no-break space before", in: "\u00a0{\"a\":1}", err: errNotObject},
		{name: "next line after", in: "{\"a\":1}\u0085"},
		{name: "array", in: `[1]`, err: errNotObject},
		{name: "duplicate", in: `{"a":1,"a":2}`},
		{name: "duplicate after unescaping", in: `{"a":1,"\u0061":2}`},
		{name: "truncated", in: `{"a":1`},
		{name: "truncated value", in: `{"a":`},
		{name: "missing comma", in: `{"a":1 "b":2}`},
		{name: "trailing comma", in: `{"a":1,}`},
		{name: "second object", in: `{"a":1}{"b":2}`},
		{name: "garbage after", in: `{"a":1}x`},
		{name: "number key", in: `{1:2}`},
		{name: "deep", in: `{"a":` + strings.Repeat("[", 20000) + strings.Repeat("]", 20000) + `}`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var keys []string
			err := objectMembers([]byte(c.in), func(name string, v json.RawMessage) error {
				if !json.Valid(v) {
					t.Fatalf("value %q of %q is not JSON", v, name)
				}
				keys = append(keys, name)
				return nil
			})
			if c.keys == nil {
				if err == nil {
					t.Fatalf("accepted %q (keys %q)", c.in, keys)
				}
				if c.err != nil && !errors.Is(err, c.err) {
					t.Fatalf("err %v, want %v", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if keys == nil {
				keys = []string{}
			}
			if !slices.Equal(keys, c.keys) {
				t.Fatalf("keys %q, want %q", keys, c.keys)
			}
		})
	}
}

func TestDecodeObjectExactNames(t *testing.T) {
	var ids []string
	fields := map[string]any{"userIds": &ids}
	if err := decodeObject([]byte(`{"USERIDS":["a"],"userids":["b"],"x":1}`), fields); err != nil {
		t.Fatal(err)
	}
	if ids != nil {
		t.Fatalf("names in another case were taken for userIds: %q", ids)
	}
	if err := decodeObject([]byte(`{"userIds":["a"]}`), fields); err != nil || !slices.Equal(ids, []string{"a"}) {
		t.Fatalf("ids %q, %v", ids, err)
	}
	if err := decodeObject([]byte(`{"userIds":"a"}`), fields); err == nil {
		t.Fatal("a string decoded into []string")
	}
	if err := decodeObject([]byte(`{"userIds":["a"`), fields); !errors.Is(err, io.ErrUnexpectedEOF) || err.Error() != "unexpected end of JSON input" {
		t.Fatalf("truncated: %v", err)
	}
}
