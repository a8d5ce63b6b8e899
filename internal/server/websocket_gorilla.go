package server

import (
	"bufio"
	"encoding/binary"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/pushctl/pushctl/internal/connrt"
	"github.com/pushctl/pushctl/internal/wire"
)

// Everything that relies on gorilla/websocket's internals is in this file.
//
// gorilla reads frames in a loop that handles control frames on its own,
// so after a pong it would wait in read for the next frame. A connection
// served by the poller must not wait: wsNetConn.Read unwinds from a read
// that would wait where a frame ends and gorilla holds no part of the next
// (a panic with connrt.ErrWouldBlock, recovered by recoverFrameEnd in
// readFrames), and gorilla's state is then that of a connection about to
// read a new frame. That holds because gorilla (as of the version go.mod
// pins, v1.5.3) reads through a bufio.Reader that asks for more input only
// once it has handed out all it holds, and keeps no other state between
// frames. TestGorillaVersionIsPinned fails when go.mod names another
// version: re-check this reasoning against the new version's conn.go, run
// TestFrameSplitAcrossReads, TestFragmentedMessageAroundPing and
// TestWebSocketPingsNeverCorruptFrames (with -count=20), then move the pin.

// recoverFrameEnd, deferred by a reader of a polled connection, turns
// wsNetConn.Read's unwinding at a frame's end into more = true ("more
// input may come; run again when it does"). Any other panic goes on.
func recoverFrameEnd(in *connrt.Input, more *bool) {
	if !in.Polled() {
		return
	}
	if r := recover(); r != nil {
		if r != connrt.ErrWouldBlock {
			panic(r)
		}
		*more = true
	}
}

// wsHijacker hands gorilla a connection whose writes, once the handshake
// is done, go through the session's one writer, and whose write deadlines
// are the writer's alone.
type wsHijacker struct {
	http.ResponseWriter
	ss   *session
	conn *wsNetConn
}

func (h *wsHijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(h.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	h.conn = &wsNetConn{Conn: c, ss: h.ss}
	return h.conn, brw, nil
}

type wsNetConn struct {
	net.Conn
	ss       *session
	upgraded atomic.Bool

	// Owned by the reader (one run at a time).
	in *connrt.Input
	// frames follows the frames in what gorilla has been given: a read
	// that would wait may leave the reader (to be run again on more
	// input) only where a frame ends, when gorilla holds no part of the
	// next one; inMessage: between frames of one fragmented message,
	// which it may not leave either.
	frames    frameTracker
	inMessage bool
}

// wsReadBufferSize is gorilla's read buffer per connection: enough for a
// control frame; larger reads go through the pooled buffer of inputWatch.
const wsReadBufferSize = 256

// Read is gorilla's input: what the poller says is there, never waiting
// between frames (it unwinds to readFrames instead; see there), waiting
// for the rest of a frame that has begun.
func (c *wsNetConn) Read(p []byte) (int, error) {
	n, err := c.in.Read(p) // only readFrames reads, and it sets in
	if err == connrt.ErrWouldBlock {
		// Everything given to gorilla ends with a whole frame, so
		// gorilla asks for more only to begin the next one, having
		// taken no byte of it: leaving here loses nothing.
		if !c.inMessage && c.frames.between() {
			panic(connrt.ErrWouldBlock)
		}
		n, err = c.Conn.Read(p)
	}
	if n > 0 {
		c.frames.feed(p[:n])
		c.ss.lastRead.Store(time.Now().UnixNano())
	}
	return n, err
}

// frameTracker follows the framing of a client's byte stream (RFC 6455
// §5.2): header, extended length, mask, payload. It checks nothing;
// gorilla does.
type frameTracker struct {
	head    [10]byte // the first header bytes: two, then up to 8 of length
	n       int      // header bytes seen of the current frame
	size    int      // the header's size, once its first two bytes are seen
	payload uint64   // payload bytes still to come
}

// between reports whether the bytes seen end with a whole frame.
func (t *frameTracker) between() bool { return t.n == 0 && t.payload == 0 }

func (t *frameTracker) feed(b []byte) {
	for len(b) > 0 {
		if t.payload > 0 {
			k := min(uint64(len(b)), t.payload)
			b = b[k:]
			t.payload -= k
			continue
		}
		if t.n < len(t.head) {
			t.head[t.n] = b[0]
		}
		t.n++
		b = b[1:]
		if t.n == 2 {
			t.size = 2
			switch t.head[1] & 0x7f {
			case 126:
				t.size += 2
			case 127:
				t.size += 8
			}
			if t.head[1]&0x80 != 0 {
				t.size += 4 // the mask
			}
		}
		if t.n < 2 || t.n < t.size {
			continue
		}
		switch l := t.head[1] & 0x7f; l {
		case 126:
			t.payload = uint64(binary.BigEndian.Uint16(t.head[2:4]))
		case 127:
			t.payload = binary.BigEndian.Uint64(t.head[2:10])
		default:
			t.payload = uint64(l)
		}
		t.n = 0
	}
}

// Write takes what gorilla writes after the handshake (close frames on
// protocol errors; pongs are answered by the session) into the session.
func (c *wsNetConn) Write(p []byte) (int, error) {
	if !c.upgraded.Load() {
		return c.Conn.Write(p)
	}
	reason := errProtocol
	if len(p) >= 4 && p[0]&0x0f == wire.OpClose && binary.BigEndian.Uint16(p[2:4]) == websocket.CloseMessageTooBig {
		reason = errFrameTooBig
	}
	c.ss.closeWith(append([]byte(nil), p...), reason)
	return len(p), nil
}

func (c *wsNetConn) SetWriteDeadline(t time.Time) error {
	if !c.upgraded.Load() {
		return c.Conn.SetWriteDeadline(t)
	}
	return nil
}

func (c *wsNetConn) SetDeadline(t time.Time) error {
	if !c.upgraded.Load() {
		return c.Conn.SetDeadline(t)
	}
	return c.Conn.SetReadDeadline(t)
}
