package wire

import (
	"encoding/json"
	"strconv"
	"unicode/utf8"
)

// The frames clients send most (publish frames and NDJSON publish lines)
// are flat JSON objects with a few known keys and plain string values.
// encoding/json decodes them through reflection, which was most of the
// time a WebSocket publisher's reader spent per frame. scanObject reads
// that common shape by hand; anything else (a key it does not know, a
// differently cased key, an escape in a string field, a null, invalid
// UTF-8, bad JSON of any kind) makes it give up, and the caller decodes
// with encoding/json, which then has the final word, errors included.
// FuzzScanMatchesEncodingJSON checks that the two agree on every input
// scanObject accepts.

// scanObject walks one JSON object, calling field for each member with
// the key's text and the value's raw JSON; plain says the value is a
// string without escapes or invalid UTF-8, whose text is raw[1:len(raw)-1].
// It reports false, possibly after some calls, when data is not of the
// shape it reads or field refuses a member.
func scanObject(data []byte, field func(key, raw []byte, plain bool) bool) bool {
	i := skipSpace(data, 0)
	if i >= len(data) || data[i] != '{' {
		return false
	}
	i = skipSpace(data, i+1)
	if i < len(data) && data[i] == '}' {
		return skipSpace(data, i+1) == len(data)
	}
	for {
		if i >= len(data) || data[i] != '"' {
			return false
		}
		end, plain := scanString(data, i)
		if end < 0 || !plain {
			return false
		}
		key := data[i+1 : end-1]
		i = skipSpace(data, end)
		if i >= len(data) || data[i] != ':' {
			return false
		}
		i = skipSpace(data, i+1)
		if i >= len(data) {
			return false
		}
		var ok bool
		if data[i] == '"' {
			end, plain = scanString(data, i)
			if end < 0 {
				return false
			}
			ok = field(key, data[i:end], plain)
		} else {
			end = valueEnd(data, i)
			if end < 0 || !json.Valid(data[i:end]) {
				return false
			}
			ok = field(key, data[i:end], false)
		}
		if !ok {
			return false
		}
		i = skipSpace(data, end)
		if i >= len(data) {
			return false
		}
		switch data[i] {
		case ',':
			i = skipSpace(data, i+1)
		case '}':
			return skipSpace(data, i+1) == len(data)
		default:
			return false
		}
	}
}

