package broker

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// Kind says how a message's data is represented in JSON encodings.
type Kind uint8

// Data kinds. JSON data is embedded as JSON, text as a string and binary as
// base64 with "encoding":"base64" beside it.
const (
	KindText Kind = iota
	KindJSON
	KindBinary
)

// String returns the kind's name as used in stored records.
func (k Kind) String() string {
	switch k {
	case KindJSON:
		return "json"
	case KindBinary:
		return "binary"
	}
	return "text"
}

// DefaultEvent is the event name of messages published without one.
const DefaultEvent = "message"

// Message is one published message. Once returned by Publish it is shared by
// every subscriber and must not be modified.
type Message struct {
	Channel string
	Epoch   string
	Seq     uint64
	Event   string
	Kind    Kind
	Data    []byte
	Time    time.Time

	// Origin and OriginSeq name the connection that published the message
	// (0: none) and its place among that connection's publishes, so a
	// connection can skip its own messages or hold them back until their
	// acknowledgement is out. They are not stored or sent.
	Origin    uint64
	OriginSeq uint64

	// Key is the publisher's idempotency key ("": none). A publish of a
	// key its channel saw within DedupWindow is not stored or delivered
	// again: the log gives it the first one's position and sets
	// Duplicate. Neither is stored or sent.
	Key       string
	Duplicate bool

	// Late marks a message that a log shared by nodes hands the hub
	// again, late (on Redis Cluster: a batch first sent where pattern
	// followers do not listen, sent again for the pattern subscriptions
	// set up meanwhile). Only subscriptions that asked for history take
	// it: their replay says what they have; one that asked for none may
	// have begun after it was published. Not stored or sent.
	Late bool

	enc [numEncodings]atomic.Pointer[[]byte]
}

// ID returns the message id, "<epoch>-<seq>", unique within its channel.
func (m *Message) ID() string { return Position{Epoch: m.Epoch, Seq: m.Seq}.String() }

// Position returns the message's position in its channel.
func (m *Message) Position() Position { return Position{Epoch: m.Epoch, Seq: m.Seq} }

// Encoding slots for Encoded. Each wire format uses one so a message is
// encoded once, however many subscribers receive it.
const (
	EncJSON = iota
	EncSSE
	EncSSERaw
	EncSSEPlain
	EncRaw
	EncRawTagged
	EncWebSocket
	EncWebSocketRaw
	numEncodings
)

// Encoded returns the message encoded by fn, computing it at most once per
// slot in the common case (concurrent first callers may both compute it;
// the results are identical).
func (m *Message) Encoded(slot int, fn func(*Message) []byte) []byte {
	if p := m.enc[slot].Load(); p != nil {
		return *p
	}
	b := fn(m)
	m.enc[slot].CompareAndSwap(nil, &b)
	return *m.enc[slot].Load()
}

// EncodedAlready returns the message's encoding in slot when one was
// made (by Encoded), else nil.
func (m *Message) EncodedAlready(slot int) []byte {
	if p := m.enc[slot].Load(); p != nil {
		return *p
	}
	return nil
}

// ClassifyData decides the kind of a payload from its declared content type
// (may be empty). Declared JSON must be valid; declared text/* is text
// (binary if it is not UTF-8). Undeclared data that is a JSON object or
// array is kept as JSON; invalid UTF-8 or a declared binary type is
// binary; everything else is text.
func ClassifyData(contentType string, data []byte) (Kind, error) {
	ct := strings.ToLower(strings.TrimSpace(contentType))
	if i := strings.IndexByte(ct, ';'); i >= 0 {
		ct = strings.TrimSpace(ct[:i])
	}
	switch {
	case ct == "application/json" || strings.HasSuffix(ct, "+json"):
		if !json.Valid(data) {
			return 0, errors.New("data declared as JSON is not valid JSON")
		}
		return KindJSON, nil
	case ct == "application/octet-stream" || strings.HasPrefix(ct, "image/") ||
		strings.HasPrefix(ct, "audio/") || strings.HasPrefix(ct, "video/"):
		return KindBinary, nil
	case strings.HasPrefix(ct, "text/"):
		// Declared text stays text, even when it looks like JSON.
		if !utf8.Valid(data) {
			return KindBinary, nil
		}
		return KindText, nil
	}
	if !utf8.Valid(data) {
		return KindBinary, nil
	}
	if looksJSONContainer(data) && json.Valid(data) {
		return KindJSON, nil
	}
	return KindText, nil
}

func looksJSONContainer(b []byte) bool {
	for _, c := range b {
		switch c {
		case ' ', '\t', '\r', '\n':
			continue
		case '{', '[':
			return true
		}
		return false
	}
	return false
}

// Position is a place in one channel's stream: the epoch it belongs to and
// the sequence of the last message seen (0: before the first message).
type Position struct {
	Epoch string
	Seq   uint64
}

// String formats a position as "<epoch>-<seq>".
func (p Position) String() string { return p.Epoch + "-" + strconv.FormatUint(p.Seq, 10) }

