// Package wire encodes broker messages for each transport and decodes
// what clients send. Encodings are cached on the message, so every
// subscriber of one transport gets the same bytes.
package wire

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"
	"unsafe"

	"github.com/pushctl/pushctl/internal/broker"
)

// TimeFormat is the layout of the "time" field: RFC 3339 in UTC with
// microseconds.
const TimeFormat = "2006-01-02T15:04:05.000000Z07:00"

// JSON returns the message envelope as one line of JSON (with a trailing
// newline), the form used by NDJSON streams, WebSocket frames (without
// the newline) and SSE data.
func JSON(m *broker.Message) []byte { return m.Encoded(broker.EncJSON, encodeJSON) }

func encodeJSON(m *broker.Message) []byte {
	// Room for the fields around the data (up to ~150 bytes with the
	// longest seq and time) so that the line is one allocation; it is
	// kept with the message for as long as the message is.
	b := make([]byte, 0, 160+len(m.Channel)+len(m.Event)+len(m.Epoch)+len(m.Data)*4/3)
	b = append(b, `{"type":"message"`...)
	return appendJSONFields(b, m)
}

// appendJSONFields appends what follows `{"type":"message"` in m's JSON
// envelope, through the closing brace and newline.
func appendJSONFields(b []byte, m *broker.Message) []byte {
	b = appendPosition(b, m)
	b = append(b, `,"event":`...)
	b = AppendString(b, m.Event)
	b = append(b, `,"data":`...)
	b = appendData(b, m)
	b = append(b, `,"time":"`...)
	b = m.Time.UTC().AppendFormat(b, TimeFormat)
	b = append(b, "\"}\n"...)
	return b
}

// appendPosition appends `,"channel":…,"id":…,"seq":…` for m.
func appendPosition(b []byte, m *broker.Message) []byte {
	b = append(b, `,"channel":`...)
	b = AppendString(b, m.Channel)
	b = append(b, `,"id":"`...)
	b = append(b, m.Epoch...)
	b = append(b, '-')
	b = strconv.AppendUint(b, m.Seq, 10)
	b = append(b, `","seq":`...)
	return strconv.AppendUint(b, m.Seq, 10)
}

func appendData(b []byte, m *broker.Message) []byte {
	switch m.Kind {
	case broker.KindJSON:
		return appendCompactJSON(b, m.Data)
	case broker.KindBinary:
		b = append(b, '"')
		n := base64.StdEncoding.EncodedLen(len(m.Data))
		b = append(b, make([]byte, n)...)
		base64.StdEncoding.Encode(b[len(b)-n:], m.Data)
		return append(b, `","encoding":"base64"`...)
	}
	// Read in place: AppendString keeps nothing of it, and a message's
	// data does not change once published (string(m.Data) copied every
	// payload once more before encoding it).
	return AppendString(b, unsafe.String(unsafe.SliceData(m.Data), len(m.Data)))
}

// appendCompactJSON appends valid JSON without insignificant whitespace,
// so the envelope stays on one line.
func appendCompactJSON(b, data []byte) []byte {
	var buf bytes.Buffer
	if err := json.Compact(&buf, data); err != nil {
		// Data was validated at publish; fall back to a string rather
		// than emit broken JSON.
		return AppendString(b, string(data))
	}
	return append(b, buf.Bytes()...)
}

const hexDigits = "0123456789abcdef"

// AppendString appends s as a JSON string. Invalid UTF-8 becomes U+FFFD.
func AppendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 || r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			if r == utf8.RuneError {
				b = append(b, `\ufffd`...)
			} else {
				b = append(b, `\u202`...)
				b = append(b, hexDigits[r&0xf])
			}
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// Gap encodes a gap notice as one JSON line.
func Gap(g *broker.Gap) []byte {
	b := []byte(`{"type":"gap","channel":`)
	b = AppendString(b, g.Channel)
	b = append(b, `,"from":`...)
	b = AppendString(b, g.From.String())
	b = append(b, `,"to":`...)
	b = AppendString(b, g.To.String())
	return append(b, "}\n"...)
}

