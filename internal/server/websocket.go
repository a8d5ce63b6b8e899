package server

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/pushctl/pushctl/internal/auth"
	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/wire"
)

// WebSocket close codes pushctl uses besides the standard ones.
const (
	CloseTokenExpired = 4001
	CloseSlowConsumer = 4008
)

// ClientFrame is any frame a client sends on the WebSocket protocol.
type ClientFrame struct {
	Type     string          `json:"type"`
	Ref      string          `json:"ref,omitempty"`
	Channels []string        `json:"channels,omitempty"`
	Channel  string          `json:"channel,omitempty"`
	Since    string          `json:"since,omitempty"`
	Last     int             `json:"last,omitempty"`
	Event    string          `json:"event,omitempty"`
	Data     json.RawMessage `json:"data,omitempty"`
	Encoding string          `json:"encoding,omitempty"`
	Token    string          `json:"token,omitempty"`
}

// wsConn is one WebSocket connection. The reader goroutine handles client
// frames; the writer goroutine alone writes to the socket.
type wsConn struct {
	s    *Server
	c    *websocket.Conn
	raw  bool
	wake chan struct{}

	mu      sync.Mutex
	subs    map[string]*broker.Subscription // one per channel or pattern
	outbox  [][]byte
	room    chan struct{} // signalled when the writer drains the outbox
	closed  bool
	id      *auth.Identity // replaced by "auth" frames
	expired bool           // the token of id expired
	timer   *time.Timer
}

// setIdentity installs id and arms the end of the connection at its
// token's expiry.
func (wc *wsConn) setIdentity(id *auth.Identity) {
	wc.mu.Lock()
	defer wc.mu.Unlock()
	wc.id, wc.expired = id, false
	if wc.timer != nil {
		wc.timer.Stop()
		wc.timer = nil
	}
	if id != nil && !id.Expires.IsZero() {
		wc.timer = time.AfterFunc(time.Until(id.Expires), func() {
			wc.mu.Lock()
			wc.expired = true
			wc.mu.Unlock()
			wc.signal()
		})
	}
}

func (wc *wsConn) identity() *auth.Identity {
	wc.mu.Lock()
	defer wc.mu.Unlock()
	return wc.id
}

const maxOutbox = 1024

func (s *Server) serveWebSocket(w http.ResponseWriter, r *http.Request, id *auth.Identity, initial *broker.SubscribeOptions) error {
	c, err := s.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return nil // the upgrader already replied
	}
	s.conns.Add(1)
	defer s.conns.Done()
	s.metrics.connections[tWebSocket].Add(1)
	defer s.metrics.connections[tWebSocket].Add(-1)
	wc := &wsConn{
		s:    s,
		c:    c,
		raw:  r.URL.Query().Get("data") == "raw",
		wake: make(chan struct{}, 1),
		subs: make(map[string]*broker.Subscription),
		room: make(chan struct{}, 1),
	}
	c.SetReadLimit(s.opts.MaxMessageSize*2 + 4096)
	wc.setIdentity(id)
	defer wc.setIdentity(nil)
	if initial != nil {
		for _, ch := range initial.Channels {
			o := *initial
			o.Channels = []string{ch}
			if err := wc.addSub(ch, o); err != nil {
				wc.closeWith(websocket.CloseInternalServerErr, asError(err).Code)
				c.Close()
				return nil
			}
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		wc.readLoop(r)
	}()
	wc.writeLoop(done)
	c.Close()
	<-done
	wc.mu.Lock()
	wc.closed = true
	for _, sub := range wc.subs {
		sub.Close()
	}
	wc.mu.Unlock()
	return nil
}

func (wc *wsConn) addSub(key string, o broker.SubscribeOptions) error {
	o.Notify = wc.wake
	sub, err := wc.s.b.Subscribe(context.Background(), o)
	if err != nil {
		return err
	}
	wc.mu.Lock()
	if old, ok := wc.subs[key]; ok {
		old.Close()
	}
	wc.subs[key] = sub
	wc.mu.Unlock()
	return nil
}

func (wc *wsConn) signal() {
	select {
	case wc.wake <- struct{}{}:
	default:
	}
}

// send queues a control frame for the writer, waiting while the outbox is
// full so a fast publisher is slowed to what the socket can take.
func (wc *wsConn) send(frame []byte, done <-chan struct{}) bool {
	for {
		wc.mu.Lock()
		if wc.closed {
			wc.mu.Unlock()
			return false
		}
		if len(wc.outbox) < maxOutbox {
			wc.outbox = append(wc.outbox, frame)
			wc.mu.Unlock()
			wc.signal()
			return true
		}
		wc.mu.Unlock()
		select {
		case <-wc.room:
		case <-done:
			return false
		}
	}
}