// skipSpace returns the index of the first byte from i on that is not
// JSON whitespace.
func skipSpace(data []byte, i int) int {
	for i < len(data) {
		switch data[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// asIs marks the bytes a JSON string holds as they are: printable ASCII
// other than the quote and the backslash.
var asIs = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// scanString reads the JSON string that starts at data[i] (a quote). It
// returns the index just past its closing quote (-1 when it is not a
// valid JSON string) and whether it is plain: no escapes, and valid UTF-8
// (encoding/json would replace invalid bytes in a decoded string).
func scanString(data []byte, i int) (end int, plain bool) {
	plain = true
	ascii := true
	start := i + 1
	for i++; i < len(data); i++ {
		for i < len(data) && asIs[data[i]] { // most of a message's text
			i++
		}
		if i == len(data) {
			break
		}
		c := data[i]
		switch {
		case c == '"':
			if !ascii && plain {
				plain = utf8.Valid(data[start:i])
			}
			return i + 1, plain
		case c < 0x20:
			return -1, false
		case c == '\\':
			plain = false
			i++
			if i >= len(data) {
				return -1, false
			}
			switch data[i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if i+4 >= len(data) {
					return -1, false
				}
				for _, h := range data[i+1 : i+5] {
					if !isHex(h) {
						return -1, false
					}
				}
				i += 4
			default:
				return -1, false
			}
		case c >= utf8.RuneSelf:
			ascii = false
		}
	}
	return -1, false
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// valueEnd returns where the JSON value (not a string) that starts at
// data[i] ends, counting brackets and skipping strings; -1 when it does
// not end. It does not check the value: the caller does.
func valueEnd(data []byte, i int) int {
	switch data[i] {
	case '{', '[':
		depth := 0
		for ; i < len(data); i++ {
			switch data[i] {
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			case '"':
				end, _ := scanString(data, i)
				if end < 0 {
					return -1
				}
				i = end - 1
			}
		}
		return -1
	}
	for ; i < len(data); i++ {
		switch data[i] {
		case ',', '}', ']', ' ', '\t', '\n', '\r':
			return i
		}
	}
	return i
}

// plainString returns the text of a JSON string literal without escapes
// or invalid UTF-8, and false for any other JSON.
func plainString(raw []byte) ([]byte, bool) {
	if len(raw) < 2 || raw[0] != '"' {
		return nil, false
	}
	end, plain := scanString(raw, 0)
	if end != len(raw) || !plain {
		return nil, false
	}
	return raw[1 : end-1], true
}

// stringText returns the text of the JSON string literal raw. Most
// strings need no unescaping: their text is then raw's own bytes (shared),
// without encoding/json, whose validation and unquoting were a fifth of a
// piped `pushctl sub`'s CPU.
func stringText(raw []byte) (text []byte, shared bool, err error) {
	if text, ok := plainString(raw); ok {
		return text, true, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, false, err
	}
	return []byte(s), false, nil
}

// scanPublishFrame fills f from data when scanObject can read it.
func scanPublishFrame(data []byte, f *PublishFrame) bool {
	return scanObject(data, func(key, raw []byte, plain bool) bool {
		k := string(key)
		if k == "data" {
			f.Data = append(json.RawMessage(nil), raw...)
			return true
		}
		if !plain {
			return false // null, a number, an escape: encoding/json decides
		}
		text := raw[1 : len(raw)-1]
		switch k {
		case "type":
			f.Type = internType(text)
		case "ref":
			f.Ref = string(text)
		case "channel":
			f.Channel = string(text)
		case "event":
			f.Event = string(text)
		case "encoding":
			f.Encoding = string(text)
		case "idempotency_key":
			f.Key = string(text)
		default:
			return false
		}
		return true
	})
}

// scanClientFrame fills f from data when scanObject can read it; frames
// with fields other than those of a publish frame (subscribe's channel
// list, join's info…) are left to encoding/json: they are not the ones
// that come by the hundred thousand.
func scanClientFrame(data []byte, f *ClientFrame) bool {
	var p PublishFrame
	if !scanPublishFrame(data, &p) {
		return false
	}
	*f = ClientFrame{Type: p.Type, Ref: p.Ref, Channel: p.Channel, Event: p.Event, Data: p.Data, Encoding: p.Encoding, Key: p.Key}
	return true
}

// scanEnvelope fills e from data when scanObject can read it: every field
// but the subscribe reply's channel list, strings without escapes, whole
// numbers in range. (Clients read one per message and per ack.)
func scanEnvelope(data []byte, e *Envelope) bool {
	return scanObject(data, func(key, raw []byte, plain bool) bool { return envelopeKey(e, key, raw, plain) })
}

// envelopeKey sets the field of e that key names; false for a key or a
// value the fast path does not take.
func envelopeKey(e *Envelope, key, raw []byte, plain bool) bool {
	{
		k := string(key)
		switch k {
		case "data":
			e.Data = append(json.RawMessage(nil), raw...)
			return true
		case "seq":
			n, err := strconv.ParseUint(string(raw), 10, 64)
			e.Seq = n
			return err == nil
		case "subscribers":
			n, err := strconv.ParseInt(string(raw), 10, 0)
			e.Subscribers = int(n)
			return err == nil
		}
		if !plain {
			return false
		}
		text := raw[1 : len(raw)-1]
		switch k {
		case "type":
			e.Type = internType(text)
		case "ref":
			e.Ref = string(text)
		case "channel":
			e.Channel = string(text)
		case "id":
			e.ID = string(text)
		case "event":
			e.Event = string(text)
		case "encoding":
			e.Encoding = string(text)
		case "time":
			return e.Time.UnmarshalJSON(raw) == nil
		case "from":
			e.From = string(text)
		case "to":
			e.To = string(text)
		case "code":
			e.Code = string(text)
		case "message":
			e.Reason = string(text)
		case "cursor":
			e.Cursor = string(text)
		default:
			return false
		}
		return true
	}
}

// internType returns the frame type's name without allocating for the
// names the protocol has.
func internType(b []byte) string {
	switch string(b) {
	case TypePublish:
		return TypePublish
	case TypePing:
		return TypePing
	case TypeSubscribe:
		return TypeSubscribe
	case TypeUnsubscribe:
		return TypeUnsubscribe
	case TypeAck:
		return TypeAck
	case TypeMessage:
		return TypeMessage
	}
	return string(b)
}
