package server

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/gorilla/websocket"
	"github.com/pushctl/pushctl/internal/auth"
	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/connrt"
	"github.com/pushctl/pushctl/internal/door"
	"github.com/pushctl/pushctl/internal/wire"
)

// WebSocket close codes pushctl uses besides the standard ones.
const (
	CloseTokenExpired = wire.CloseTokenExpired
	CloseSlowConsumer = wire.CloseSlowConsumer
)

// textFrame frames a JSON control frame as a WebSocket text frame.
func textFrame(j []byte) []byte {
	return wire.AppendWSFrame(make([]byte, 0, len(j)+4), wire.OpText, j)
}

func closeFrame(code int, reason string) []byte {
	return wire.AppendWSFrame(nil, wire.OpClose, websocket.FormatCloseMessage(code, reason))
}

// wsEncoder writes the WebSocket side of the subscribe loop.
type wsEncoder struct{ raw bool }

func (wsEncoder) transport() int                { return tWebSocket }
func (wsEncoder) start(*connrt.Batch, *session) {}
func (e wsEncoder) message(b *connrt.Batch, _ *session, m *broker.Message) {
	if e.raw {
		b.Add(wire.WebSocketRaw(m))
	} else {
		b.Add(wire.WebSocket(m))
	}
}
func (wsEncoder) gap(b *connrt.Batch, _ *session, g *broker.Gap) {
	b.Add(textFrame(trimNL(wire.Gap(g))))
}

var pingFrame = []byte{0x80 | wire.OpPing, 0}

func (wsEncoder) keepalive(b *connrt.Batch) bool { b.Add(pingFrame); return true }

// dropped tells the client that one subscription ended (its channel was
// deleted, the token no longer covers it); the connection goes on.
func (wsEncoder) dropped(b *connrt.Batch, key string, err error) bool {
	e := asError(err)
	b.Add(textFrame(wire.AppendUnsubscribed(nil, "", []string{key}, e.Code, e.Message)))
	return true
}

// end is the close frame that says why the connection ends.
func (wsEncoder) end(ss *session, err error) []byte {
	if !ss.claimClose() || err == nil {
		return nil
	}
	code := reasonCode(err)
	switch code {
	case "client_closed", "write_error":
		return nil
	case CodeSlowConsumer, CodeStalled:
		return closeFrame(CloseSlowConsumer, code)
	case CodeTokenExpired:
		return closeFrame(CloseTokenExpired, code)
	case CodeShuttingDown:
		return closeFrame(websocket.CloseGoingAway, code)
	case "protocol_error":
		if err == errInvalidUTF8 {
			return closeFrame(websocket.CloseInvalidFramePayloadData, "invalid UTF-8")
		}
		return closeFrame(websocket.CloseProtocolError, code)
	case CodeTooLarge:
		return closeFrame(websocket.CloseMessageTooBig, code)
	case wire.CodeHookDenied, wire.CodeHookUnavailable:
		return closeFrame(hookCloseCode(code), wire.CloseReason(asError(err)))
	}
	return closeFrame(websocket.CloseInternalServerErr, code)
}

func trimNL(b []byte) []byte { return b[:len(b)-1] }

// hookCloseCode is the close code of a hook's refusal.
func hookCloseCode(code string) int {
	if code == wire.CodeHookDenied {
		return wire.CloseHookDenied
	}
	return wire.CloseHookUnavailable
}

// refuseUpgrade answers a WebSocket whose connect hook refused it: upgraded,
// then closed at once with the refusal as the close reason, which a
// browser can read (a refused upgrade shows it nothing but a failure).
func (s *Server) refuseUpgrade(w http.ResponseWriter, r *http.Request, e *Error) error {
	c, err := s.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return nil // the upgrader answered
	}
	defer c.Close()
	c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(hookCloseCode(e.Code), wire.CloseReason(e)), time.Now().Add(time.Second))
	// Wait briefly for the client's close, so the frame is not reset away.
	c.SetReadDeadline(time.Now().Add(time.Second))
	for {
		if _, _, err := c.NextReader(); err != nil {
			return nil
		}
	}
}

