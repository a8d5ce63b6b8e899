package wire

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"unicode/utf8"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/presence"
)

// Error codes are stable: clients and scripts match on them. They are
// listed in docs/errors.md.
const (
	CodeInvalidChannel   = "invalid_channel"
	CodeInvalidPosition  = "invalid_position"
	CodeInvalidParameter = "invalid_parameter"
	CodeInvalidJSON      = "invalid_json"
	CodeInvalidFrame     = "invalid_frame"
	CodeTooLarge         = "message_too_large"
	CodeNotFound         = "not_found"
	CodeChannelNotFound  = "channel_not_found"
	CodeMethodNotAllowed = "method_not_allowed"
	CodeWaitTimeout      = "wait_timeout"
	CodeSlowConsumer     = "slow_consumer"
	CodeStalled          = "stalled"
	CodeChannelDeleted   = "channel_deleted"
	CodeShuttingDown     = "shutting_down"
	CodeInternal         = "internal_error"
	CodeStoreFailed      = "store_failed"
	CodeUnavailable      = "broker_unavailable"
	CodeOutcomeUnknown   = "outcome_unknown"
	CodeRequestTimeout   = "request_timeout"
	CodeAckBacklog       = "ack_backlog"
	CodeTokenMissing     = "token_missing"
	CodeTokenInvalid     = "token_invalid"
	CodeTokenExpired     = "token_expired"
	CodeForbidden        = "forbidden"
	CodeRateLimited      = "rate_limited"
	CodeTooManyConns     = "too_many_connections"
	CodeOriginRejected   = "origin_not_allowed"
	CodePresenceFull     = "presence_full"
	CodeInvalidMember    = "invalid_member"
	CodeNotMember        = "not_a_member"
	CodeHookDenied       = "hook_denied"
	CodeHookUnavailable  = "hook_unavailable"
)

// WebSocket close codes pushctl uses besides the standard ones.
const (
	// CloseTokenExpired: the token expired; reconnect with a new one.
	CloseTokenExpired = 4001
	// CloseSlowConsumer: the subscriber fell behind (queue overflow) or
	// stopped reading (stalled); reconnect and resume from the last id.
	CloseSlowConsumer = 4008
	// CloseHookDenied: the application's hook refused the connection (the
	// reason is "hook_denied: <its message>"); do not retry as is.
	CloseHookDenied = 4403
	// CloseHookUnavailable: the application's hook did not answer; retry
	// later.
	CloseHookUnavailable = 4503
)

// Frame types of the WebSocket protocol and of NDJSON streams.
const (
	TypeMessage       = "message"
	TypeGap           = "gap"
	TypeAck           = "ack"
	TypeError         = "error"
	TypeSubscribed    = "subscribed"
	TypeUnsubscribed  = "unsubscribed"
	TypePong          = "pong"
	TypeAuthenticated = "authenticated"
	TypeJoined        = "joined"
	TypeLeft          = "left"

	TypeSubscribe   = "subscribe"
	TypeUnsubscribe = "unsubscribe"
	TypePublish     = "publish"
	TypePing        = "ping"
	TypeAuth        = "auth"
	TypeJoin        = "join"
	TypeLeave       = "leave"
)

