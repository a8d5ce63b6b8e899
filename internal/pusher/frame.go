package pusher

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"unicode/utf8"

	"github.com/pushctl/pushctl/internal/wire"
)

// Close codes of the protocol: 4000–4099 the client must not reconnect,
// 4100–4199 it reconnects after backing off, 4200–4299 it reconnects.
const (
	CloseAppNotFound      = 4001
	CloseAppDisabled      = 4003
	CloseOverQuota        = 4004
	ClosePathNotFound     = 4005
	CloseInvalidVersion   = 4006
	CloseUnsupportedProto = 4007
	CloseNoProtocol       = 4008
	CloseUnauthorized     = 4009
	CloseOverCapacity     = 4100
	CloseReconnect        = 4200
	ClosePongTimeout      = 4201
	CloseInactive         = 4202
	// ErrClientEventRate is the pusher:error code of a client event over
	// the rate limit (the connection stays).
	ErrClientEventRate = 4301
)

// Frame is one protocol message, either way.
type Frame struct {
	Event   string          `json:"event"`
	Channel string          `json:"channel,omitempty"`
	Data    json.RawMessage `json:"data,omitempty"`
}

// MaxFrame bounds a client frame before it is parsed.
const MaxFrame = 64 << 10

// DecodeFrame parses a client frame.
func DecodeFrame(b []byte) (*Frame, error) {
	if len(b) > MaxFrame {
		return nil, fmt.Errorf("frame larger than %d bytes", MaxFrame)
	}
	var f Frame
	d := bytes.TrimSpace(b)
	if len(d) == 0 || d[0] != '{' {
		return nil, errors.New("a frame is a JSON object")
	}
	if err := json.Unmarshal(d, &f); err != nil {
		return nil, errors.New("a frame is a JSON object with a string event, an optional string channel and data")
	}
	if f.Event == "" {
		return nil, errors.New("the frame has no event")
	}
	if len(f.Event) > 200 || !utf8.ValidString(f.Event) {
		return nil, errors.New("event names are at most 200 bytes of UTF-8")
	}
	return &f, nil
}

// SubscribeData is the data of pusher:subscribe.
type SubscribeData struct {
	Channel     string `json:"channel"`
	Auth        string `json:"auth,omitempty"`
	ChannelData string `json:"channel_data,omitempty"`
}

// SigninData is the data of pusher:signin.
type SigninData struct {
	Auth     string `json:"auth"`
	UserData string `json:"user_data"`
}

// DecodeData parses a frame's data, given as an object or as a JSON
// string holding one (clients do both), into v.
func DecodeData(raw json.RawMessage, v any) error {
	raw = bytes.TrimSpace(raw)
	if len(raw) > 0 && raw[0] == '"' {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return err
		}
		raw = []byte(s)
	}
	if len(raw) == 0 || raw[0] != '{' {
		return errors.New("data must be an object")
	}
	return json.Unmarshal(raw, v)
}

// Member is a presence member as the protocol names it.
type Member struct {
	UserID   string
	UserInfo json.RawMessage
}

// ParseChannelData parses a presence subscription's channel_data:
// {"user_id": string or number, "user_info": any JSON}.
func ParseChannelData(s string, lim Limits) (Member, error) {
	var cd struct {
		UserID   json.RawMessage `json:"user_id"`
		UserInfo json.RawMessage `json:"user_info"`
	}
	if err := DecodeData(json.RawMessage(s), &cd); err != nil {
		return Member{}, errors.New("channel_data must be a JSON object with user_id")
	}
	id, err := userID(cd.UserID)
	if err != nil {
		return Member{}, err
	}
	if len(id) > lim.UserID {
		return Member{}, fmt.Errorf("user_id longer than %d bytes", lim.UserID)
	}
	if len(cd.UserInfo) > lim.UserInfo {
		return Member{}, fmt.Errorf("user_info larger than %d bytes", lim.UserInfo)
	}
	info := cd.UserInfo
	if string(info) == "null" {
		info = nil
	}
	return Member{UserID: id, UserInfo: info}, nil
}

