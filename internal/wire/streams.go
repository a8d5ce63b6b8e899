package wire

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
)

// The Durable Streams protocol (docs/durable-streams.md): how a stream's
// URL path names a pushctl channel, what its offsets look like, its
// headers and its SSE control event.

// Durable Streams headers.
const (
	HeaderStreamNextOffset = "Stream-Next-Offset"
	HeaderStreamUpToDate   = "Stream-Up-To-Date"
	HeaderStreamClosed     = "Stream-Closed"
	HeaderStreamCursor     = "Stream-Cursor"
	HeaderStreamSeq        = "Stream-Seq"
	HeaderStreamTTL        = "Stream-TTL"
	HeaderStreamExpiresAt  = "Stream-Expires-At"
	HeaderProducerID       = "Producer-Id"
	HeaderProducerEpoch    = "Producer-Epoch"
	HeaderProducerSeq      = "Producer-Seq"
	HeaderProducerExpected = "Producer-Expected-Seq"
	HeaderProducerReceived = "Producer-Received-Seq"
	HeaderSSEDataEncoding  = "Stream-SSE-Data-Encoding"
)

// StreamPrefix is where every Durable Streams channel lives: a stream's
// channel is "ds." followed by its path's segments; its state (content
// type, expiry, closure, producers) is kept in "ds.~." and the same
// segments.
const (
	StreamPrefix      = "ds."
	StreamStatePrefix = "ds.~."
)

// ErrStreamPath is wrapped by errors of a stream path that names no
// channel.
var ErrStreamPath = errors.New("invalid stream path")

// StreamChannel maps a stream's path (what follows /v1/stream/, already
// percent-decoded) to its channel: each '/'-separated segment keeps the
// letters, digits and _-:@+ it has; every other byte (a dot, a tilde,
// a space, UTF-8) is written ~XX in hex, and the segments are joined
// with dots behind "ds.". So "chat/room-1" is "ds.chat.room-1" and
// "v1.2" is "ds.v1~2E2": the mapping is one to one and reversible.
func StreamChannel(path string) (string, error) {
	if path == "" {
		return "", fmt.Errorf("%w: empty; name a stream as /v1/stream/NAME", ErrStreamPath)
	}
	var b strings.Builder
	b.WriteString(StreamPrefix)
	for i, seg := range strings.Split(path, "/") {
		if seg == "" {
			return "", fmt.Errorf("%w %q: empty segment", ErrStreamPath, path)
		}
		if i > 0 {
			b.WriteByte('.')
		}
		for j := 0; j < len(seg); j++ {
			c := seg[j]
			if c != '.' && c != '~' && broker.ValidChannelChar(c) {
				b.WriteByte(c)
				continue
			}
			fmt.Fprintf(&b, "~%02X", c)
		}
	}
	ch := b.String()
	if len(ch) > broker.MaxChannelLen {
		return "", fmt.Errorf("%w: %q makes a channel name longer than %d bytes", ErrStreamPath, path, broker.MaxChannelLen)
	}
	return ch, nil
}

