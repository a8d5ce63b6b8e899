package connrt

import (
	"errors"
	"net"
	"sync"
	"syscall"
)

// An idle subscriber connection has no goroutine of its own: where the
// platform allows (Linux, plain TCP) one poller watches every connection
// for input and starts a goroutine to read it when some arrives; the
// subscribe loop likewise runs only while there is something to write
// (session.signal). Elsewhere (TLS, other systems) a goroutine per
// connection waits in read.

// ErrWouldBlock: nothing to read right now.
var ErrWouldBlock = errors.New("no input ready")

// Input runs a connection's reader whenever it has input, one run at
// a time, until the reader returns false or stop is called; then done is
// closed.
type Input struct {
	conn net.Conn
	rc   syscall.RawConn // nil: a goroutine waits in read instead of the poller
	read func() bool
	gone func() // called when the watch ends other than by stop
	done chan struct{}
	id   uint64

	mu      sync.Mutex
	busy    bool // read is running
	stopped bool
	ended   bool

	// While busy, a buffer of pending input taken from the socket in one
	// read (see Read); returned to the pool once drained.
	buf  *[]byte
	r, w int
}

// NewInput prepares watching conn; start begins it. When the reader
// returns false (the peer hung up, or broke the protocol) gone is called.
func NewInput(conn net.Conn, gone func()) *Input {
	return &Input{conn: conn, gone: gone, done: make(chan struct{})}
}

// start runs read on a goroutine of its own whenever there is input; with
// the poller read should take what input there is and return true (Read
// says ErrWouldBlock when there is no more), without it read may wait.
func (w *Input) Start(read func() bool) {
	w.read = read
	if rc := pollable(w.conn); rc != nil {
		w.rc = rc
		if err := addToPoller(w); err == nil {
			return
		}
		w.rc = nil
	}
	w.busy = true
	go func() {
		for read() && !w.isStopped() {
		}
		w.finish(false)
	}()
}

// pollable returns conn's raw descriptor access when the poller can watch
// it: a plain TCP connection (TLS keeps decrypted input of its own, which a
// descriptor's readiness does not show).
func pollable(conn net.Conn) syscall.RawConn {
	tc, ok := conn.(*net.TCPConn)
	if !ok || !PollerAvailable() {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

// Polled reports whether the poller watches the connection (Read never
// waits), rather than a goroutine waiting in read.
func (w *Input) Polled() bool { return w.rc != nil }

// Done is closed once the watch has ended.
func (w *Input) Done() <-chan struct{} { return w.done }

func (w *Input) isStopped() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.stopped
}

// ready is called by the poller when the connection has input (or its
// peer hung up): one read runs, then the watch is armed again.
func (w *Input) ready() {
	w.mu.Lock()
	if w.stopped || w.busy {
		w.mu.Unlock()
		return
	}
	w.busy = true
	w.mu.Unlock()
	go w.serve()
}

func (w *Input) serve() {
	more := w.read()
	w.releaseBuf()
	w.mu.Lock()
	w.busy = false
	if more && !w.stopped && rearm(w) == nil {
		w.mu.Unlock()
		return
	}
	stopped := w.stopped
	w.mu.Unlock()
	w.finish(stopped)
}

// stop ends the watch: no read starts after it. A read in progress ends
// on its own (closing the connection makes it fail).
func (w *Input) Stop() {
	w.mu.Lock()
	w.stopped = true
	busy := w.busy
	w.mu.Unlock()
	if !busy {
		w.finish(true)
	}
}

func (w *Input) finish(stopped bool) {
	w.mu.Lock()
	if w.ended {
		w.mu.Unlock()
		return
	}
	stopped = stopped || w.stopped
	w.ended, w.stopped = true, true
	w.mu.Unlock()
	if w.rc != nil {
		removeFromPoller(w)
	}
	if !stopped && w.gone != nil {
		w.gone()
	}
	close(w.done)
}

// inputBufSize is how much one read takes from a busy connection (many
// pipelined frames at once); an idle connection holds none of it.
const inputBufSize = 16 << 10

var inputBufs = sync.Pool{New: func() any { b := make([]byte, inputBufSize); return &b }}

// Read is for the reader while it runs: with the poller it never waits,
// and returns ErrWouldBlock when the socket has nothing more; without it,
// it is the connection's ordinary read.
func (w *Input) Read(p []byte) (int, error) {
	if w.rc == nil {
		return w.conn.Read(p)
	}
	if w.r < w.w {
		n := copy(p, (*w.buf)[w.r:w.w])
		w.r += n
		if w.r == w.w {
			w.releaseBuf()
		}
		return n, nil
	}
	if w.buf == nil {
		w.buf = inputBufs.Get().(*[]byte)
	}
	n, err := w.tryRead(*w.buf)
	if n <= 0 {
		w.releaseBuf()
		return 0, err
	}
	w.r, w.w = 0, n
	m := copy(p, (*w.buf)[:n])
	w.r = m
	if w.r == w.w {
		w.releaseBuf()
	}
	return m, nil
}

func (w *Input) releaseBuf() {
	if w.buf != nil {
		inputBufs.Put(w.buf)
		w.buf, w.r, w.w = nil, 0, 0
	}
}