// IsZero reports whether p is the zero position.
func (p Position) IsZero() bool { return p.Epoch == "" && p.Seq == 0 }

// ErrInvalidPosition is wrapped by position and cursor parse errors.
var ErrInvalidPosition = errors.New("invalid position")

// ParsePosition parses "<epoch>-<seq>" as produced by Position.String.
func ParsePosition(s string) (Position, error) {
	i := strings.LastIndexByte(s, '-')
	if i <= 0 || i == len(s)-1 || len(s) > 64 {
		return Position{}, fmt.Errorf("%w %q: want <epoch>-<seq> as in a message id", ErrInvalidPosition, s)
	}
	epoch := s[:i]
	for j := 0; j < len(epoch); j++ {
		c := epoch[j]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z') {
			return Position{}, fmt.Errorf("%w %q: epoch must be lowercase letters and digits", ErrInvalidPosition, s)
		}
	}
	seq, err := strconv.ParseUint(s[i+1:], 10, 64)
	if err != nil {
		return Position{}, fmt.Errorf("%w %q: sequence is not a number", ErrInvalidPosition, s)
	}
	return Position{Epoch: epoch, Seq: seq}, nil
}

// Cursor holds a position per concrete channel; it is what a subscriber
// remembers to resume a multi-channel subscription.
type Cursor map[string]Position

// MaxCursorEntries bounds the channels one cursor may name.
const MaxCursorEntries = 256

// SinceKey names the time entry of a resume cursor. It cannot be a channel
// name, so it never clashes with one.
const SinceKey = "*"

// String formats a cursor as "ch=<epoch>-<seq>,…" sorted by channel.
func (c Cursor) String() string { return FormatResume(c, time.Time{}) }

// FormatResume formats the resume rule every transport hands out: a
// position per channel seen, then, when since is set, "*=<RFC 3339 time>":
// channels the cursor does not name (those a pattern subscription had not
// seen yet) are replayed from that time on the broker's clock.
func FormatResume(c Cursor, since time.Time) string {
	names := make([]string, 0, len(c))
	for n := range c {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	for i, n := range names {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(n)
		b.WriteByte('=')
		b.WriteString(c[n].String())
	}
	if !since.IsZero() {
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(SinceKey + "=")
		b.WriteString(since.UTC().Format(time.RFC3339Nano))
	}
	return b.String()
}

// ParseCursor parses a resume position; see ParseResume. A time entry is
// accepted and dropped.
func ParseCursor(s string, channels []string) (Cursor, error) {
	c, _, err := ParseResume(s, channels)
	return c, err
}

// ParseResume parses what FormatResume writes. The form
// "ch=<epoch>-<seq>,…[,*=<time>]" names channels; a bare "<epoch>-<seq>" (a
// message id, as in SSE Last-Event-ID) applies to the single channel in
// channels.
func ParseResume(s string, channels []string) (Cursor, time.Time, error) {
	var since time.Time
	if s == "" {
		return nil, since, fmt.Errorf("%w: empty", ErrInvalidPosition)
	}
	if len(s) > MaxCursorEntries*(MaxChannelLen+40)+64 {
		return nil, since, fmt.Errorf("%w: too long", ErrInvalidPosition)
	}
	if !strings.Contains(s, "=") {
		if len(channels) != 1 || IsPattern(channels[0]) {
			return nil, since, fmt.Errorf("%w %q: a bare message id resumes a single channel; use ch=<id>,… for several", ErrInvalidPosition, s)
		}
		p, err := ParsePosition(s)
		if err != nil {
			return nil, since, err
		}
		return Cursor{channels[0]: p}, since, nil
	}
	parts := strings.Split(s, ",")
	if len(parts) > MaxCursorEntries+1 {
		return nil, since, fmt.Errorf("%w: more than %d channels", ErrInvalidPosition, MaxCursorEntries)
	}
	c := make(Cursor, len(parts))
	for _, part := range parts {
		name, pos, ok := strings.Cut(part, "=")
		if !ok {
			return nil, since, fmt.Errorf("%w %q: want ch=<epoch>-<seq>", ErrInvalidPosition, part)
		}
		if name == SinceKey {
			t, err := time.Parse(time.RFC3339Nano, pos)
			if err != nil || !since.IsZero() {
				return nil, since, fmt.Errorf("%w %q: want one %s=<RFC 3339 time>", ErrInvalidPosition, part, SinceKey)
			}
			since = t
			continue
		}
		if err := ValidateChannel(name); err != nil {
			return nil, since, fmt.Errorf("%w: %v", ErrInvalidPosition, err)
		}
		if _, dup := c[name]; dup {
			return nil, since, fmt.Errorf("%w: channel %s named twice", ErrInvalidPosition, name)
		}
		p, err := ParsePosition(pos)
		if err != nil {
			return nil, since, err
		}
		c[name] = p
	}
	if len(c) > MaxCursorEntries {
		return nil, since, fmt.Errorf("%w: more than %d channels", ErrInvalidPosition, MaxCursorEntries)
	}
	return c, since, nil
}