// StreamPath is StreamChannel's inverse (ok false for a channel that is
// not a stream's).
func StreamPath(channel string) (string, bool) {
	rest, ok := strings.CutPrefix(channel, StreamPrefix)
	if !ok || strings.HasPrefix(channel, StreamStatePrefix) {
		return "", false
	}
	var b strings.Builder
	for i := 0; i < len(rest); i++ {
		switch c := rest[i]; c {
		case '.':
			b.WriteByte('/')
		case '~':
			if i+2 >= len(rest) {
				return "", false
			}
			v, err := strconv.ParseUint(rest[i+1:i+3], 16, 8)
			if err != nil {
				return "", false
			}
			b.WriteByte(byte(v))
			i += 2
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), true
}

// StateChannel is the channel holding the state of the stream whose
// channel is ch.
func StateChannel(ch string) string {
	return StreamStatePrefix + strings.TrimPrefix(ch, StreamPrefix)
}

// A stream's offset is its channel's position written so that offsets of
// one stream sort as the positions do: the epoch, an underscore, and the
// sequence as 16 hex digits ("lq2k3j9x1c_000000000000002a"). The offset
// of an empty stream has sequence 0. "-1" (the start) and "now" (the
// tail) are the protocol's sentinels.
const (
	OffsetStart = "-1"
	OffsetNow   = "now"
)

// ErrOffset is wrapped by offset parse errors.
var ErrOffset = errors.New("invalid offset")

// FormatOffset writes p as an offset.
func FormatOffset(p broker.Position) string {
	return p.Epoch + "_" + fmt.Sprintf("%016x", p.Seq)
}

// ParseOffset parses an offset written by FormatOffset (not a sentinel).
func ParseOffset(s string) (broker.Position, error) {
	i := strings.LastIndexByte(s, '_')
	if i <= 0 || len(s)-i-1 != 16 || len(s) > 80 {
		return broker.Position{}, fmt.Errorf("%w %q: use an offset the server returned in Stream-Next-Offset, -1 or now", ErrOffset, s)
	}
	epoch := s[:i]
	for j := 0; j < len(epoch); j++ {
		if !broker.ValidChannelChar(epoch[j]) || epoch[j] == '.' || epoch[j] == '_' {
			return broker.Position{}, fmt.Errorf("%w %q: bad epoch", ErrOffset, s)
		}
	}
	seq, err := strconv.ParseUint(s[i+1:], 16, 64)
	if err != nil || strings.ToLower(s[i+1:]) != s[i+1:] {
		return broker.Position{}, fmt.Errorf("%w %q: bad sequence", ErrOffset, s)
	}
	return broker.Position{Epoch: epoch, Seq: seq}, nil
}

// StreamControl is the data of an SSE "control" event.
type StreamControl struct {
	NextOffset string `json:"streamNextOffset"`
	Cursor     string `json:"streamCursor,omitempty"`
	UpToDate   bool   `json:"upToDate,omitempty"`
	Closed     bool   `json:"streamClosed,omitempty"`
}

// The live cursor: 20-second intervals counted from 2024-10-09 UTC, as
// the protocol suggests, so that CDNs key long-polls by time.
var (
	cursorEpoch    = time.Date(2024, 10, 9, 0, 0, 0, 0, time.UTC)
	cursorInterval = 20 * time.Second
)

// StreamCursor returns the cursor for a live response at now, given the
// client's (empty: none): the current interval, or, when the client is
// already there or ahead, a later one (by jitter, 1 to 3600 seconds'
// worth of intervals, from jitter in [0,1)), so cursors never go back.
func StreamCursor(now time.Time, client string, jitter float64) string {
	cur := int64(now.Sub(cursorEpoch) / cursorInterval)
	if c, err := strconv.ParseInt(client, 10, 64); err == nil && c >= cur {
		secs := 1 + int64(jitter*3599)
		step := max(1, secs/int64(cursorInterval/time.Second))
		cur = c + step
	}
	return strconv.FormatInt(cur, 10)
}

// MaxStreamTTL is the longest Stream-TTL taken, in seconds (about 31
// years; a time.Duration holds 292).
const MaxStreamTTL = 1_000_000_000

// ParseStreamTTL parses Stream-TTL: decimal seconds, no sign, no leading
// zero, no fraction.
func ParseStreamTTL(s string) (time.Duration, error) {
	if s == "" || len(s) > 12 || (len(s) > 1 && s[0] == '0') {
		return 0, fmt.Errorf("Stream-TTL %q: want whole seconds such as 3600", s)
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, fmt.Errorf("Stream-TTL %q: want whole seconds such as 3600", s)
		}
	}
	n, _ := strconv.ParseInt(s, 10, 64)
	if n > MaxStreamTTL {
		return 0, fmt.Errorf("Stream-TTL %q: at most %d seconds", s, MaxStreamTTL)
	}
	return time.Duration(n) * time.Second, nil
}

// MaxProducerNumber bounds Producer-Epoch and Producer-Seq (2^53-1, what
// JavaScript numbers hold exactly).
const MaxProducerNumber = 1<<53 - 1

// ParseProducerNumber parses Producer-Epoch or Producer-Seq.
func ParseProducerNumber(name, s string) (uint64, error) {
	if s == "" || len(s) > 16 {
		return 0, fmt.Errorf("%s %q: want an integer from 0 to 2^53-1", name, s)
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, fmt.Errorf("%s %q: want an integer from 0 to 2^53-1", name, s)
		}
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil || n > MaxProducerNumber {
		return 0, fmt.Errorf("%s %q: want an integer from 0 to 2^53-1", name, s)
	}
	return n, nil
}

// Codes of Durable Streams refusals (docs/errors.md).
const (
	CodeStreamNotFound   = "stream_not_found"
	CodeStreamExists     = "stream_exists"
	CodeStreamClosed     = "stream_closed"
	CodeStreamConflict   = "stream_conflict"
	CodeOffsetGone       = "offset_gone"
	CodeStreamGone       = "stream_gone"
	CodeProducerFenced   = "producer_fenced"
	CodeProducerSeqGap   = "producer_seq_gap"
	CodeStreamSeqRegress = "stream_seq_regression"
)

// IsTrue reports whether a Stream-Closed header value is "true" (any
// case); any other value counts as absent.
func IsTrue(v string) bool { return strings.EqualFold(v, "true") }

// JSON is the control event's data.
func (c StreamControl) JSON() []byte {
	b, _ := json.Marshal(c)
	return b
}
