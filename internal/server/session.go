package server

import (
	"context"
	"errors"
	"net"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pushctl/pushctl/internal/auth"
	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/connrt"
	"github.com/pushctl/pushctl/internal/wire"
)

// Reasons a subscriber connection ends, besides broker errors. Each is
// counted by its code (pushctl_disconnects_total).
var (
	errPeerGone     = errors.New("the subscriber went away")
	errPeerClosed   = errors.New("the subscriber closed the connection")
	errProtocol     = errors.New("protocol error")
	errInvalidUTF8  = errors.New("text frame is not valid UTF-8")
	errFrameTooBig  = errors.New("frame larger than the limit")
	errExpiredLive  = &Error{Status: 401, Code: CodeTokenExpired, Message: "the token expired; reconnect with a new one and resume from the last id"}
	errStalledError = &Error{Status: 503, Code: CodeStalled, Message: "the subscriber took nothing for the write timeout; resume from the last id"}
)

// reasonCode names why a connection ended, for metrics and close frames.
func reasonCode(err error) string {
	switch {
	case err == nil:
		return "completed"
	case errors.Is(err, connrt.ErrStalled):
		return CodeStalled
	case errors.Is(err, errPeerGone), errors.Is(err, errPeerClosed):
		return "client_closed"
	case errors.Is(err, errInvalidUTF8), errors.Is(err, errProtocol):
		return "protocol_error"
	case errors.Is(err, errFrameTooBig):
		return CodeTooLarge
	}
	if e := asError(err); e.Code != CodeInternal {
		return e.Code
	}
	return "write_error"
}

// encoder is what a transport supplies to the subscribe loop: how events,
// keepalives and the end look on its wire.
type encoder interface {
	transport() int
	// start is written once, before anything else.
	start(b *connrt.Batch, ss *session)
	message(b *connrt.Batch, ss *session, m *broker.Message)
	gap(b *connrt.Batch, ss *session, g *broker.Gap)
	// keepalive adds something harmless, if the format has such a thing.
	keepalive(b *connrt.Batch) bool
	// dropped tells the client that one subscription ended while the
	// connection goes on; false ends the connection instead.
	dropped(b *connrt.Batch, key string, err error) bool
	// end returns the last bytes, saying why the connection ends (nil:
	// nothing to say, or no way to say it).
	end(ss *session, err error) []byte
}

var sessionIDs atomic.Uint64

// States of a session's loop (session.loop).
const (
	loopSetup   int32 = iota // not started: the first round looks at everything
	loopIdle                 // no goroutine: signal starts one
	loopRunning              // a goroutine runs rounds
	loopAgain                // … and something new arrived during this round
	loopEnded
)

// session is one subscriber connection: its subscriptions, what its
// reader queued for it, and the one loop every transport shares (drain →
// encode → write → metrics → end). Only the loop writes.
//
// On a hijacked connection (WebSocket, HTTP/1 streams) the session is
// asynchronous: the loop runs on a goroutine only while there is something
// to do, input is watched by the poller (input.go), keepalives and the
// silence check come from a wheel shared by all connections, so an idle
// connection costs memory but no goroutine and no timer. Long-polls and
// HTTP/2 streams run the loop on their handler's goroutine (run).
type session struct {
	s     *Server
	id    uint64
	enc   encoder
	w     *connrt.Writer
	async bool
	loop  atomic.Int32
	wake  chan struct{} // !async: signals the handler's loop
	room  chan struct{}
	// trackCursor keeps cursor up to date with each message written (for
	// encoders that write it as they go); it is always seeded at the start.
	trackCursor bool
	// oneShot ends the loop after the first write (long-poll).
	oneShot bool
	// echo delivers the connection's own publishes back to it.
	echo     atomic.Bool
	kaDue    atomic.Bool  // a keepalive is due
	lastRead atomic.Int64 // unix nanos of the peer's latest input (WebSocket)

	// async only
	conn  net.Conn
	input *connrt.Input
	wheel *connrt.Wheel[*session]
	wpos  connrt.WheelPos // in wheel; guarded by the wheel
	onEnd []func()        // run once the connection is closed

	mu         sync.Mutex
	subs       map[string]*broker.Subscription
	control    [][]byte
	pong       []byte // the latest ping's pong, not yet written
	ending     error  // set to end the connection with this reason
	gone       bool   // the peer went away
	stopped    bool   // the server is shutting down
	closeSent  bool   // a WebSocket close frame is queued or written
	roomClosed bool
	published  uint64 // publishes started on this connection
	acked      uint64 // of those, how many have their reply queued
	ident      *auth.Identity
	timer      *time.Timer
	endCode    string // why the connection ended (reasonCode), once finished

	// Owned by the loop.
	cursor   broker.Cursor  // resume position of what was written
	since    time.Time      // when the subscription started, for new channels
	wk       *connrt.Worker // the writer pool's worker running the loop
	held     map[*broker.Subscription][]broker.Event
	fromHeld bool // the round delivered held events: read their subscriptions again
	b        connrt.Batch
	times    []time.Time
	evbuf    []broker.Event
	keys     []string
	list     []*broker.Subscription
}

