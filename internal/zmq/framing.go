// Package zmq connects pushctl to ZeroMQ through libzmq (pebbe/zmq4).
//
// Framing: a message is multipart [channel, payload, sequence] where the
// sequence is 8 bytes big-endian. Readers accept two or more frames and
// ignore extras; a single frame is the legacy "channel<sep>payload" form.
// Every socket is owned by one goroutine that creates, uses and closes it.
package zmq

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"github.com/pushctl/pushctl/internal/broker"
)

// Frame is one decoded ZeroMQ message.
type Frame struct {
	Channel string
	Payload []byte
	Seq     uint64
	HasSeq  bool
	Legacy  bool // arrived as a single "channel<sep>payload" frame
}

// ErrMalformed is wrapped by decode errors.
var ErrMalformed = errors.New("malformed ZeroMQ message")

// Encode returns the multipart form of a message.
func Encode(channel string, payload []byte, seq uint64) [][]byte {
	var s [8]byte
	binary.BigEndian.PutUint64(s[:], seq)
	return [][]byte{[]byte(channel), payload, s[:]}
}

// EncodeLegacy returns the single-frame form "channel<sep>payload".
func EncodeLegacy(channel string, payload []byte, sep byte) [][]byte {
	b := make([]byte, 0, len(channel)+1+len(payload))
	b = append(append(append(b, channel...), sep), payload...)
	return [][]byte{b}
}

// Decode parses a received message. sep splits single-frame messages.
func Decode(parts [][]byte, sep byte) (Frame, error) {
	var f Frame
	switch len(parts) {
	case 0:
		return f, fmt.Errorf("%w: no frames", ErrMalformed)
	case 1:
		ch, payload, ok := bytes.Cut(parts[0], []byte{sep})
		if !ok {
			return f, fmt.Errorf("%w: single frame without the %q separator between channel and payload", ErrMalformed, sep)
		}
		f.Channel, f.Payload, f.Legacy = string(ch), payload, true
	default:
		f.Channel, f.Payload = string(parts[0]), parts[1]
		if len(parts) >= 3 && len(parts[2]) == 8 {
			f.Seq, f.HasSeq = binary.BigEndian.Uint64(parts[2]), true
		}
	}
	if err := broker.ValidateChannel(f.Channel); err != nil {
		return f, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return f, nil
}

// Prefixes returns the ZeroMQ subscription prefixes for channels and
// patterns: a pattern subscribes to the text before its first wildcard.
// ZeroMQ filters by prefix only; Filter does the exact match.
func Prefixes(channels []string) []string {
	out := make([]string, 0, len(channels))
	for _, c := range channels {
		p := c
		if broker.IsPattern(c) {
			segs := strings.Split(c, ".")
			var fixed []string
			for _, s := range segs {
				if s == "*" || s == ">" {
					break
				}
				fixed = append(fixed, s)
			}
			p = strings.Join(fixed, ".")
			if p != "" {
				p += "."
			}
		}
		out = append(out, p)
	}
	return out
}

// Filter reports whether channel is one of channels or matches one of the
// patterns: a subscription to "chat" does not deliver "chatter".
func Filter(channels []string, channel string) bool {
	for _, c := range channels {
		if broker.Match(c, channel) {
			return true
		}
	}
	return false
}