func (s *Server) serveWebSocket(w http.ResponseWriter, r *http.Request, id *auth.Identity, initial *broker.SubscribeOptions, release func()) error {
	defer func() {
		if release != nil { // not handed to the session
			release()
		}
	}()
	q := r.URL.Query()
	ss := newSession(s, wsEncoder{raw: q.Get("data") == "raw"}, nil, true)
	if v := q.Get("echo"); v != "" {
		echo, err := strconv.ParseBool(v)
		if err != nil {
			return errorf(http.StatusBadRequest, CodeInvalidParameter, "echo must be true or false")
		}
		ss.echo.Store(echo)
	}
	var hdr http.Header
	if initial != nil {
		// Subscribed before the upgrade, so a refusal is a plain HTTP error.
		o := *initial
		o.OnReady = ss.signal
		subs, cursor, err := s.subscribeEach(r.Context(), s.caller(r, id), o)
		if err != nil {
			return err
		}
		for ch, sub := range subs {
			ss.addSub(ch, sub)
		}
		hdr = http.Header{"Pushctl-Cursor": {cursor}}
	}
	s.runWebSocket(w, r, ss, id, hdr, release, nil)
	release = nil
	return nil
}

// runWebSocket upgrades the request and runs ss on the connection; setup,
// when given, adapts the reader to another protocol (see wsprotocol.go)
// before the session starts. It owns release from here on.
func (s *Server) runWebSocket(w http.ResponseWriter, r *http.Request, ss *session, id *auth.Identity, hdr http.Header, release func(), setup func(rd *wsReader)) {
	defer func() {
		if release != nil { // not handed to the session
			release()
		}
	}()
	hj := &wsHijacker{ResponseWriter: w, ss: ss}
	c, err := s.upgrader.Upgrade(hj, r, hdr)
	if err != nil {
		ss.closeSubs()
		return // the upgrader already replied
	}
	nc := hj.conn
	nc.upgraded.Store(true)
	raw := nc.Conn
	ss.w = &connrt.Writer{Conn: raw, Timeout: s.opts.WriteTimeout}
	if !s.enter() { // shutting down
		ss.closeSubs()
		ss.w.Finish(ss.enc.end(ss, broker.ErrClosed), time.Second)
		raw.Close()
		return
	}
	t := ss.enc.transport()
	s.metrics.connections[t].Add(1)
	c.SetReadLimit(s.opts.MaxMessageSize*2 + 4096)
	ss.setIdentity(id)
	s.connOpened(ss)
	rd := &wsReader{s: s, ss: ss, c: c, nc: nc, addr: s.remoteAddr(r), client: s.clientKey(r)}
	rd.onFrame, rd.notText = rd.handle, notJSONText
	rel := release
	ss.onEnd = []func(){rd.end, rel, func() {
		s.connClosed(ss)
		s.metrics.connections[t].Add(-1)
		s.conns.Done()
	}}
	release = nil
	rd.handlers()
	if setup != nil {
		setup(rd)
	}
	ss.serveAsync(raw, rd.readFrames, s.wsWheel)
}

func notJSONText() []byte {
	return textFrame(wire.AppendError(nil, "", errorf(http.StatusBadRequest, CodeInvalidFrame, "frames are JSON text; see docs/websocket.md")))
}

// visitWebSocket is the WebSocket wheel's call on each connection once
// per ping interval: a peer silent for two intervals (and a write timeout)
// is gone; the others get a ping.
func (s *Server) visitWebSocket(ss *session, now time.Time) {
	if now.UnixNano()-ss.lastRead.Load() > int64(2*s.opts.PingInterval+s.opts.WriteTimeout) {
		ss.setGone()
		return
	}
	ss.keepalive()
}

