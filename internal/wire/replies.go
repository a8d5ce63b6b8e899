package wire

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
)

// The HTTP replies and control events every side shares: the server writes
// them, the Go client, the bridge and bench read them.

// WriteJSON answers with v as a JSON body. Bodies are for people and
// tools, not HTML pages: <, > and & stay as they are (encoding/json would
// write \u003c…).
func WriteJSON(w http.ResponseWriter, status int, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// PublishAck is the reply to an HTTP publish (one JSON object), or one
// line of the NDJSON reply to a streaming publish (with Line).
type PublishAck struct {
	Line        int       `json:"line,omitempty"`
	ID          string    `json:"id"`
	Channel     string    `json:"channel"`
	Seq         uint64    `json:"seq"`
	Subscribers int       `json:"subscribers"`
	Time        time.Time `json:"time,omitzero"`
	// Duplicate says the publish's idempotency key was seen within the
	// window: nothing was stored, and the ack is the first publish's.
	Duplicate bool `json:"duplicate,omitempty"`
}

// AckOf is the acknowledgement of m, stored and handed to n subscribers.
func AckOf(m *broker.Message, n int) PublishAck {
	return PublishAck{ID: m.ID(), Channel: m.Channel, Seq: m.Seq, Subscribers: n, Time: m.Time, Duplicate: m.Duplicate}
}

// AppendPublishAck appends the JSON line of AckOf(m, n) (without a line
// number), written by hand: encoding/json's reflection was a tenth of the
// broker's time per HTTP publish. TestPublishAckIsAckJSON checks it
// against encoding/json's.
func AppendPublishAck(b []byte, m *broker.Message, n int) []byte {
	b = append(b, `{"id":"`...)
	b = append(b, m.Epoch...)
	b = append(b, '-')
	b = strconv.AppendUint(b, m.Seq, 10)
	b = append(b, `","channel":`...)
	b = AppendString(b, m.Channel)
	b = append(b, `,"seq":`...)
	b = strconv.AppendUint(b, m.Seq, 10)
	b = append(b, `,"subscribers":`...)
	b = strconv.AppendInt(b, int64(n), 10)
	b = append(b, `,"time":"`...)
	b = m.Time.AppendFormat(b, time.RFC3339Nano)
	if m.Duplicate {
		return append(b, "\",\"duplicate\":true}\n"...)
	}
	return append(b, "\"}\n"...)
}

// ErrorReply is the body of every HTTP error: {"error":{status,code,message}}.
// A line of a streaming publish's reply carries its line number too.
type ErrorReply struct {
	Line  int    `json:"line,omitempty"`
	Error *Error `json:"error"`
}

// PollReply is a long-poll's reply: the events (envelopes as on NDJSON
// streams: messages and gaps) and the cursor that resumes after them.
type PollReply struct {
	Events []json.RawMessage `json:"events"`
	Cursor string            `json:"cursor"`
}

// Control events of SSE streams. The gap and error events carry the same
// JSON object as an NDJSON stream's gap or error line.
const (
	SSEStart = "pushctl-start" // where the stream starts (plain mode), its cursor as data
	SSEGap   = "pushctl-gap"
	SSEError = "pushctl-error"
	// SSEControlPrefix begins every control event; a reader skips the
	// ones it does not know (a newer broker's).
	SSEControlPrefix = "pushctl-"
)

// PusherGap is the event a Pusher client gets on a channel whose messages
// were lost to it (Pusher's own events are pusher: and pusher_internal:).
const PusherGap = "pushctl:gap"

// AppendSSEEvent appends a control event whose data is one line.
func AppendSSEEvent(b []byte, name string, data []byte) []byte {
	b = append(b, "event: "...)
	b = append(b, name...)
	b = append(b, "\ndata: "...)
	b = append(b, data...)
	return append(b, "\n\n"...)
}

// MaxLast bounds how many retained messages a subscriber may ask to
// replay per channel (last=N), and how many subscribers a publisher may
// wait for.
const MaxLast = 1_000_000

// CheckLast checks a requested replay count.
func CheckLast(n int) error {
	if n < 0 || n > MaxLast {
		return Errorf(http.StatusBadRequest, CodeInvalidParameter, "last must be a number from 0 to %d", MaxLast)
	}
	return nil
}