// newSession returns a session; async sessions run their loop on demand
// once serveAsync starts them, the others in run.
func newSession(s *Server, enc encoder, w *connrt.Writer, async bool) *session {
	ss := &session{
		s:     s,
		id:    sessionIDs.Add(1),
		enc:   enc,
		w:     w,
		async: async,
		room:  make(chan struct{}, 1),
		subs:  make(map[string]*broker.Subscription, 1),
	}
	if !async {
		ss.wake = make(chan struct{}, 1)
	}
	ss.echo.Store(true)
	return ss
}

// signal tells the loop there may be something to do: an asynchronous
// session starts a goroutine for it when none runs.
func (ss *session) signal() {
	if !ss.async {
		select {
		case ss.wake <- struct{}{}:
		default:
		}
		return
	}
	for {
		switch ss.loop.Load() {
		case loopIdle:
			if ss.loop.CompareAndSwap(loopIdle, loopRunning) {
				writers.Run(ss)
				return
			}
		case loopRunning:
			if ss.loop.CompareAndSwap(loopRunning, loopAgain) {
				return
			}
		default:
			return
		}
	}
}

// keepalive asks the loop for a keepalive.
func (ss *session) keepalive() {
	ss.kaDue.Store(true)
	ss.signal()
}

// setGone records that the peer went away.
func (ss *session) setGone() {
	ss.mu.Lock()
	ss.gone = true
	ss.mu.Unlock()
	ss.signal()
}

// stop ends the connection because the server is shutting down.
func (ss *session) stop() {
	ss.mu.Lock()
	ss.stopped = true
	ss.mu.Unlock()
	ss.signal()
}

// setIdentity installs id and arms the end of the connection at its
// token's expiry (replacing any earlier token's).
func (ss *session) setIdentity(id *auth.Identity) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.ident = id
	if ss.timer != nil {
		ss.timer.Stop()
		ss.timer = nil
	}
	if ss.ending != nil {
		return // the connection is ending: nothing to end or refresh later
	}
	if id != nil && !id.Expires.IsZero() {
		ss.timer = time.AfterFunc(time.Until(id.Expires), func() { ss.expired(id) })
	}
}

// expired is the end of id's validity: an identity the application gave
// (the connect hook) is asked for again (the refresh hook), and the
// connection goes on as whoever the answer says; otherwise, or when the
// application refuses, the connection ends.
func (ss *session) expired(id *auth.Identity) {
	if ss.identity() != id || ss.isEnding() {
		return // replaced meanwhile, or gone
	}
	fresh, err := ss.s.door.Refresh(context.Background(), id, "")
	if ss.isEnding() {
		return // ended while the application was asked
	}
	switch {
	case err != nil:
		ss.s.limitHit("refresh_refused")
		ss.end(err)
	case fresh != nil:
		ss.setIdentity(fresh)
		ss.revokeUngranted(fresh)
	default:
		ss.s.limitHit("token_expired_live")
		ss.end(errExpiredLive)
	}
}

func (ss *session) isEnding() bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.ending != nil
}