// wsReader reads client frames and executes them; replies go to the
// session in order through one goroutine (started while there are
// replies to make), so publishes can be pipelined.
type wsReader struct {
	s      *Server
	ss     *session
	c      *websocket.Conn
	nc     *wsNetConn
	addr   net.Addr // the client's, as auth sees it
	client string   // the client's address, for rate limits

	ctxOnce sync.Once
	ctx     context.Context
	cancel  func()

	mu      sync.Mutex
	replies []reply
	acking  bool
	space   chan struct{} // signalled when the acker takes a reply
	ackers  sync.WaitGroup

	members   memberships // presence joined through this connection
	consuming wsConsuming // durable consumers pushed to this connection

	onFrame func(data []byte) // executes a text frame (the protocol's); data is reused after
	notText func() []byte     // the reply to a binary frame
}

type reply struct {
	n    uint64        // the publish it answers (0: none)
	make func() []byte // the framed reply, computed in order
}

// maxReplies bounds replies waiting to be made: a client pipelining
// publishes faster than the broker takes them is read no faster.
const maxReplies = 1024

// context is the connection's context for broker calls (ended with the
// connection).
func (rd *wsReader) context() context.Context {
	rd.ctxOnce.Do(func() {
		rd.ctx, rd.cancel = context.WithCancel(context.Background())
	})
	return rd.ctx
}

// end cancels the connection's context (if it was made).
func (rd *wsReader) end() {
	rd.members.leaveAll()
	rd.ctxOnce.Do(func() {})
	if rd.cancel != nil {
		rd.cancel()
	}
}

func (rd *wsReader) reply(n uint64, f func() []byte) {
	rd.mu.Lock()
	for len(rd.replies) >= maxReplies {
		if rd.space == nil {
			rd.space = make(chan struct{}, 1)
		}
		space := rd.space
		rd.mu.Unlock()
		<-space
		rd.mu.Lock()
	}
	rd.replies = append(rd.replies, reply{n, f})
	start := !rd.acking
	rd.acking = true
	rd.mu.Unlock()
	if start {
		rd.ackers.Add(1)
		go rd.ack()
	}
}

// ack makes the queued replies in order and hands them to the session,
// and leaves when there are none.
func (rd *wsReader) ack() {
	defer rd.ackers.Done()
	for {
		rd.mu.Lock()
		if len(rd.replies) == 0 {
			rd.acking = false
			rd.replies = nil
			rd.mu.Unlock()
			return
		}
		rp := rd.replies[0]
		rd.replies[0] = reply{}
		rd.replies = rd.replies[1:]
		if rd.space != nil {
			select {
			case rd.space <- struct{}{}:
			default:
			}
		}
		rd.mu.Unlock()
		b := rp.make()
		if rp.n > 0 {
			rd.ss.sendReply(b, rp.n)
		} else if b != nil {
			rd.ss.send(b)
		}
	}
}

func now(b []byte) func() []byte { return func() []byte { return b } }

// handlers installs gorilla's control frame handlers: pings are answered
// by the session's writer, a close frame ends the connection.
func (rd *wsReader) handlers() {
	ss, c := rd.ss, rd.c
	c.SetPingHandler(func(data string) error {
		ss.setPong(wire.AppendWSFrame(nil, wire.OpPong, []byte(data)))
		return nil
	})
	c.SetCloseHandler(func(code int, _ string) error {
		if code == websocket.CloseNoStatusReceived {
			ss.closeWith(wire.AppendWSFrame(nil, wire.OpClose, nil), errPeerClosed)
		} else {
			ss.closeWith(closeFrame(code, ""), errPeerClosed)
		}
		return nil
	})
}