// userID accepts a JSON string or number, as SDKs send either.
func userID(raw json.RawMessage) (string, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return "", errors.New("channel_data has no user_id")
	}
	var id string
	if raw[0] == '"' {
		if err := json.Unmarshal(raw, &id); err != nil {
			return "", errors.New("user_id is not a valid string")
		}
	} else {
		var n json.Number
		if err := json.Unmarshal(raw, &n); err != nil {
			return "", errors.New("user_id must be a string or a number")
		}
		id = n.String()
	}
	if id == "" {
		return "", errors.New("user_id is empty")
	}
	return id, nil
}

// UserData is the parsed user_data of pusher:signin.
func ParseUserData(s string, lim Limits) (string, error) {
	var ud struct {
		ID json.RawMessage `json:"id"`
	}
	if err := json.Unmarshal([]byte(s), &ud); err != nil {
		return "", errors.New("user_data must be a JSON object with an id")
	}
	id, err := userID(ud.ID)
	if err != nil {
		return "", errors.New("user_data has no id")
	}
	if len(id) > lim.UserID {
		return "", fmt.Errorf("the user id is longer than %d bytes", lim.UserID)
	}
	return id, nil
}

// AppendEvent appends a server frame {"event","channel","data"} whose data
// is sent as a JSON string (as Pusher does), plus user_id when set.
func AppendEvent(b []byte, event, channel string, data []byte, userID string) []byte {
	b = append(b, `{"event":`...)
	b = wire.AppendString(b, event)
	if channel != "" {
		b = append(b, `,"channel":`...)
		b = wire.AppendString(b, channel)
	}
	b = append(b, `,"data":`...)
	b = wire.AppendString(b, string(data))
	if userID != "" {
		b = append(b, `,"user_id":`...)
		b = wire.AppendString(b, userID)
	}
	return append(b, '}')
}

// ErrorFrame returns a pusher:error frame (code 0 is sent as null).
func ErrorFrame(code int, message string) []byte {
	type data struct {
		Code    *int   `json:"code"`
		Message string `json:"message"`
	}
	d := data{Message: message}
	if code != 0 {
		d.Code = &code
	}
	return marshalText(struct {
		Event string `json:"event"`
		Data  data   `json:"data"`
	}{"pusher:error", d})
}

// SubscriptionError returns the pusher:subscription_error of a refused
// subscription.
func SubscriptionError(channel, kind, message string, status int) []byte {
	type data struct {
		Type   string `json:"type"`
		Error  string `json:"error"`
		Status int    `json:"status"`
	}
	return marshalText(struct {
		Event   string `json:"event"`
		Channel string `json:"channel"`
		Data    data   `json:"data"`
	}{"pusher:subscription_error", channel, data{kind, message, status}})
}

// marshalText encodes v as JSON for people and tools to read: <, > and &
// stay as written (json.Marshal escapes them for HTML pages).
func marshalText(v any) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.Encode(v)
	return bytes.TrimSuffix(b.Bytes(), []byte("\n"))
}

// Pong is the reply to a client's pusher:ping.
func Pong() []byte { return []byte(`{"event":"pusher:pong","data":"{}"}`) }

// ConnectionEstablished is the first frame of a connection.
func ConnectionEstablished(socketID string, activityTimeout int) []byte {
	data := append(wire.AppendString([]byte(`{"socket_id":`), socketID), `,"activity_timeout":`...)
	data = append(strconv.AppendInt(data, int64(activityTimeout), 10), '}')
	return AppendEvent(nil, "pusher:connection_established", "", data, "")
}

// CacheMiss tells a subscriber of a cache channel that it holds no event.
func CacheMiss(channel string) []byte {
	return append(wire.AppendString([]byte(`{"event":"pusher:cache_miss","channel":`), channel), '}')
}

// SubscriptionCount is the pusher_internal:subscription_count event.
func SubscriptionCount(channel string, count int) []byte {
	data := append(strconv.AppendInt([]byte(`{"subscription_count":`), int64(count), 10), '}')
	return AppendEvent(nil, "pusher_internal:subscription_count", channel, data, "")
}

// Gap tells a Pusher client that messages of channel after from are lost
// to it, under pushctl's event name (wire.PusherGap): Pusher has no such
// thing, and nothing may be skipped silently.
func Gap(channel, from, to string) []byte {
	data := append(wire.AppendString([]byte(`{"from":`), from), `,"to":`...)
	data = append(wire.AppendString(data, to), '}')
	return AppendEvent(nil, wire.PusherGap, channel, data, "")
}