// revokeUngranted ends the subscriptions id does not allow (a refresh
// answered with fewer grants): on a WebSocket each with an unsubscribed
// frame saying so, on a one-stream transport the whole connection.
func (ss *session) revokeUngranted(id *auth.Identity) {
	revoked := ss.ungranted(id)
	if len(revoked) == 0 {
		return
	}
	if _, ws := ss.enc.(wsEncoder); !ws {
		ss.s.limitHit("denied")
		ss.end(&Error{Status: 403, Code: CodeForbidden, Message: "the application no longer grants subscribing to " + revoked[0]})
		return
	}
	if frames := ss.revoke(revoked, "the application no longer grants subscribing to "); frames != nil {
		ss.send(frames)
	}
}

// ungranted lists the subscriptions id does not allow.
func (ss *session) ungranted(id *auth.Identity) []string {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	var keys []string
	for key := range ss.subs {
		if ss.s.door.Auth().Allow(id, auth.Subscribe, key) != nil {
			keys = append(keys, key)
		}
	}
	return keys
}

// revoke ends the WebSocket subscriptions keys and returns an unsubscribed
// frame ("forbidden", why followed by the key) for each that was still
// there.
func (ss *session) revoke(keys []string, why string) []byte {
	var out []byte
	for _, key := range keys {
		if ss.removeSub(key, nil) {
			ss.s.limitHit("denied")
			out = append(out, textFrame(wire.AppendUnsubscribed(nil, "", []string{key}, CodeForbidden, why+key))...)
		}
	}
	return out
}

func (ss *session) identity() *auth.Identity {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.ident
}

// end asks the loop to end the connection with reason (the first reason wins).
func (ss *session) end(reason error) {
	ss.mu.Lock()
	if ss.ending == nil {
		ss.ending = reason
	}
	ss.mu.Unlock()
	ss.signal()
}

// endAfter queues frame and ends the connection for reason (the first
// reason wins).
func (ss *session) endAfter(frame []byte, reason error) {
	ss.mu.Lock()
	ss.control = append(ss.control, frame)
	if ss.ending == nil {
		ss.ending = reason
	}
	ss.mu.Unlock()
	ss.signal()
}

// maxControl bounds control frames waiting for the loop; a peer that
// sends requests without reading replies is slowed to what it reads.
const maxControl = 1024

// send queues a framed control frame, waiting while too many are queued.
// It returns false once the connection is ending.
func (ss *session) send(frame []byte) bool {
	for {
		ss.mu.Lock()
		if ss.ending != nil {
			ss.mu.Unlock()
			return false
		}
		if len(ss.control) < maxControl {
			ss.control = append(ss.control, frame)
			ss.mu.Unlock()
			ss.signal()
			return true
		}
		ss.mu.Unlock()
		<-ss.room // closed when the connection ends
	}
}

// sendReply queues the reply to the n-th publish of this connection, after
// which its own message may be delivered back to it.
func (ss *session) sendReply(frame []byte, n uint64) bool {
	ok := ss.send(frame)
	ss.mu.Lock()
	ss.acked = max(ss.acked, n)
	ss.mu.Unlock()
	ss.signal()
	return ok
}

// setPong records the pong for the latest ping: a peer pinging faster than
// it reads gets one pong for the latest, as RFC 6455 allows.
func (ss *session) setPong(frame []byte) {
	ss.mu.Lock()
	ss.pong = frame
	ss.mu.Unlock()
	ss.signal()
}

// addSub registers sub under key, replacing (and closing) an older one.
func (ss *session) addSub(key string, sub *broker.Subscription) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.ending != nil {
		sub.Close()
		return false
	}
	if old, ok := ss.subs[key]; ok {
		old.Close()
	}
	ss.subs[key] = sub
	return true
}

// addSubsAfter registers subs (by key, each replacing and closing an
// older one) with frames queued before their messages, in one step; when
// the connection is ending it closes them and returns false.
func (ss *session) addSubsAfter(subs map[string]*broker.Subscription, frames [][]byte) bool {
	ss.mu.Lock()
	if ss.ending != nil {
		ss.mu.Unlock()
		for _, sub := range subs {
			sub.Close()
		}
		return false
	}
	ss.control = append(ss.control, frames...)
	for key, sub := range subs {
		if old, ok := ss.subs[key]; ok {
			old.Close()
		}
		ss.subs[key] = sub
	}
	ss.mu.Unlock()
	ss.signal()
	return true
}