// readFrames reads and executes the frames that arrived. It returns true
// when it has taken all input there is (the poller runs it again on more)
// and false when the input ended: the peer hung up or broke the protocol.
//
// gorilla reads frames in a loop that handles control frames on its own,
// so after a pong it would wait in read for the next frame; instead
// wsNetConn.Read unwinds from a read that would wait where a frame ends
// and gorilla holds no part of the next (a panic with connrt.ErrWouldBlock,
// recovered here): gorilla's state is then that of a connection about to
// read a new frame.
func (rd *wsReader) readFrames(in *connrt.Input) (more bool) {
	ss, c, nc := rd.ss, rd.c, rd.nc
	nc.in = in
	defer recoverFrameEnd(in, &more)
	// One buffer for the frames of this call: onFrame does not keep
	// data. It goes when the call ends, so an idle connection holds none.
	var buf bytes.Buffer
	for {
		nc.inMessage = false
		typ, mr, err := c.NextReader()
		if err != nil {
			return false
		}
		nc.inMessage = true
		buf.Reset()
		_, err = buf.ReadFrom(mr)
		data := buf.Bytes()
		nc.inMessage = false
		if err != nil {
			return false
		}
		if typ != websocket.TextMessage {
			rd.reply(0, now(rd.notText()))
			continue
		}
		if !utf8.Valid(data) {
			// RFC 6455 §8.1: a text frame that is not UTF-8 fails the connection.
			ss.closeWith(closeFrame(websocket.CloseInvalidFramePayloadData, "invalid UTF-8"), errInvalidUTF8)
			return false
		}
		rd.onFrame(data)
	}
}

func errFrame(ref string, err error) []byte {
	return textFrame(wire.AppendError(nil, ref, asError(err)))
}

// handle executes one client frame and queues its reply.
func (rd *wsReader) handle(data []byte) {
	s, ss := rd.s, rd.ss
	f, err := wire.DecodeClientFrame(data)
	if err != nil {
		ref := ""
		if f != nil {
			ref = f.Ref
		}
		rd.reply(0, now(errFrame(ref, err)))
		return
	}
	switch f.Type {
	case wire.TypePublish:
	case wire.TypeSubscribe:
		if b := rd.subscribe(f); b != nil {
			rd.reply(0, now(b))
		}
		return
	case wire.TypeAuth:
		rd.reply(0, now(rd.auth(f)))
		return
	case wire.TypeUnsubscribe:
		chans := f.Channels
		if f.Channel != "" {
			chans = append(chans, f.Channel)
		}
		for _, ch := range chans {
			ss.removeSub(ch, nil)
		}
		rd.reply(0, now(textFrame(wire.AppendUnsubscribed(nil, f.Ref, chans, "", ""))))
		return
	case wire.TypePing:
		rd.reply(0, now(textFrame(wire.AppendReply(nil, wire.TypePong, f.Ref))))
		return
	case wire.TypeJoin:
		rd.reply(0, now(rd.join(f)))
		return
	case wire.TypeLeave:
		rd.reply(0, now(rd.leave(f)))
		return
	case wire.TypeConsume, wire.TypeUnconsume, wire.TypeAckIDs, wire.TypeNack:
		rd.consumerFrame(data)
		return
	default:
		rd.reply(0, now(errFrame(f.Ref, errorf(http.StatusBadRequest, CodeInvalidFrame,
			"unknown frame type %q: want subscribe, unsubscribe, publish, ping, auth, join, leave, consume, unconsume, ack or nack", f.Type))))
		return
	}
	pf := wire.PublishFrame{Channel: f.Channel, Event: f.Event, Data: f.Data, Encoding: f.Encoding, Key: f.Key}
	m, err := pf.Message(s.opts.MaxMessageSize)
	if err == nil {
		// Refused here, before a place in line is taken; the door
		// checks it all again.
		err = s.door.CheckPublish(rd.caller().OnSocket(), m.Channel)
	}
	if err != nil {
		rd.reply(0, now(errFrame(f.Ref, err)))
		return
	}
	ss.mu.Lock()
	ss.published++
	n := ss.published
	ss.mu.Unlock()
	m.Origin, m.OriginSeq = ss.id, n
	wait, err := s.door.StartPublish(context.Background(), rd.caller().OnSocket(), m)
	if err != nil {
		rd.reply(n, now(errFrame(f.Ref, err)))
		return
	}
	ref := f.Ref
	rd.reply(n, func() []byte {
		m, subs, err := wait()
		if err != nil {
			return errFrame(ref, err)
		}
		var tmp [128]byte
		return textFrame(wire.AppendAck(tmp[:0], ref, m, subs))
	})
}

