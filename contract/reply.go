package contract

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"unicode/utf8"
)

// The decoders of what presenced answers (replies to heartbeats,
// disconnects and queries), for clients. Each reads its body strictly, as
// presenced reads requests (see DecodeRequest): JSON white space only
// around one object, exact member names, none repeated; other members are
// ignored. Through these methods json.Unmarshal applies the same rule.

// UnmarshalJSON decodes a heartbeat or disconnect reply strictly.
func (r *Reply) UnmarshalJSON(data []byte) error {
	var out Reply
	if err := decodeObject(data, map[string]any{"accepted": &out.Accepted, "rejected": &out.Rejected, "error": &out.Error, "retry": &out.Retry}); err != nil {
		return err
	}
	*r = out
	return nil
}

// UnmarshalJSON decodes one rejection of a Reply strictly. Reason is not on
// the wire and stays empty.
func (r *Rejection) UnmarshalJSON(data []byte) error {
	var out Rejection
	if err := decodeObject(data, map[string]any{"userId": &out.UserID, "connectionId": &out.ConnectionID, "error": &out.Error}); err != nil {
		return fmt.Errorf("rejection: %w", err)
	}
	*r = out
	return nil
}

// UnmarshalJSON decodes a status reply strictly.
func (r *StatusReply) UnmarshalJSON(data []byte) error {
	var out StatusReply
	if err := decodeObject(data, map[string]any{"userId": &out.UserID, "online": &out.Online, "since": &out.Since, "expiresAt": &out.ExpiresAt, "version": &out.Version, "connections": &out.Connections, "heldUntil": &out.HeldUntil}); err != nil {
		return err
	}
	*r = out
	return nil
}

// UnmarshalJSON decodes one connection of a status reply strictly.
func (c *ConnectionStatus) UnmarshalJSON(data []byte) error {
	var out ConnectionStatus
	if err := decodeObject(data, map[string]any{"connectionId": &out.ConnectionID, "gatewayId": &out.GatewayID, "since": &out.Since, "expiresAt": &out.ExpiresAt}); err != nil {
		return fmt.Errorf("connection: %w", err)
	}
	*c = out
	return nil
}

// UnmarshalJSON decodes an online reply strictly. A reply as
// OnlineReply.AppendJSON writes it (no white space, no escapes) is read in
// one pass, its ids substrings of one copy of data.
func (r *OnlineReply) UnmarshalJSON(data []byte) error {
	if r.decodeFast(data) {
		return nil
	}
	return r.decodeStrict(data)
}

// decodeFast decodes the reply as presenced writes it (see fastReplyIDs).
func (r *OnlineReply) decodeFast(data []byte) bool {
	ids, rest, ok := fastReplyIDs(data, `{"online":`)
	if !ok || rest != "}" {
		return false
	}
	*r = OnlineReply{Online: ids}
	return true
}

func (r *OnlineReply) decodeStrict(data []byte) error {
	var out OnlineReply
	if err := decodeObject(data, map[string]any{"online": &out.Online}); err != nil {
		return err
	}
	*r = out
	return nil
}

// UnmarshalJSON decodes a list page strictly; a page as ListReply.AppendJSON
// writes it, with a numeric cursor, is read in one pass (as OnlineReply's).
func (r *ListReply) UnmarshalJSON(data []byte) error {
	if r.decodeFast(data) {
		return nil
	}
	return r.decodeStrict(data)
}

// decodeFast decodes the page as presenced writes it (see fastReplyIDs),
// with a numeric cursor.
func (r *ListReply) decodeFast(data []byte) bool {
	ids, rest, ok := fastReplyIDs(data, `{"userIds":`)
	if !ok {
		return false
	}
	rest, ok = strings.CutPrefix(rest, `,"cursor":"`)
	if !ok {
		return false
	}
	cursor, ok := strings.CutSuffix(rest, `"}`)
	if !ok || strings.Trim(cursor, "0123456789") != "" {
		return false
	}
	*r = ListReply{UserIDs: ids, Cursor: cursor}
	return true
}

func (r *ListReply) decodeStrict(data []byte) error {
	var out ListReply
	if err := decodeObject(data, map[string]any{"userIds": &out.UserIDs, "cursor": &out.Cursor}); err != nil {
		return err
	}
	*r = out
	return nil
}

// UnmarshalJSON decodes a count reply strictly.
func (r *CountReply) UnmarshalJSON(data []byte) error {
	var out CountReply
	if err := decodeObject(data, map[string]any{"online": &out.Online}); err != nil {
		return err
	}
	*r = out
	return nil
}

// fastReplyIDs decodes the array of strings that follows prefix at the
// start of data, written as presenced writes it: no white space, no
// escapes, valid UTF-8. The ids are substrings of one copy of data; rest is
// what follows the array. Anything else is not ok, and the strict decoder
// reads it.
func fastReplyIDs(data []byte, prefix string) (ids []string, rest string, ok bool) {
	if !bytes.HasPrefix(data, []byte(prefix)) || !utf8.Valid(data) {
		return nil, "", false
	}
	s := string(data[len(prefix):])
	if !strings.HasPrefix(s, "[") {
		return nil, "", false
	}
	ids = make([]string, 0, strings.Count(s, `","`)+1)
	i := 1
	if strings.HasPrefix(s[i:], "]") {
		return ids, s[i+1:], true
	}
	for {
		if !strings.HasPrefix(s[i:], `"`) {
			return nil, "", false
		}
		n := strings.IndexByte(s[i+1:], '"')
		if n < 0 {
			return nil, "", false
		}
		id := s[i+1 : i+1+n]
		for j := 0; j < len(id); j++ {
			if id[j] < 0x20 || id[j] == '\\' {
				return nil, "", false
			}
		}
		ids = append(ids, id)
		i += n + 2
		switch {
		case strings.HasPrefix(s[i:], "]"):
			return ids, s[i+1:], true
		case strings.HasPrefix(s[i:], ","):
			i++
		default:
			return nil, "", false
		}
	}
}

var (
	_ json.Unmarshaler = (*Reply)(nil)
	_ json.Unmarshaler = (*OnlineReply)(nil)
)

// UnmarshalJSON decodes a gateway query reply strictly.
func (r *GatewayReply) UnmarshalJSON(data []byte) error {
	var out GatewayReply
	if err := decodeObject(data, map[string]any{"gatewayId": &out.GatewayID, "leased": &out.Leased, "instanceId": &out.InstanceID, "expiresAt": &out.ExpiresAt, "connections": &out.Connections}); err != nil {
		return err
	}
	*r = out
	return nil
}

// UnmarshalJSON decodes a gateway lease reply strictly.
func (r *GatewayLeaseReply) UnmarshalJSON(data []byte) error {
	var out GatewayLeaseReply
	if err := decodeObject(data, map[string]any{"expiresAt": &out.ExpiresAt, "replaced": &out.Replaced, "error": &out.Error, "retry": &out.Retry}); err != nil {
		return err
	}
	*r = out
	return nil
}
