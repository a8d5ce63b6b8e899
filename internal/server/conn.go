package server

import (
	"errors"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"
)

// errStalled ends a connection whose peer took nothing for a whole write
// timeout: it stopped reading.
var errStalled = errors.New("the subscriber stopped reading; resume from the last id")

// connWriter is the one writer of a subscriber connection: data, control
// frames (pongs, acks, close frames) and the closing reason all go through
// it, under one deadline policy: a write may take as long as it needs while
// the peer keeps taking bytes, and fails with errStalled once the peer
// took nothing for timeout.
type connWriter struct {
	// conn is the hijacked connection. When nil, writes go through rw:
	// HTTP/2 streams (which cannot be hijacked) and long-poll replies.
	conn    net.Conn
	rw      http.ResponseWriter
	rc      *http.ResponseController
	chunked bool // HTTP/1.1 stream: each write is one chunk
	timeout time.Duration

	// mayWait, when set, is called before a write waits for the peer to
	// make room (the writer pool's worker lets go of its place: see
	// writerPool); every write first takes what the socket takes at once.
	mayWait func()
	nw      noWait

	rest     net.Buffers // what a stalled write left unwritten
	chunk    [20]byte
	vec      net.Buffers
	deadline time.Time // the write deadline set on conn
}

// armDeadline makes sure the write deadline is at least timeout away,
// setting it (1.5 timeouts away) only when it is not: a deadline set for
// every write costs a lock in the runtime's timers, and a stall is still
// found between one and one and a half timeouts.
func (w *connWriter) armDeadline(now time.Time) {
	if w.deadline.Sub(now) >= w.timeout {
		return
	}
	w.deadline = now.Add(w.timeout + w.timeout/2)
	w.conn.SetWriteDeadline(w.deadline)
}

// write sends bufs whole, or fails; errStalled keeps what is left so that
// finish can complete the frame and say why the connection ends.
func (w *connWriter) write(bufs net.Buffers) error {
	if len(bufs) == 0 {
		return nil
	}
	if w.conn == nil {
		return w.writeRW(bufs)
	}
	if w.chunked {
		w.vec = append(w.vec[:0], chunkHeader(w.chunk[:0], buffersLen(bufs)))
		w.vec = append(w.vec, bufs...)
		w.vec = append(w.vec, crlf)
		bufs = w.vec
	}
	if w.mayWait != nil {
		var err error
		if bufs, err = w.writeNoWait(bufs); err != nil {
			return err
		}
		if len(bufs) > 0 {
			w.mayWait()
		}
	}
	for len(bufs) > 0 {
		w.armDeadline(time.Now())
		n, err := bufs.WriteTo(w.conn)
		if err == nil {
			break
		}
		if isTimeout(err) {
			if n > 0 {
				continue // a slow reader is not a stalled one
			}
			// Keep our own copy of the slice headers: the caller reuses
			// its batch (the bytes it points at are left alone).
			w.rest = append(net.Buffers(nil), bufs...)
			return errStalled
		}
		return err
	}
	clear(w.vec) // drop references to shared frames
	return nil
}

func (w *connWriter) writeRW(bufs net.Buffers) error {
	w.rc.SetWriteDeadline(time.Now().Add(w.timeout))
	for _, p := range bufs {
		if _, err := w.rw.Write(p); err != nil {
			return rwError(err)
		}
	}
	return rwError(w.rc.Flush())
}

func rwError(err error) error {
	if err != nil && isTimeout(err) {
		return errStalled
	}
	return err
}

// finish writes what a stalled write left, then end, then the end of the
// HTTP body, all within grace: a peer that resumes reading in time sees
// whole frames and the reason; one that does not is cut off.
func (w *connWriter) finish(end []byte, grace time.Duration) {
	if w.conn == nil {
		if w.rest == nil && len(end) > 0 {
			w.writeRW(net.Buffers{end})
		}
		return
	}
	bufs := w.rest
	w.rest = nil
	if len(end) > 0 {
		if w.chunked {
			bufs = append(bufs, chunkHeader(nil, len(end)), end, crlf)
		} else {
			bufs = append(bufs, end)
		}
	}
	if w.chunked {
		bufs = append(bufs, []byte("0\r\n\r\n"))
	}
	deadline := time.Now().Add(grace)
	w.deadline = deadline
	w.conn.SetWriteDeadline(deadline)
	for len(bufs) > 0 && time.Now().Before(deadline) {
		if _, err := bufs.WriteTo(w.conn); err != nil && !isTimeout(err) {
			return
		}
	}
}