// caller is who the connection is now, for the door.
func (rd *wsReader) caller() door.Caller {
	return door.Caller{ID: rd.ss.identity(), Client: rd.client}
}

// auth replaces the connection's token. What the connection may do from
// now on is what the new token grants: subscriptions it does not cover end
// with "forbidden", and the old token's expiry no longer applies.
func (rd *wsReader) auth(f *wire.ClientFrame) []byte {
	s, ss := rd.s, rd.ss
	id, err := s.door.Identify(f.Token, rd.addr)
	if err != nil {
		return errFrame(f.Ref, err)
	}
	if cur := ss.identity(); cur != nil && cur.Hook && id.Claims == nil {
		// The application said who this is; a frame cannot make it
		// anonymous (where tokens are off, allowed everything).
		s.limitHit("bad_token")
		return errFrame(f.Ref, errorf(http.StatusUnauthorized, CodeTokenInvalid, "this connection's identity comes from the application (connect hook); an auth frame needs a token this broker verifies"))
	}
	ss.setIdentity(id)
	out := textFrame(wire.AppendReply(nil, wire.TypeAuthenticated, f.Ref))
	return append(out, ss.revoke(ss.ungranted(id), "the new token does not grant subscribing to ")...)
}

// subscribe executes a subscribe frame. The reply is queued together with
// the subscriptions, so it precedes their messages; nil means it is queued.
func (rd *wsReader) subscribe(f *wire.ClientFrame) []byte {
	s, ss := rd.s, rd.ss
	chans := f.Channels
	if f.Channel != "" {
		chans = append(chans, f.Channel)
	}
	if err := s.door.CheckSubscribe(rd.caller(), chans); err != nil {
		return errFrame(f.Ref, err)
	}
	if err := wire.CheckLast(f.Last); err != nil {
		return errFrame(f.Ref, err)
	}
	o := broker.SubscribeOptions{Channels: chans, Last: f.Last, QueueSize: s.opts.QueueSize, OnReady: ss.signal}
	if f.Since != "" {
		if err := parseSince(f.Since, &o, time.Now()); err != nil {
			return errFrame(f.Ref, err)
		}
	}
	if limit := s.channelsPerConn(); ss.subCount()+len(chans) > limit {
		s.limitHit("channels_per_conn")
		return errFrame(f.Ref, errorf(http.StatusBadRequest, CodeInvalidParameter, "more than %d subscriptions on one connection", limit))
	}
	if f.Echo != nil {
		ss.echo.Store(*f.Echo)
	}
	subs, cursor, err := s.subscribeEach(rd.context(), rd.caller(), o)
	if err != nil {
		return errFrame(f.Ref, err)
	}
	ss.addSubsAfter(subs, [][]byte{textFrame(wire.AppendSubscribed(nil, f.Ref, chans, cursor))})
	return nil
}

// subscribeEach subscribes to each of o.Channels on its own (so each can
// end on its own), all or none, and returns the subscriptions with the
// resume cursor of where they start (the one resume rule: positions for
// what exists, and the time from which channels that appear later are
// replayed).
func (s *Server) subscribeEach(ctx context.Context, c door.Caller, o broker.SubscribeOptions) (map[string]*broker.Subscription, string, error) {
	began := time.Now()
	subs := make(map[string]*broker.Subscription, len(o.Channels))
	start := broker.Cursor{}
	for _, ch := range o.Channels {
		oc := o
		oc.Channels = []string{ch}
		sub, err := s.door.Subscribe(ctx, c, oc)
		if err != nil {
			for _, sub := range subs {
				sub.Close()
			}
			return nil, "", err
		}
		subs[ch] = sub
		for c, p := range sub.Start() {
			start[c] = p
		}
	}
	return subs, broker.FormatResume(start, cursorSince(o.Channels, o.Since, began)), nil
}

// channelsPerConn bounds subscriptions on one WebSocket (default 256).
func (s *Server) channelsPerConn() int {
	if n := s.opts.Limits.ChannelsPerConn; n > 0 {
		return n
	}
	return 256
}