func (wc *wsConn) closeWith(code int, reason string) {
	wc.c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, reason), time.Now().Add(time.Second))
}

// writeLoop owns all writes: control frames first, then each
// subscription's events, then pings.
func (wc *wsConn) writeLoop(readerDone <-chan struct{}) {
	s := wc.s
	ping := time.NewTicker(s.opts.PingInterval)
	defer ping.Stop()
	var buf []broker.Event
	var subs []*broker.Subscription
	var keys []string
	var times []time.Time
	// Frames are written whole into one buffer and flushed once per batch:
	// a burst to this connection costs one system call, not one per message.
	// Gorilla's own writes (pongs, close frames) are single Write calls on
	// the same connection, which net.Conn never interleaves with ours.
	bw := &pooledWriter{w: wc.c.NetConn()}
	frame := func(op byte, payload []byte) error {
		var hdr [10]byte
		h := wire.AppendWSHeader(hdr[:0], op, len(payload))
		if _, err := bw.Write(h); err != nil {
			return err
		}
		_, err := bw.Write(payload)
		return err
	}
	for {
		wc.mu.Lock()
		out := wc.outbox
		wc.outbox = nil
		expired := wc.expired
		subs, keys = subs[:0], keys[:0]
		for k, sub := range wc.subs {
			subs = append(subs, sub)
			keys = append(keys, k)
		}
		wc.mu.Unlock()
		select {
		case wc.room <- struct{}{}:
		default:
		}
		if expired {
			s.limitHit("token_expired_live")
			bw.Flush()
			wc.closeWith(CloseTokenExpired, CodeTokenExpired)
			return
		}
		wc.c.NetConn().SetWriteDeadline(time.Now().Add(s.opts.WriteTimeout))
		for _, f := range out {
			if frame(wire.OpText, f) != nil {
				return
			}
		}
		busy := len(out) > 0
		times = times[:0]
		for i, sub := range subs {
			evs, err := sub.TryNext(buf)
			for _, e := range evs {
				var werr error
				switch {
				case e.Gap != nil:
					werr = frame(wire.OpText, trimNL(wire.Gap(e.Gap)))
				case wc.raw:
					_, werr = bw.Write(wire.WebSocketRaw(e.Msg))
					times = append(times, e.Msg.Time)
				default:
					_, werr = bw.Write(wire.WebSocket(e.Msg))
					times = append(times, e.Msg.Time)
				}
				if werr != nil {
					return
				}
			}
			if len(evs) > 0 {
				busy = true
				clear(evs)
				buf = evs
				continue
			}
			if err != nil {
				if bw.Flush() != nil {
					return
				}
				if errors.Is(err, broker.ErrSlowConsumer) {
					wc.closeWith(CloseSlowConsumer, CodeSlowConsumer)
					return
				}
				if errors.Is(err, broker.ErrClosed) {
					wc.closeWith(websocket.CloseGoingAway, CodeShuttingDown)
					return
				}
				// The channel went away: tell the client, keep the connection.
				wc.mu.Lock()
				if wc.subs[keys[i]] == sub {
					delete(wc.subs, keys[i])
				}
				wc.mu.Unlock()
				sub.Close()
				e := asError(err)
				f := []byte(`{"type":"unsubscribed","channels":[`)
				f = wire.AppendString(f, keys[i])
				f = append(f, `],"code":`...)
				f = wire.AppendString(f, e.Code)
				f = append(f, '}')
				if frame(wire.OpText, f) != nil {
					return
				}
			}
		}
		if bw.Flush() != nil {
			return
		}
		if len(times) > 0 {
			s.metrics.delivered(tWebSocket, times, time.Now())
		}
		if busy {
			continue
		}
		select {
		case <-wc.wake:
		case <-ping.C:
			if wc.c.WriteControl(websocket.PingMessage, nil, time.Now().Add(s.opts.WriteTimeout)) != nil {
				return
			}
		case <-readerDone:
			return
		case <-s.stopping:
			wc.closeWith(websocket.CloseGoingAway, CodeShuttingDown)
			return
		}
	}
}

func trimNL(b []byte) []byte { return b[:len(b)-1] }

var writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 16<<10) }}

// pooledWriter holds a buffer only between the first write and the flush
// of a batch, so an idle connection holds none.
type pooledWriter struct {
	w  io.Writer
	bw *bufio.Writer
}

func (p *pooledWriter) Write(b []byte) (int, error) {
	if p.bw == nil {
		p.bw = writerPool.Get().(*bufio.Writer)
		p.bw.Reset(p.w)
	}
	return p.bw.Write(b)
}

// Flush writes what is buffered and gives the buffer back.
func (p *pooledWriter) Flush() error {
	if p.bw == nil {
		return nil
	}
	err := p.bw.Flush()
	if err == nil {
		p.bw.Reset(nil)
		writerPool.Put(p.bw)
		p.bw = nil
	}
	return err
}

