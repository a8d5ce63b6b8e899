package connrt

import (
	"errors"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"
)

// ErrStalled ends a connection whose peer took nothing for a whole write
// timeout: it stopped reading.
var ErrStalled = errors.New("the subscriber stopped reading; resume from the last id")

// Writer is the one writer of a subscriber connection: data, control
// frames (pongs, acks, close frames) and the closing reason all go through
// it, under one deadline policy: a write may take as long as it needs while
// the peer keeps taking bytes, and fails with ErrStalled once the peer
// took nothing for timeout.
type Writer struct {
	// conn is the hijacked connection. When nil, writes go through rw:
	// HTTP/2 streams (which cannot be hijacked) and long-poll replies.
	Conn    net.Conn
	RW      http.ResponseWriter
	RC      *http.ResponseController
	Chunked bool // HTTP/1.1 stream: each write is one chunk
	Timeout time.Duration

	// mayWait, when set, is called before a write waits for the peer to
	// make room (the writer pool's worker lets go of its place: see
	// writerPool); every write first takes what the socket takes at once.
	MayWait func()
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
func (w *Writer) armDeadline(now time.Time) {
	if w.deadline.Sub(now) >= w.Timeout {
		return
	}
	w.deadline = now.Add(w.Timeout + w.Timeout/2)
	w.Conn.SetWriteDeadline(w.deadline)
}

// write sends bufs whole, or fails; ErrStalled keeps what is left so that
// finish can complete the frame and say why the connection ends.
func (w *Writer) Write(bufs net.Buffers) error {
	if len(bufs) == 0 {
		return nil
	}
	if w.Conn == nil {
		return w.writeRW(bufs)
	}
	if w.Chunked {
		w.vec = append(w.vec[:0], chunkHeader(w.chunk[:0], buffersLen(bufs)))
		w.vec = append(w.vec, bufs...)
		w.vec = append(w.vec, crlf)
		bufs = w.vec
	}
	if w.MayWait != nil {
		var err error
		if bufs, err = w.writeNoWait(bufs); err != nil {
			return err
		}
		if len(bufs) > 0 {
			w.MayWait()
		}
	}
	for len(bufs) > 0 {
		w.armDeadline(time.Now())
		n, err := bufs.WriteTo(w.Conn)
		if err == nil {
			break
		}
		if IsTimeout(err) {
			if n > 0 {
				continue // a slow reader is not a stalled one
			}
			// Keep our own copy of the slice headers: the caller reuses
			// its Batch (the bytes it points at are left alone).
			w.rest = append(net.Buffers(nil), bufs...)
			return ErrStalled
		}
		return err
	}
	clear(w.vec) // drop references to shared frames
	return nil
}

func (w *Writer) writeRW(bufs net.Buffers) error {
	w.RC.SetWriteDeadline(time.Now().Add(w.Timeout))
	for _, p := range bufs {
		if _, err := w.RW.Write(p); err != nil {
			return rwError(err)
		}
	}
	return rwError(w.RC.Flush())
}

func rwError(err error) error {
	if err != nil && IsTimeout(err) {
		return ErrStalled
	}
	return err
}

// finish writes what a stalled write left, then end, then the end of the
// HTTP body, all within grace: a peer that resumes reading in time sees
// whole frames and the reason; one that does not is cut off.
func (w *Writer) Finish(end []byte, grace time.Duration) {
	if w.Conn == nil {
		if w.rest == nil && len(end) > 0 {
			w.writeRW(net.Buffers{end})
		}
		return
	}
	bufs := w.rest
	w.rest = nil
	if len(end) > 0 {
		if w.Chunked {
			bufs = append(bufs, chunkHeader(nil, len(end)), end, crlf)
		} else {
			bufs = append(bufs, end)
		}
	}
	if w.Chunked {
		bufs = append(bufs, []byte("0\r\n\r\n"))
	}
	deadline := time.Now().Add(grace)
	w.deadline = deadline
	w.Conn.SetWriteDeadline(deadline)
	for len(bufs) > 0 && time.Now().Before(deadline) {
		if _, err := bufs.WriteTo(w.Conn); err != nil && !IsTimeout(err) {
			return
		}
	}
}

// stalled reports whether a write stalled (and finish is owed a grace).
func (w *Writer) Stalled() bool { return w.rest != nil }

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

func IsTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}

// CloseGently half-closes conn and waits (up to wait) for the peer to
// close its side, so that data still in flight to the peer is not
// destroyed by a reset; then stops watching its input and closes it.
func CloseGently(conn net.Conn, in *Input, wait time.Duration) {
	if cw, ok := conn.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
		conn.SetReadDeadline(time.Now().Add(wait))
		t := time.NewTimer(wait)
		select {
		case <-in.Done():
		case <-t.C:
		}
		t.Stop()
	}
	in.Stop()
	conn.Close()
	<-in.Done()
}

// Batch gathers one write: small pieces are copied together, large shared
// frames are referenced, so a burst to one connection costs one writev and
// a broadcast frame is never copied per subscriber. Its arena is pooled
// and held only while a Batch is open, so an idle connection holds none.
type Batch struct {
	Bufs  net.Buffers
	arena []byte
	open  bool // the last element of Bufs is the tail of arena
	N     int  // bytes in Bufs
}

const copyBelow = 512

var arenaPool = sync.Pool{New: func() any { b := make([]byte, 0, 32<<10); return &b }}

func (b *Batch) Add(p []byte) {
	if len(p) == 0 {
		return
	}
	b.N += len(p)
	if len(p) > copyBelow {
		b.Bufs = append(b.Bufs, p)
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
		b.Bufs = append(b.Bufs, b.arena[len(b.arena):len(b.arena)])
		b.open = true
	}
	b.arena = append(b.arena, p...)
	last := &b.Bufs[len(b.Bufs)-1]
	*last = (*last)[:len(*last)+len(p)]
}

// reset empties the Batch after it was written; release also gives the
// arena back (when the connection goes idle).

// disown forgets the arena without pooling it: a stalled write still
// points into it.
func (b *Batch) Disown() {
	b.arena = nil
	b.Reset()
}

func (b *Batch) Reset() {
	clear(b.Bufs)
	b.Bufs = b.Bufs[:0]
	if b.arena != nil {
		b.arena = b.arena[:0]
	}
	b.open = false
	b.N = 0
}

func (b *Batch) Release() {
	b.Reset()
	if b.arena != nil && cap(b.arena) == 32<<10 {
		a := b.arena
		arenaPool.Put(&a)
	}
	b.arena = nil
	if cap(b.Bufs) > 64 {
		b.Bufs = nil
	}
}

// addCopy adds a copy of p, which the caller may reuse at once.
func (b *Batch) AddCopy(p []byte) {
	if len(p) > copyBelow {
		p = append([]byte(nil), p...)
	}
	b.Add(p)
}