// removeSub closes the subscription under key if it is still sub (any, when
// sub is nil) and reports whether it did.
func (ss *session) removeSub(key string, sub *broker.Subscription) bool {
	ss.mu.Lock()
	cur, ok := ss.subs[key]
	if ok && (sub == nil || cur == sub) {
		delete(ss.subs, key)
	}
	ss.mu.Unlock()
	if ok && (sub == nil || cur == sub) {
		cur.Close()
		return true
	}
	return false
}

func (ss *session) subCount() int {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return len(ss.subs)
}

// closeSubs ends every subscription at once, so a connection that is
// going away releases its queued messages before its last write.
func (ss *session) closeSubs() {
	ss.mu.Lock()
	if ss.ending == nil {
		ss.ending = errPeerGone
	}
	subs := ss.subs
	ss.subs = map[string]*broker.Subscription{}
	if ss.timer != nil {
		ss.timer.Stop()
	}
	if !ss.roomClosed {
		ss.roomClosed = true
		close(ss.room) // frees senders waiting for room
	}
	ss.mu.Unlock()
	for _, sub := range subs {
		sub.Close()
	}
	ss.held = nil
}

// startCursor seeds the resume cursor with where sub starts, and its time
// entry (since; zero without a pattern).
func (ss *session) startCursor(sub *broker.Subscription, since time.Time) {
	if ss.cursor == nil {
		ss.cursor = broker.Cursor{}
	}
	for ch, p := range sub.Start() {
		if _, ok := ss.cursor[ch]; !ok {
			ss.cursor[ch] = p
		}
	}
	if !since.IsZero() && (ss.since.IsZero() || since.Before(ss.since)) {
		ss.since = since
	}
}

// resume is the cursor that resumes everything written so far.
func (ss *session) resume() string { return broker.FormatResume(ss.cursor, ss.since) }

func (ss *session) track(ch string, p broker.Position) {
	if !ss.trackCursor {
		return
	}
	if _, ok := ss.cursor[ch]; !ok && len(ss.cursor) >= broker.MaxCursorEntries {
		// Beyond the bound the oldest-named channel falls back to the
		// cursor's time.
		names := make([]string, 0, len(ss.cursor))
		for n := range ss.cursor {
			names = append(names, n)
		}
		sort.Strings(names)
		delete(ss.cursor, names[0])
	}
	ss.cursor[ch] = p
}

// step runs one round of the loop: control frames, a due keepalive and
// what the subscriptions queued go out in one write. It reports whether
// it wrote anything, and the reason once the connection must end.
func (ss *session) step() (bool, error) {
	ss.fromHeld = false
	ss.mu.Lock()
	ctl := ss.control
	ss.control = nil
	pong := ss.pong
	ss.pong = nil
	ending, acked, gone, stopped := ss.ending, ss.acked, ss.gone, ss.stopped
	roomOpen := !ss.roomClosed
	ss.keys, ss.list = ss.keys[:0], ss.list[:0]
	for k, sub := range ss.subs {
		ss.keys = append(ss.keys, k)
		ss.list = append(ss.list, sub)
	}
	ss.mu.Unlock()
	if ctl != nil && roomOpen {
		select {
		case ss.room <- struct{}{}:
		default:
		}
	}
	ss.b.Add(pong)
	for _, f := range ctl {
		ss.b.Add(f)
	}
	if ss.kaDue.Swap(false) {
		ss.enc.keepalive(&ss.b)
	}
	if ending != nil {
		if err := ss.flush(); err != nil {
			return false, err
		}
		return false, ending
	}
	if gone {
		// A reason the peer's reader queued went first.
		return false, errPeerGone
	}
	if stopped {
		return false, broker.ErrClosed
	}
	for i, sub := range ss.list {
		if err := ss.drain(ss.keys[i], sub, acked); err != nil {
			ss.flush()
			return false, err
		}
	}
	clear(ss.list)
	if ss.b.N == 0 {
		return false, nil
	}
	return true, ss.flush()
}