func (wc *wsConn) readLoop(r *http.Request) {
	s := wc.s
	stop := make(chan struct{})
	defer close(stop)
	// Replies are produced in order by one goroutine: a publish's reply
	// waits for its outcome there, so the reader can go on queueing
	// publishes (pipelining) while earlier ones are being stored. It is
	// started on the first frame, so idle subscribers do not pay for it.
	var replies chan func() []byte
	ackerDone := make(chan struct{})
	reply := func(f func() []byte) {
		if replies == nil {
			replies = make(chan func() []byte, 1024)
			go func() {
				defer close(ackerDone)
				for r := range replies {
					if b := r(); b != nil && !wc.send(b, stop) {
						for range replies { // drain, so the reader never blocks
						}
						return
					}
				}
			}()
		}
		replies <- f
	}
	defer func() {
		if replies != nil {
			close(replies)
			<-ackerDone
		}
	}()
	wait := 2*s.opts.PingInterval + s.opts.WriteTimeout
	wc.c.SetReadDeadline(time.Now().Add(wait))
	wc.c.SetPongHandler(func(string) error { return wc.c.SetReadDeadline(time.Now().Add(wait)) })
	for {
		typ, data, err := wc.c.ReadMessage()
		if err != nil {
			return
		}
		wc.c.SetReadDeadline(time.Now().Add(wait))
		if typ != websocket.TextMessage {
			f := errorFrame("", errorf(http.StatusBadRequest, CodeInvalidFrame, "frames are JSON text; see docs/websocket.md"))
			reply(func() []byte { return f })
			continue
		}
		if f := wc.handle(r, data); f != nil {
			reply(f)
		}
	}
}

func errorFrame(ref string, err error) []byte {
	e := asError(err)
	f := []byte(`{"type":"error"`)
	if ref != "" {
		f = append(f, `,"ref":`...)
		f = wire.AppendString(f, ref)
	}
	f = append(f, `,"code":`...)
	f = wire.AppendString(f, e.Code)
	f = append(f, `,"message":`...)
	f = wire.AppendString(f, e.Message)
	return append(f, '}')
}

// handle executes one client frame and returns what produces its reply
// (nil: none, or one already queued together with subscriptions).
func (wc *wsConn) handle(r *http.Request, data []byte) func() []byte {
	now := func(b []byte) func() []byte {
		if b == nil {
			return nil
		}
		return func() []byte { return b }
	}
	var f ClientFrame
	if err := json.Unmarshal(data, &f); err != nil {
		return now(errorFrame("", errorf(http.StatusBadRequest, CodeInvalidJSON, "frame is not a JSON object: %v", err)))
	}
	if len(f.Ref) > 128 {
		return now(errorFrame("", errorf(http.StatusBadRequest, CodeInvalidFrame, "ref longer than 128 bytes")))
	}
	if f.Type != "publish" {
		return now(wc.handleControl(r, &f))
	}
	pf := PublishFrame{Channel: f.Channel, Event: f.Event, Data: f.Data, Encoding: f.Encoding}
	m, err := pf.message(wc.s.opts.MaxMessageSize)
	if err != nil {
		return now(errorFrame(f.Ref, err))
	}
	id := wc.identity()
	if err := wc.s.allow(id, auth.Publish, m.Channel); err != nil {
		return now(errorFrame(f.Ref, err))
	}
	if err := wc.s.checkRate(nil, r, id); err != nil {
		return now(errorFrame(f.Ref, err))
	}
	wait, err := broker.StartPublish(r.Context(), wc.s.b, m)
	if err != nil {
		return now(errorFrame(f.Ref, err))
	}
	ref := f.Ref
	return func() []byte {
		m, n, err := wait()
		if err != nil {
			return errorFrame(ref, err)
		}
		return ackFrame(ref, m, n)
	}
}

func ackFrame(ref string, m *broker.Message, n int) []byte {
	b := []byte(`{"type":"ack"`)
	if ref != "" {
		b = append(b, `,"ref":`...)
		b = wire.AppendString(b, ref)
	}
	b = append(b, `,"channel":`...)
	b = wire.AppendString(b, m.Channel)
	b = append(b, `,"id":`...)
	b = wire.AppendString(b, m.ID())
	b = append(b, `,"seq":`...)
	b = appendUint(b, m.Seq)
	b = append(b, `,"subscribers":`...)
	b = appendUint(b, uint64(n))
	return append(b, '}')
}

