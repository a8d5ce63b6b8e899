package server

import (
	"context"
	"net/http"

	"github.com/pushctl/pushctl/internal/auth"
	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/connrt"
	"github.com/pushctl/pushctl/internal/pusher/pusherd"
)

// A WebSocket protocol served by a package of its own (the Pusher
// protocol, internal/pusher/pusherd) runs on this server's connection
// runtime like /ws: a session (its one writer, the writer pool, the input
// poller, the WebSocket wheel), a wsReader for the client's frames, and
// the protocol's pusherd.Handler as the session's encoder and as the
// reader's frame handler. pusherd names the interfaces (Host, Conn,
// Handler); this file is the server's side of them, and the only place
// the protocol reaches the server through.

// protocolHost is the server as a protocol's pusherd.Host.
type protocolHost struct{ s *Server }

func (h protocolHost) NewConn(p pusherd.Handler) pusherd.Conn {
	return &protocolConn{s: h.s, p: p, ss: newSession(h.s, protocolEncoder{p}, nil, true)}
}

func (h protocolHost) ConnSlot(r *http.Request) (func(), error) { return h.s.connSlot(r) }

func (h protocolHost) ConnectIdentity(r *http.Request) (*auth.Identity, error) {
	return h.s.connectIdentity(r)
}

func (h protocolHost) ClientKey(r *http.Request) string { return h.s.clientKey(r) }

func (protocolHost) Error(err error) *Error { return asError(err) }

// protocolRoutes adds a protocol's endpoints to the mux, each pattern's
// methods dispatched (and others refused) as the server's own.
func (s *Server) protocolRoutes(routes []pusherd.Route) {
	byPattern := map[string]map[string]handlerFunc{}
	var patterns []string
	for _, rt := range routes {
		m := byPattern[rt.Pattern]
		if m == nil {
			m = map[string]handlerFunc{}
			byPattern[rt.Pattern] = m
			patterns = append(patterns, rt.Pattern)
		}
		m[rt.Method] = handlerFunc(rt.Handle)
	}
	for _, p := range patterns {
		s.mux.Handle(p, s.methods(byPattern[p]))
	}
}

// protocolConn is a session and its reader as a protocol's pusherd.Conn.
type protocolConn struct {
	s  *Server
	p  pusherd.Handler
	ss *session
	rd *wsReader // once served
}

func (c *protocolConn) ID() uint64 { return c.ss.id }

func (c *protocolConn) NoEcho() { c.ss.echo.Store(false) }

func (c *protocolConn) Serve(w http.ResponseWriter, r *http.Request, release func()) {
	c.s.runWebSocket(w, r, c.ss, nil, nil, release, func(rd *wsReader) {
		c.rd = rd
		rd.onFrame, rd.notText = c.p.Frame, c.p.NotText
		c.p.Opened()
		c.ss.onEnd = append(c.ss.onEnd, c.p.Ended)
	})
}

func (c *protocolConn) Context() context.Context { return c.rd.context() }

func (c *protocolConn) Client() string { return c.rd.client }

func (c *protocolConn) Reply(frame []byte) { c.rd.reply(0, now(frame)) }

func (c *protocolConn) Send(frame []byte) bool { return c.ss.send(frame) }

func (c *protocolConn) Signal() { c.ss.signal() }

func (c *protocolConn) AddSub(key string, sub *broker.Subscription, frames ...[]byte) bool {
	return c.ss.addSubsAfter(map[string]*broker.Subscription{key: sub}, frames)
}

func (c *protocolConn) RemoveSub(key string) { c.ss.removeSub(key, nil) }

func (c *protocolConn) End(reason error) { c.ss.end(reason) }

func (c *protocolConn) EndWith(frame []byte, reason error) { c.ss.endAfter(frame, reason) }

// protocolEncoder is a protocol's Handler as the session's encoder:
// keepalives are WebSocket pings, the close frame is the protocol's.
type protocolEncoder struct{ p pusherd.Handler }

// transport: the one protocol served this way is Pusher's ("pusher" in
// metrics and lifecycle events).
func (protocolEncoder) transport() int { return tPusher }

// start is the protocol's first frames, or nothing for a connection
// refused before it was served (only its close is written).
func (e protocolEncoder) start(b *connrt.Batch, ss *session) {
	if !ss.isEnding() {
		e.p.Start(b)
	}
}

func (e protocolEncoder) message(b *connrt.Batch, _ *session, m *broker.Message) { e.p.Message(b, m) }

func (e protocolEncoder) gap(b *connrt.Batch, _ *session, g *broker.Gap) { e.p.Gap(b, g) }

func (protocolEncoder) keepalive(b *connrt.Batch) bool { b.Add(pingFrame); return true }

func (e protocolEncoder) dropped(b *connrt.Batch, key string, err error) bool {
	return e.p.Dropped(b, key, err)
}

func (e protocolEncoder) end(ss *session, err error) []byte {
	if !ss.claimClose() || err == nil {
		return nil
	}
	code, reason := e.p.Close(err, reasonCode(err))
	if code == 0 {
		return nil
	}
	return closeFrame(code, reason)
}