// run is the subscribe loop of a session that is not asynchronous, on the
// caller's goroutine. It returns why the connection ends: nil for a
// long-poll that answered, otherwise the reason. done is closed when the
// peer is gone; keepalive (0: none) paces keepalives; wait (0: forever)
// bounds a long-poll.
func (ss *session) run(done <-chan struct{}, keepalive, wait time.Duration) error {
	var tick, timeout <-chan time.Time
	if keepalive > 0 {
		t := time.NewTicker(keepalive)
		defer t.Stop()
		tick = t.C
	}
	if wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		timeout = t.C
	}
	defer ss.b.Release()
	ss.enc.start(&ss.b, ss)
	for {
		wrote, err := ss.step()
		if err != nil {
			return err
		}
		if wrote {
			if ss.oneShot {
				return nil
			}
			// Busy: look at the rest without waiting, so a connection that
			// is never idle still gets keepalives and still notices its
			// peer leaving or the broker stopping.
			select {
			case <-tick:
				ss.kaDue.Store(true)
			case <-done:
				ss.setGone()
			case <-ss.s.stopping:
				return broker.ErrClosed
			default:
			}
			continue
		}
		ss.b.Release() // idle: hold no buffer
		select {
		case <-ss.wake:
		case <-tick:
			ss.kaDue.Store(true)
		case <-timeout:
			return nil
		case <-done:
			ss.setGone()
		case <-ss.s.stopping:
			return broker.ErrClosed
		}
	}
}

// serveAsync runs an asynchronous session on its hijacked conn: read
// takes the peer's input when there is some (see connrt.Input), the wheel
// paces keepalives. It returns at once; the session ends on its own and
// then closes conn and runs onEnd.
func (ss *session) serveAsync(conn net.Conn, read func(*connrt.Input) bool, w *connrt.Wheel[*session]) {
	ss.conn = conn
	ss.lastRead.Store(time.Now().UnixNano())
	ss.wheel = w
	w.Add(ss)
	select {
	case <-ss.s.stopping:
		ss.stop()
	default:
	}
	ss.input = connrt.NewInput(conn, ss.setGone)
	in := ss.input
	ss.enc.start(&ss.b, ss)
	in.Start(func() bool { return read(in) })
	ss.w.MayWait = ss.mayWait
	ss.w.SetNoWait(conn)
	ss.loop.Store(loopRunning)
	writers.Run(ss)
}

// WheelPos is where the session is on its wheel.
func (ss *session) WheelPos() *connrt.WheelPos { return &ss.wpos }

// mayWait is called (on the loop) before a write waits for the peer.
func (ss *session) mayWait() { ss.wk.Detach() }

// writers runs the rounds of asynchronous sessions (see connrt.Pool):
// GOMAXPROCS workers at most. Twice as many did worse on every load
// (smaller batches for the same CPU).
var writers = connrt.NewPool(runtime.GOMAXPROCS(0))

// runAsync runs one round of the loop on a worker: when there is more to
// do the session joins the queue again (so a busy session takes its turn
// with the others), otherwise it goes idle (signal queues it again);
// when the connection must end it ends it.
func (ss *session) Round(wk *connrt.Worker) {
	ss.wk = wk
	ss.loop.Store(loopRunning)
	wrote, err := ss.step()
	ss.wk = nil
	if err != nil {
		wk.Detach() // closing may wait for the peer
		ss.loop.Store(loopEnded)
		ss.b.Release()
		ss.finish(err)
		ss.wheel.Remove(ss)
		// Wait (briefly) for the peer's side of the closing handshake
		// before the socket goes, so nothing in flight to it is reset
		// away.
		connrt.CloseGently(ss.conn, ss.input, time.Second)
		for _, f := range ss.onEnd {
			f()
		}
		return
	}
	if wrote && (len(ss.held) > 0 || ss.fromHeld) {
		wk.Requeue(ss)
		return
	}
	// Every source of work (a queued event, a control frame, a
	// keepalive, the end) signals, which turns loopRunning into
	// loopAgain: after a write, a round that would find nothing is
	// skipped unless a signal came.
	ss.b.Release() // idle: hold no buffer
	if !ss.loop.CompareAndSwap(loopRunning, loopIdle) {
		wk.Requeue(ss) // loopAgain: something came during the round
	}
}