// stalled reports whether a write stalled (and finish is owed a grace).
func (w *connWriter) stalled() bool { return w.rest != nil }

var crlf = []byte("\r\n")

func chunkHeader(b []byte, n int) []byte {
	b = strconv.AppendInt(b, int64(n), 16)
	return append(b, '\r', '\n')
}

// advance drops the first n bytes of bufs.
func advance(bufs net.Buffers, n int) net.Buffers {
	for n > 0 && len(bufs) > 0 {
		if n < len(bufs[0]) {
			bufs[0] = bufs[0][n:]
			return bufs
		}
		n -= len(bufs[0])
		bufs[0] = nil
		bufs = bufs[1:]
	}
	for len(bufs) > 0 && len(bufs[0]) == 0 {
		bufs = bufs[1:]
	}
	return bufs
}

func buffersLen(bufs net.Buffers) int {
	n := 0
	for _, b := range bufs {
		n += len(b)
	}
	return n
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}

// closeGently half-closes conn and waits (up to wait) for the peer to
// close its side, so that data still in flight to the peer is not
// destroyed by a reset; then stops watching its input and closes it.
func closeGently(conn net.Conn, in *inputWatch, wait time.Duration) {
	if cw, ok := conn.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
		conn.SetReadDeadline(time.Now().Add(wait))
		t := time.NewTimer(wait)
		select {
		case <-in.done:
		case <-t.C:
		}
		t.Stop()
	}
	in.stop()
	conn.Close()
	<-in.done
}

// batch gathers one write: small pieces are copied together, large shared
// frames are referenced, so a burst to one connection costs one writev and
// a broadcast frame is never copied per subscriber. Its arena is pooled
// and held only while a batch is open, so an idle connection holds none.
type batch struct {
	bufs  net.Buffers
	arena []byte
	open  bool // the last element of bufs is the tail of arena
	n     int
}

const copyBelow = 512

var arenaPool = sync.Pool{New: func() any { b := make([]byte, 0, 32<<10); return &b }}

func (b *batch) add(p []byte) {
	if len(p) == 0 {
		return
	}
	b.n += len(p)
	if len(p) > copyBelow {
		b.bufs = append(b.bufs, p)
		b.open = false
		return
	}
	if b.arena == nil {
		b.arena = (*arenaPool.Get().(*[]byte))[:0]
	}
	if len(b.arena)+len(p) > cap(b.arena) {
		// A fresh arena: what earlier elements point at stays untouched.
		b.arena = make([]byte, 0, max(cap(b.arena), len(p)))
		b.open = false
	}
	if !b.open {
		b.bufs = append(b.bufs, b.arena[len(b.arena):len(b.arena)])
		b.open = true
	}
	b.arena = append(b.arena, p...)
	last := &b.bufs[len(b.bufs)-1]
	*last = (*last)[:len(*last)+len(p)]
}

// reset empties the batch after it was written; release also gives the
// arena back (when the connection goes idle).

// disown forgets the arena without pooling it: a stalled write still
// points into it.
func (b *batch) disown() {
	b.arena = nil
	b.reset()
}

func (b *batch) reset() {
	clear(b.bufs)
	b.bufs = b.bufs[:0]
	if b.arena != nil {
		b.arena = b.arena[:0]
	}
	b.open = false
	b.n = 0
}

func (b *batch) release() {
	b.reset()
	if b.arena != nil && cap(b.arena) == 32<<10 {
		a := b.arena
		arenaPool.Put(&a)
	}
	b.arena = nil
	if cap(b.bufs) > 64 {
		b.bufs = nil
	}
}

// addCopy adds a copy of p, which the caller may reuse at once.
func (b *batch) addCopy(p []byte) {
	if len(p) > copyBelow {
		p = append([]byte(nil), p...)
	}
	b.add(p)
}