// Raw is the message data followed by a newline, for `curl -N` streams.
func Raw(m *broker.Message) []byte {
	return m.Encoded(broker.EncRaw, func(m *broker.Message) []byte {
		b := make([]byte, 0, len(m.Data)+1)
		b = append(b, m.Data...)
		return append(b, '\n')
	})
}

// RawTagged is "channel<TAB>data\n", for raw streams over several channels.
func RawTagged(m *broker.Message) []byte {
	return m.Encoded(broker.EncRawTagged, func(m *broker.Message) []byte {
		b := make([]byte, 0, len(m.Channel)+len(m.Data)+2)
		b = append(b, m.Channel...)
		b = append(b, '\t')
		b = append(b, m.Data...)
		return append(b, '\n')
	})
}

// SSE is an SSE event without its id line: "event: …\ndata: <envelope>\n\n".
// The id line is written per subscriber because a multi-channel
// subscription's resume cursor names every channel.
func SSE(m *broker.Message) []byte {
	return m.Encoded(broker.EncSSE, func(m *broker.Message) []byte {
		j := JSON(m)
		return sseBlock(m.Event, j[:len(j)-1])
	})
}

// SSEPlain is like SSE without the event line: every message is the
// default event, the name stays in the envelope.
func SSEPlain(m *broker.Message) []byte {
	return m.Encoded(broker.EncSSEPlain, func(m *broker.Message) []byte {
		j := JSON(m)
		return sseBlock("", j[:len(j)-1])
	})
}

// SSERaw is like SSE with the bare data in the data lines.
func SSERaw(m *broker.Message) []byte {
	return m.Encoded(broker.EncSSERaw, func(m *broker.Message) []byte {
		data := m.Data
		if m.Kind == broker.KindBinary {
			data = []byte(base64.StdEncoding.EncodeToString(m.Data))
		}
		return sseBlock(m.Event, data)
	})
}

func sseBlock(event string, data []byte) []byte {
	b := make([]byte, 0, len(event)+len(data)+24)
	if event != "" && event != broker.DefaultEvent {
		b = append(b, "event: "...)
		b = append(b, sanitizeLine(event)...)
		b = append(b, '\n')
	}
	for {
		i := bytes.IndexAny(data, "\r\n")
		if i < 0 {
			break
		}
		b = append(b, "data: "...)
		b = append(b, data[:i]...)
		b = append(b, '\n')
		if data[i] == '\r' && i+1 < len(data) && data[i+1] == '\n' {
			i++
		}
		data = data[i+1:]
	}
	b = append(b, "data: "...)
	b = append(b, data...)
	return append(b, "\n\n"...)
}

func sanitizeLine(s string) string {
	return string(bytes.Map(func(r rune) rune {
		if r == '\n' || r == '\r' {
			return ' '
		}
		return r
	}, []byte(s)))
}

// Envelope is the decoded form of any JSON frame pushctl sends: messages,
// gaps, and the WebSocket protocol's acks and errors.
type Envelope struct {
	Type     string          `json:"type"`
	Ref      string          `json:"ref,omitempty"`
	Channel  string          `json:"channel,omitempty"`
	ID       string          `json:"id,omitempty"`
	Seq      uint64          `json:"seq,omitempty"`
	Event    string          `json:"event,omitempty"`
	Data     json.RawMessage `json:"data,omitempty"`
	Encoding string          `json:"encoding,omitempty"`
	Time     time.Time       `json:"time,omitzero"`
	From     string          `json:"from,omitempty"`
	To       string          `json:"to,omitempty"`
	// Acks, errors and subscription replies.
	Subscribers int      `json:"subscribers,omitempty"`
	Code        string   `json:"code,omitempty"`
	Reason      string   `json:"message,omitempty"` // an error's message
	Channels    []string `json:"channels,omitempty"`
	Cursor      string   `json:"cursor,omitempty"`
}