// drain encodes what sub has queued. It returns an error when the
// connection must end.
func (ss *session) drain(key string, sub *broker.Subscription, acked uint64) error {
	evs, held := ss.held[sub]
	var err error
	if held {
		// What sub queued since is read next round (its signal may
		// have been spent on this one).
		ss.fromHeld = true
		delete(ss.held, sub)
	} else {
		evs, err = sub.TryNext(ss.evbuf)
	}
	for j, e := range evs {
		if ss.b.N >= maxBatch {
			// The rest waits for the next round, so keepalives, control
			// frames and other subscriptions are not stuck behind it.
			ss.hold(sub, evs[j:])
			return nil
		}
		if m := e.Msg; m != nil && m.Origin == ss.id {
			if !ss.echo.Load() {
				continue
			}
			if m.OriginSeq > acked {
				// Its ack is not out yet: hold the rest of this channel
				// back so the ack comes first.
				ss.hold(sub, evs[j:])
				return nil
			}
		}
		if e.Gap != nil {
			ss.track(e.Gap.Channel, e.Gap.To)
			ss.enc.gap(&ss.b, ss, e.Gap)
			continue
		}
		ss.track(e.Msg.Channel, e.Msg.Position())
		ss.enc.message(&ss.b, ss, e.Msg)
		ss.times = append(ss.times, e.Msg.Time)
	}
	if len(evs) > 0 {
		clear(evs) // drop references for the garbage collector
		ss.evbuf = evs[:0]
		return nil
	}
	if err == nil {
		return nil
	}
	if errors.Is(err, broker.ErrSlowConsumer) || errors.Is(err, broker.ErrClosed) {
		return err
	}
	if ss.enc.dropped(&ss.b, key, err) {
		ss.removeSub(key, sub)
		return nil
	}
	return err
}

// maxBatch bounds the bytes one round of the loop gathers for writing.
const maxBatch = 1 << 20

// hold keeps evs (the rest of sub's drained events) for the next round.
func (ss *session) hold(sub *broker.Subscription, evs []broker.Event) {
	if ss.held == nil {
		ss.held = map[*broker.Subscription][]broker.Event{}
	}
	ss.held[sub] = evs
}

// flush writes the open batch and records the deliveries.
func (ss *session) flush() error {
	if ss.b.N == 0 {
		return nil
	}
	err := ss.w.Write(ss.b.Bufs)
	if ss.w.Stalled() {
		ss.b.Disown()
	} else {
		ss.b.Reset()
	}
	if err == nil && len(ss.times) > 0 {
		ss.s.metrics.delivered(ss.enc.transport(), ss.times, time.Now())
	}
	clear(ss.times)
	ss.times = ss.times[:0]
	return err
}

// finish ends the connection for reason: subscriptions are released
// first, the reason is counted, and the transport's last words are
// written (after a stall, within a grace period).
func (ss *session) finish(reason error) {
	ss.closeSubs()
	ss.mu.Lock()
	ss.endCode = reasonCode(reason)
	ss.mu.Unlock()
	if reason != nil {
		ss.s.metrics.disconnected(ss.enc.transport(), reasonCode(reason))
	}
	if errors.Is(reason, connrt.ErrStalled) {
		ss.s.log.Debug("subscriber stalled", "transport", transportNames[ss.enc.transport()])
	}
	switch {
	case errors.Is(reason, errPeerGone):
		return
	case reason != nil && !errors.Is(reason, connrt.ErrStalled) && isWriteError(reason):
		return
	}
	ss.w.Finish(ss.enc.end(ss, reason), ss.s.opts.CloseGrace)
}

// isWriteError reports whether err came from writing to the peer (the
// connection is broken, nothing more can be said on it).
func isWriteError(err error) bool {
	var ne *net.OpError
	return errors.As(err, &ne)
}

// claimClose reports whether no close frame was made for the connection
// yet, and marks one made: the caller makes it.
func (ss *session) claimClose() bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	sent := ss.closeSent
	ss.closeSent = true
	return !sent
}

// closeWith queues a close frame as the connection's last control frame
// and ends it for reason.
func (ss *session) closeWith(frame []byte, reason error) {
	ss.mu.Lock()
	if !ss.closeSent {
		ss.closeSent = true
		ss.control = append(ss.control, frame)
	}
	if ss.ending == nil {
		ss.ending = reason
	}
	ss.mu.Unlock()
	ss.signal()
}