// Error is an error with an HTTP status and a stable code, as every
// surface reports it.
type Error struct {
	Status  int    `json:"status"`
	Code    string `json:"code"`
	Message string `json:"message"`
	// RetryAfter, when set, is the seconds after which a refused request
	// may succeed (HTTP sends it as Retry-After).
	RetryAfter int `json:"-"`
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Errorf returns an *Error.
func Errorf(status int, code, format string, args ...any) *Error {
	return &Error{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

// CloseReason is e as a WebSocket close frame's reason, "code: message",
// cut to what a close frame holds (123 bytes) at a character boundary.
func CloseReason(e *Error) string {
	r := e.Code + ": " + e.Message
	for len(r) > 123 {
		_, size := utf8.DecodeLastRuneInString(r)
		r = r[:len(r)-size]
	}
	return r
}

// ClientFrame is any frame a client sends on the WebSocket protocol.
type ClientFrame struct {
	Type     string          `json:"type"`
	Ref      string          `json:"ref,omitempty"`
	Channels []string        `json:"channels,omitempty"`
	Channel  string          `json:"channel,omitempty"`
	Since    string          `json:"since,omitempty"`
	Last     int             `json:"last,omitempty"`
	Event    string          `json:"event,omitempty"`
	Data     json.RawMessage `json:"data,omitempty"`
	Encoding string          `json:"encoding,omitempty"`
	Token    string          `json:"token,omitempty"`
	// Echo, on subscribe, says whether this connection's own publishes
	// are delivered back to it (default true).
	Echo *bool `json:"echo,omitempty"`
	// ID and Info, on join, name the presence member and describe it.
	ID   string          `json:"id,omitempty"`
	Info json.RawMessage `json:"info,omitempty"`
	// Key, on publish, is its idempotency key (broker.Message.Key).
	Key string `json:"idempotency_key,omitempty"`
}

// MaxRef bounds the ref a client may attach to a frame.
const MaxRef = 128

// DecodeClientFrame parses a client frame, with errors that speak of the
// protocol, not of Go types. A frame that is a JSON object but not a valid
// frame (a field of the wrong type) comes back with the error holding only
// its ref, so the error reply carries the ref like every other reply.
func DecodeClientFrame(data []byte) (*ClientFrame, error) {
	var f ClientFrame
	if !scanClientFrame(data, &f) {
		f = ClientFrame{}
		if err := decodeObject(data, &f); err != nil {
			var r struct {
				Ref string `json:"ref"`
			}
			if json.Unmarshal(data, &r) != nil || len(r.Ref) > MaxRef {
				r.Ref = ""
			}
			return &ClientFrame{Ref: r.Ref}, err
		}
	}
	if len(f.Ref) > MaxRef {
		return nil, Errorf(http.StatusBadRequest, CodeInvalidFrame, "ref longer than %d bytes", MaxRef)
	}
	return &f, nil
}

// decodeObject unmarshals one JSON object into v, describing failures in
// the protocol's words.
func decodeObject(data []byte, v any) error {
	data = bytes.TrimSpace(data)
	if len(data) == 0 || data[0] != '{' {
		return Errorf(http.StatusBadRequest, CodeInvalidJSON, "frame must be a JSON object")
	}
	err := json.Unmarshal(data, v)
	if err == nil {
		return nil
	}
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return Errorf(http.StatusBadRequest, CodeInvalidJSON, "invalid JSON at byte %d", se.Offset)
	case errors.As(err, &te) && te.Field != "":
		return Errorf(http.StatusBadRequest, CodeInvalidFrame, "field %q must be %s, not %s", te.Field, jsonKind(te.Type.Kind().String()), te.Value)
	case errors.As(err, &te):
		return Errorf(http.StatusBadRequest, CodeInvalidFrame, "frame must be a JSON object, not %s", te.Value)
	}
	return Errorf(http.StatusBadRequest, CodeInvalidJSON, "invalid JSON")
}

func jsonKind(goKind string) string {
	switch goKind {
	case "string":
		return "a string"
	case "slice", "array":
		return "an array"
	case "int", "int64", "uint64", "float64":
		return "a number"
	case "bool", "ptr":
		return "true or false"
	case "struct", "map":
		return "an object"
	}
	return "of another type"
}

// PublishFrame is one message to publish, as an NDJSON line of POST /pub
// or a WebSocket "publish" frame.
type PublishFrame struct {
	Type     string          `json:"type,omitempty"`
	Ref      string          `json:"ref,omitempty"`
	Channel  string          `json:"channel"`
	Event    string          `json:"event,omitempty"`
	Data     json.RawMessage `json:"data"`
	Encoding string          `json:"encoding,omitempty"`
	// Key is the publish's idempotency key (broker.Message.Key).
	Key string `json:"idempotency_key,omitempty"`
}

// NewPublishFrame builds the frame that publishes data by the data-kind
// rule: JSON stays JSON, UTF-8 text is a string, anything else is base64.
func NewPublishFrame(ref, channel, event string, data []byte) *PublishFrame {
	f := &PublishFrame{Type: TypePublish, Ref: ref, Channel: channel, Event: event}
	kind, _ := broker.ClassifyData("", data)
	switch {
	case kind == broker.KindJSON:
		f.Data = bytes.Clone(data)
	case utf8.Valid(data):
		f.Data = AppendString(nil, string(data))
	default:
		f.Data = AppendString(nil, base64.StdEncoding.EncodeToString(data))
		f.Encoding = "base64"
	}
	return f
}

// AppendPublishFrame appends the JSON of NewPublishFrame(ref, channel,
// event, data) without building it: what a streaming publisher sends per
// message.
func AppendPublishFrame(b []byte, ref, channel, event string, data []byte) []byte {
	b = appendHead(b, TypePublish, ref)
	b = append(b, `,"channel":`...)
	b = AppendString(b, channel)
	if event != "" {
		b = append(b, `,"event":`...)
		b = AppendString(b, event)
	}
	b = append(b, `,"data":`...)
	kind, _ := broker.ClassifyData("", data)
	switch {
	case kind == broker.KindJSON:
		// As encoding/json marshals a json.RawMessage: compact, with <,
		// > and & escaped in strings (a subscriber gets the same bytes as
		// from a frame encoding/json made).
		var compact, escaped bytes.Buffer
		json.Compact(&compact, data) // valid: ClassifyData checked
		json.HTMLEscape(&escaped, compact.Bytes())
		b = append(b, escaped.Bytes()...)
	case utf8.Valid(data):
		b = AppendString(b, string(data))
	default:
		b = AppendString(b, base64.StdEncoding.EncodeToString(data))
		b = append(b, `,"encoding":"base64"`...)
	}
	return append(b, '}')
}

// AppendMaskedWSFrame appends one final WebSocket frame masked with key
// (the form a client sends, RFC 6455 §5.3).
func AppendMaskedWSFrame(b []byte, opcode byte, payload []byte, key [4]byte) []byte {
	b = AppendWSHeader(b, opcode, len(payload))
	b[len(b)-1-headerLenBytes(len(payload))] |= 0x80
	b = append(b, key[:]...)
	start := len(b)
	b = append(b, payload...)
	for i := range payload {
		b[start+i] ^= key[i&3]
	}
	return b
}

// headerLenBytes is how many extended length bytes follow a frame's
// second header byte.
func headerLenBytes(n int) int {
	switch {
	case n < 126:
		return 0
	case n < 1<<16:
		return 2
	}
	return 8
}

// DecodePublishFrame parses one NDJSON publish line.
func DecodePublishFrame(data []byte) (*PublishFrame, error) {
	var f PublishFrame
	if !scanPublishFrame(data, &f) {
		f = PublishFrame{}
		if err := decodeObject(data, &f); err != nil {
			return nil, err
		}
	}
	return &f, nil
}

// ValidateEvent checks an event name: at most 128 bytes of UTF-8 without
// control characters.
func ValidateEvent(ev string) error {
	if len(ev) > 128 {
		return Errorf(http.StatusBadRequest, CodeInvalidParameter, "event name longer than 128 bytes")
	}
	if !utf8.ValidString(ev) {
		return Errorf(http.StatusBadRequest, CodeInvalidParameter, "event name is not valid UTF-8")
	}
	for i := 0; i < len(ev); i++ {
		if ev[i] < 0x20 || ev[i] == 0x7f {
			return Errorf(http.StatusBadRequest, CodeInvalidParameter, "event name contains a control character")
		}
	}
	if presence.Reserved(ev) {
		return Errorf(http.StatusBadRequest, CodeInvalidParameter, "event name %q is reserved: the broker publishes it when a presence member joins or leaves", ev)
	}
	return nil
}

// Message turns the frame into a broker message: a JSON string is text (or
// binary with "encoding":"base64"), any other JSON value stays JSON. Data
// is required ("" publishes an empty message).
func (f *PublishFrame) Message(max int64) (*broker.Message, error) {
	if err := broker.ValidateChannel(f.Channel); err != nil {
		return nil, err
	}
	if err := ValidateEvent(f.Event); err != nil {
		return nil, err
	}
	// The key is checked at the door, as from every way in.
	m := &broker.Message{Channel: f.Channel, Event: f.Event, Key: f.Key}
	switch {
	case len(f.Data) == 0 || string(f.Data) == "null":
		return nil, Errorf(http.StatusBadRequest, CodeInvalidFrame, `publish needs "data" (use "" for an empty message)`)
	case f.Data[0] == '"':
		text, shared, err := stringText(f.Data)
		if err != nil {
			return nil, Errorf(http.StatusBadRequest, CodeInvalidJSON, "data is not a valid JSON string")
		}
		if shared { // the message keeps no part of the frame
			text = bytes.Clone(text)
		}
		m.Data = text
		switch f.Encoding {
		case "":
		case "base64":
			b, err := base64.StdEncoding.DecodeString(string(m.Data))
			if err != nil {
				return nil, Errorf(http.StatusBadRequest, CodeInvalidParameter, "data is not valid base64: %v", err)
			}
			m.Data, m.Kind = b, broker.KindBinary
		default:
			return nil, Errorf(http.StatusBadRequest, CodeInvalidParameter, "unknown encoding %q (only base64)", f.Encoding)
		}
	default:
		m.Data, m.Kind = bytes.Clone(f.Data), broker.KindJSON
	}
	if int64(len(m.Data)) > max {
		return nil, Errorf(http.StatusRequestEntityTooLarge, CodeTooLarge, "message larger than the limit of %d bytes", max)
	}
	return m, nil
}

func appendHead(b []byte, typ, ref string) []byte {
	b = append(b, `{"type":"`...)
	b = append(b, typ...)
	b = append(b, '"')
	if ref != "" {
		b = append(b, `,"ref":`...)
		b = AppendString(b, ref)
	}
	return b
}

func appendStrings(b []byte, ss []string) []byte {
	b = append(b, '[')
	for i, s := range ss {
		if i > 0 {
			b = append(b, ',')
		}
		b = AppendString(b, s)
	}
	return append(b, ']')
}

// AppendError appends an error frame: {"type":"error","ref":…,"code":…,"message":…}.
func AppendError(b []byte, ref string, e *Error) []byte {
	b = appendHead(b, TypeError, ref)
	b = append(b, `,"code":`...)
	b = AppendString(b, e.Code)
	b = append(b, `,"message":`...)
	b = AppendString(b, e.Message)
	return append(b, '}')
}

// AppendErrorObject appends {"status":…,"code":…,"message":…}.
func AppendErrorObject(b []byte, e *Error) []byte {
	b = append(b, `{"status":`...)
	b = strconv.AppendInt(b, int64(e.Status), 10)
	b = append(b, `,"code":`...)
	b = AppendString(b, e.Code)
	b = append(b, `,"message":`...)
	b = AppendString(b, e.Message)
	return append(b, '}')
}

// AppendAck appends the acknowledgement of a publish.
func AppendAck(b []byte, ref string, m *broker.Message, subscribers int) []byte {
	b = appendHead(b, TypeAck, ref)
	b = appendPosition(b, m)
	b = append(b, `,"subscribers":`...)
	b = strconv.AppendInt(b, int64(subscribers), 10)
	if m.Duplicate {
		b = append(b, `,"duplicate":true`...)
	}
	return append(b, '}')
}

// AppendSubscribed appends the reply to a subscribe: the channels and the
// cursor that resumes them (see broker.FormatResume).
func AppendSubscribed(b []byte, ref string, channels []string, cursor string) []byte {
	b = appendHead(b, TypeSubscribed, ref)
	b = append(b, `,"channels":`...)
	b = appendStrings(b, channels)
	if cursor != "" {
		b = append(b, `,"cursor":`...)
		b = AppendString(b, cursor)
	}
	return append(b, '}')
}

// AppendUnsubscribed appends an unsubscribed frame: the reply to an
// unsubscribe (code empty), or the notice that subscriptions ended for
// the reason code.
func AppendUnsubscribed(b []byte, ref string, channels []string, code, message string) []byte {
	b = appendHead(b, TypeUnsubscribed, ref)
	b = append(b, `,"channels":`...)
	b = appendStrings(b, channels)
	if code != "" {
		b = append(b, `,"code":`...)
		b = AppendString(b, code)
		b = append(b, `,"message":`...)
		b = AppendString(b, message)
	}
	return append(b, '}')
}

// AppendReply appends a frame with only a type and a ref (pong, authenticated).
func AppendReply(b []byte, typ, ref string) []byte {
	return append(appendHead(b, typ, ref), '}')
}