// handleControl executes a frame other than publish.
func (wc *wsConn) handleControl(r *http.Request, f *ClientFrame) []byte {
	switch f.Type {
	case "auth":
		id, err := wc.s.auth.Authenticate(f.Token, remoteAddr(r))
		if err != nil {
			wc.s.limitHit("bad_token")
			return errorFrame(f.Ref, accessError(err))
		}
		wc.setIdentity(id)
		b := []byte(`{"type":"authenticated"`)
		if f.Ref != "" {
			b = append(b, `,"ref":`...)
			b = wire.AppendString(b, f.Ref)
		}
		return append(b, '}')
	case "subscribe":
		chans := f.Channels
		if f.Channel != "" {
			chans = append(chans, f.Channel)
		}
		if len(chans) == 0 || len(chans) > broker.MaxChannelsPerList {
			return errorFrame(f.Ref, errorf(http.StatusBadRequest, CodeInvalidChannel, "subscribe names 1 to %d channels", broker.MaxChannelsPerList))
		}
		for _, ch := range chans {
			if err := broker.ValidatePattern(ch); err != nil {
				return errorFrame(f.Ref, err)
			}
			if err := wc.s.allow(wc.identity(), auth.Subscribe, ch); err != nil {
				return errorFrame(f.Ref, err)
			}
		}
		o := broker.SubscribeOptions{Channels: chans, Last: f.Last, QueueSize: wc.s.opts.QueueSize}
		if f.Last < 0 || f.Last > 1_000_000 {
			return errorFrame(f.Ref, errorf(http.StatusBadRequest, CodeInvalidParameter, "last must be from 0 to 1000000"))
		}
		if f.Since != "" {
			if err := parseSince(f.Since, &o, time.Now()); err != nil {
				return errorFrame(f.Ref, err)
			}
		}
		wc.mu.Lock()
		total := len(wc.subs)
		wc.mu.Unlock()
		if limit := wc.s.channelsPerConn(); total+len(chans) > limit {
			wc.s.limitHit("channels_per_conn")
			return errorFrame(f.Ref, errorf(http.StatusBadRequest, CodeInvalidParameter, "more than %d subscriptions on one connection", limit))
		}
		// The ack is queued with the subscriptions under one lock, so the
		// writer sends it before any of their messages.
		ack := []byte(`{"type":"subscribed"`)
		if f.Ref != "" {
			ack = append(ack, `,"ref":`...)
			ack = wire.AppendString(ack, f.Ref)
		}
		ack = append(ack, `,"channels":`...)
		cj, _ := json.Marshal(chans)
		ack = append(ack, cj...)
		ack = append(ack, '}')
		subs := make(map[string]*broker.Subscription, len(chans))
		for _, ch := range chans {
			oc := o
			oc.Channels = []string{ch}
			oc.Notify = wc.wake
			sub, err := wc.s.b.Subscribe(r.Context(), oc)
			if err != nil {
				for _, s := range subs {
					s.Close()
				}
				return errorFrame(f.Ref, err)
			}
			subs[ch] = sub
		}
		wc.mu.Lock()
		if wc.closed {
			wc.mu.Unlock()
			for _, sub := range subs {
				sub.Close()
			}
			return nil
		}
		wc.outbox = append(wc.outbox, ack)
		for ch, sub := range subs {
			if old, ok := wc.subs[ch]; ok {
				old.Close()
			}
			wc.subs[ch] = sub
		}
		wc.mu.Unlock()
		wc.signal()
		return nil
	case "unsubscribe":
		chans := f.Channels
		if f.Channel != "" {
			chans = append(chans, f.Channel)
		}
		wc.mu.Lock()
		for _, ch := range chans {
			if sub, ok := wc.subs[ch]; ok {
				sub.Close()
				delete(wc.subs, ch)
			}
		}
		wc.mu.Unlock()
		b := []byte(`{"type":"unsubscribed"`)
		if f.Ref != "" {
			b = append(b, `,"ref":`...)
			b = wire.AppendString(b, f.Ref)
		}
		cj, _ := json.Marshal(chans)
		b = append(b, `,"channels":`...)
		b = append(b, cj...)
		return append(b, '}')
	case "ping":
		b := []byte(`{"type":"pong"`)
		if f.Ref != "" {
			b = append(b, `,"ref":`...)
			b = wire.AppendString(b, f.Ref)
		}
		return append(b, '}')
	}
	return errorFrame(f.Ref, errorf(http.StatusBadRequest, CodeInvalidFrame, "unknown frame type %q: want subscribe, unsubscribe, publish or ping", f.Type))
}

// channelsPerConn bounds subscriptions on one WebSocket (default 256).
func (s *Server) channelsPerConn() int {
	if n := s.opts.Limits.ChannelsPerConn; n > 0 {
		return n
	}
	return 256
}

func appendUint(b []byte, v uint64) []byte {
	if v == 0 {
		return append(b, '0')
	}
	var tmp [20]byte
	i := len(tmp)
	for v > 0 {
		i--
		tmp[i] = byte('0' + v%10)
		v /= 10
	}
	return append(b, tmp[i:]...)
}