// Bytes returns the message data as published: strings unquoted, base64
// decoded, JSON kept as JSON. The result may share e.Data's memory.
func (e *Envelope) Bytes() ([]byte, error) {
	if len(e.Data) == 0 {
		return nil, nil
	}
	if e.Data[0] != '"' {
		return []byte(e.Data), nil
	}
	text, _, err := stringText(e.Data)
	if err != nil {
		return nil, err
	}
	if e.Encoding == "base64" {
		b := make([]byte, base64.StdEncoding.DecodedLen(len(text)))
		n, err := base64.StdEncoding.Decode(b, text)
		return b[:n], err
	}
	return text, nil
}

// Message converts a decoded message envelope back to a broker message.
func (e *Envelope) Message() (*broker.Message, error) {
	if e.Type != "message" && e.Type != "" {
		return nil, fmt.Errorf("not a message frame: %q", e.Type)
	}
	pos, err := broker.ParsePosition(e.ID)
	if err != nil {
		return nil, err
	}
	data, err := e.Bytes()
	if err != nil {
		return nil, fmt.Errorf("message %s: bad data: %w", e.ID, err)
	}
	kind := broker.KindText
	switch {
	case e.Encoding == "base64":
		kind = broker.KindBinary
	case len(e.Data) > 0 && e.Data[0] != '"':
		kind = broker.KindJSON
	}
	return &broker.Message{
		Channel: e.Channel, Epoch: pos.Epoch, Seq: pos.Seq, Event: e.Event,
		Kind: kind, Data: data, Time: e.Time,
	}, nil
}

// ErrBadFrame is wrapped by decode errors.
var ErrBadFrame = errors.New("bad frame")

// DecodeEnvelope parses one JSON frame.
func DecodeEnvelope(b []byte) (*Envelope, error) {
	var e Envelope
	if scanEnvelope(b, &e) {
		return &e, nil
	}
	e = Envelope{}
	if err := json.Unmarshal(b, &e); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadFrame, err)
	}
	return &e, nil
}

// WebSocket opcodes (RFC 6455 §5.2) of the frames the broker builds by
// hand with AppendWSFrame.
const (
	OpText   = 1
	OpBinary = 2
	OpClose  = 8
	OpPing   = 9
	OpPong   = 10
)

// AppendWSFrame appends one unmasked, final WebSocket frame (the form a
// server sends) carrying payload.
func AppendWSFrame(b []byte, opcode byte, payload []byte) []byte {
	return append(AppendWSHeader(b, opcode, len(payload)), payload...)
}

// AppendWSHeader appends the header of an unmasked, final frame of n bytes.
func AppendWSHeader(b []byte, opcode byte, n int) []byte {
	b = append(b, 0x80|opcode)
	switch {
	case n < 126:
		b = append(b, byte(n))
	case n < 1<<16:
		b = append(b, 126, byte(n>>8), byte(n))
	default:
		u := uint64(n)
		b = append(b, 127, byte(u>>56), byte(u>>48), byte(u>>40), byte(u>>32), byte(u>>24), byte(u>>16), byte(u>>8), byte(u))
	}
	return b
}

// WebSocket is the message's envelope as a complete WebSocket text frame,
// so a broadcast writes the same bytes to every connection.
func WebSocket(m *broker.Message) []byte {
	return m.Encoded(broker.EncWebSocket, func(m *broker.Message) []byte {
		j := JSON(m)
		return AppendWSFrame(make([]byte, 0, len(j)+10), OpText, j[:len(j)-1])
	})
}

// WebSocketRaw is the bare data as a complete frame: text when it is
// valid UTF-8 text, binary otherwise.
func WebSocketRaw(m *broker.Message) []byte {
	return m.Encoded(broker.EncWebSocketRaw, func(m *broker.Message) []byte {
		op := byte(OpText)
		if m.Kind == broker.KindBinary || !utf8.Valid(m.Data) {
			op = OpBinary
		}
		return AppendWSFrame(make([]byte, 0, len(m.Data)+10), op, m.Data)
	})
}
