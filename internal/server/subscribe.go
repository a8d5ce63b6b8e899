package server

import (
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gorilla/websocket"
	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/connrt"
	"github.com/pushctl/pushctl/internal/wire"
)

// parseResume fills the replay part of opts from a request, by the one
// resume rule: a cursor (Last-Event-ID, last_event_id or since) whose
// "*=<time>" entry, or since_time, replays the channels it does not name;
// otherwise since (a time or duration) and last.
func parseResume(r *http.Request, opts *broker.SubscribeOptions) error {
	q := r.URL.Query()
	id := r.Header.Get("Last-Event-ID")
	if id == "" {
		id = q.Get("last_event_id")
	}
	if id != "" {
		c, since, err := broker.ParseResume(id, opts.Channels)
		if err != nil {
			return err
		}
		opts.From, opts.Since = c, since
	} else if v := q.Get("since"); v != "" {
		if err := parseSince(v, opts, time.Now()); err != nil {
			return err
		}
	}
	if v := q.Get("since_time"); v != "" {
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			return errorf(http.StatusBadRequest, CodeInvalidPosition, "since_time %q: want an RFC 3339 time", v)
		}
		if opts.Since.IsZero() || t.Before(opts.Since) {
			opts.Since = t
		}
	}
	if v := q.Get("last"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > 1_000_000 {
			return errorf(http.StatusBadRequest, CodeInvalidParameter, "last must be a number from 0 to 1000000")
		}
		if opts.Last >= 0 {
			opts.Last = n
		}
	}
	return nil
}

// parseSince accepts "all" (or "0"), a message id or cursor, an RFC 3339
// time, or a duration meaning "that long ago".
func parseSince(v string, opts *broker.SubscribeOptions, now time.Time) error {
	switch {
	case v == "all" || v == "0":
		opts.Last = -1
		return nil
	case strings.ContainsAny(v, "=") || strings.Contains(v, "-") && !strings.Contains(v, ":"):
		c, since, err := broker.ParseResume(v, opts.Channels)
		if err != nil {
			return err
		}
		opts.From, opts.Since = c, since
		return nil
	}
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		opts.Since = t
		return nil
	}
	if d, err := time.ParseDuration(v); err == nil && d > 0 {
		opts.Since = now.Add(-d)
		return nil
	}
	return errorf(http.StatusBadRequest, CodeInvalidPosition,
		"since %q: want all, a message id, ch=<id>,…[,*=<time>], an RFC 3339 time or a duration such as 5m", v)
}

// cursorSince is the time entry of the resume cursor handed to a
// subscription to channels that started at began (zero without a pattern):
// began, or the earlier time a resume asked for, since what that resume
// left unreplayed keeps its claim.
func cursorSince(channels []string, resumeSince, began time.Time) time.Time {
	if !hasPattern(channels) {
		return time.Time{}
	}
	if !resumeSince.IsZero() && resumeSince.Before(began) {
		return resumeSince
	}
	return began
}

// hasPattern reports whether channels names a pattern.
func hasPattern(channels []string) bool {
	for _, c := range channels {
		if broker.IsPattern(c) {
			return true
		}
	}
	return false
}

// subscribe handles GET /sub/{channels}, negotiating the transport.
func (s *Server) subscribe(w http.ResponseWriter, r *http.Request) error {
	channels, err := broker.ParseChannelList(r.PathValue("channels"))
	if err != nil {
		return err
	}
	opts := broker.SubscribeOptions{Channels: channels, QueueSize: s.opts.QueueSize}
	if err := parseResume(r, &opts); err != nil {
		return err
	}
	id, err := s.identity(r)
	if err != nil {
		return err
	}
	if err := s.door.CheckSubscribe(s.caller(r, id), channels); err != nil {
		return err
	}
	release, err := s.connSlot(r)
	if err != nil {
		return err
	}
	if websocket.IsWebSocketUpgrade(r) {
		return s.serveWebSocket(w, r, id, &opts, release)
	}
	defer func() {
		if release != nil { // not handed to an asynchronous session
			release()
		}
	}()
	q := r.URL.Query()
	var enc encoder
	var wait time.Duration
	if q.Has("poll") {
		wait = 30 * time.Second
		if v := q.Get("poll"); v != "" && v != "1" && v != "true" {
			d, err := time.ParseDuration(v)
			if err != nil || d < 0 {
				return errorf(http.StatusBadRequest, CodeInvalidParameter, "poll must be a duration such as 30s")
			}
			wait = min(d, s.opts.MaxPoll)
		}
		enc = &pollEncoder{}
	} else if enc, err = negotiate(r, &opts); err != nil {
		return err
	}
	// The broker's time before the subscription starts: channels that
	// appear later are replayed from it when the client resumes.
	began := time.Now()
	// An HTTP/1 stream's connection is hijacked and served asynchronously;
	// long-polls and HTTP/2 streams keep this goroutine.
	_, poll := enc.(*pollEncoder)
	async := r.ProtoMajor == 1 && !poll
	ss := newSession(s, enc, nil, async)
	opts.OnReady = ss.signal
	sub, err := s.door.Subscribe(r.Context(), s.caller(r, id), opts)
	if err != nil {
		return err
	}
	ss.addSub("", sub)
	h := w.Header()
	h.Set("Cache-Control", "no-cache")
	h.Set("Pushctl-Time", began.UTC().Format(time.RFC3339Nano))
	since := cursorSince(channels, opts.Since, began)
	if pe, ok := enc.(*pollEncoder); ok {
		return s.longPoll(w, r, ss, sub, pe, since, wait)
	}
	h.Set("Content-Type", contentType(enc))
	h.Set("X-Accel-Buffering", "no")
	if start := sub.Start(); len(start) > 0 || !since.IsZero() {
		// Where this stream starts: a client that loses the connection
		// before its first message resumes from here.
		h.Set("Pushctl-Cursor", broker.FormatResume(start, since))
	}
	if r.Method == http.MethodHead {
		ss.closeSubs() // the headers say where a stream would start
		w.WriteHeader(http.StatusOK)
		return nil
	}
	if !s.enter() {
		ss.closeSubs()
		return broker.ErrClosed // 503 shutting_down: resume elsewhere or later
	}
	cw, err := s.openStream(w, r, async)
	if err != nil {
		ss.closeSubs()
		s.conns.Done()
		return nil
	}
	t := enc.transport()
	s.metrics.connections[t].Add(1)
	ss.w = cw
	// Only SSE over several channels writes the cursor as it goes.
	se, ok := enc.(*sseEncoder)
	ss.trackCursor = ok && !se.single
	ss.startCursor(sub, since)
	ss.setIdentity(id)
	end := func() {
		s.metrics.connections[t].Add(-1)
		s.conns.Done()
	}
	if async {
		ss.onEnd = []func(){release, end}
		release = nil
		ss.serveAsync(cw.Conn, discardInput, s.streamWheel)
		return nil
	}
	defer end()
	ss.finish(ss.run(r.Context().Done(), s.opts.Keepalive, 0))
	return nil
}

// discardInput reads and drops what a stream's peer sends (usually
// nothing); the input's end tells that the peer went away.
func discardInput(in *connrt.Input) bool {
	var buf [512]byte
	for {
		_, err := in.Read(buf[:])
		if err == connrt.ErrWouldBlock {
			return true
		}
		if err != nil {
			return false
		}
	}
}

// openStream starts a streaming response with the headers set on w. An
// HTTP/1 connection is hijacked (hijack set) so that the subscribe loop's
// writer owns it (and knows what a stalled write left unwritten); HTTP/2
// streams go through w.
func (s *Server) openStream(w http.ResponseWriter, r *http.Request, hijack bool) (*connrt.Writer, error) {
	rc := http.NewResponseController(w)
	if !hijack {
		w.WriteHeader(http.StatusOK)
		if err := rc.Flush(); err != nil {
			return nil, err
		}
		return &connrt.Writer{RW: w, RC: rc, Timeout: s.opts.WriteTimeout}, nil
	}
	conn, _, err := rc.Hijack()
	if err != nil {
		return nil, err
	}
	conn.SetDeadline(time.Time{})
	// Nothing of the HTTP server's (request, buffers) is kept.
	cw := &connrt.Writer{Conn: conn, Timeout: s.opts.WriteTimeout}
	cw.Chunked = r.ProtoAtLeast(1, 1)
	head := []byte("HTTP/1.1 200 OK\r\n")
	if !cw.Chunked {
		head = []byte("HTTP/1.0 200 OK\r\n")
	}
	hb := &strings.Builder{}
	w.Header().Write(hb)
	head = append(head, hb.String()...)
	head = append(head, "Date: "...)
	head = time.Now().UTC().AppendFormat(head, http.TimeFormat)
	if cw.Chunked {
		head = append(head, "\r\nTransfer-Encoding: chunked"...)
	}
	head = append(head, "\r\nConnection: close\r\n\r\n"...)
	conn.SetWriteDeadline(time.Now().Add(s.opts.WriteTimeout))
	if _, err := conn.Write(head); err != nil {
		conn.Close()
		return nil, err
	}
	return cw, nil
}

func (s *Server) websocketOnly(w http.ResponseWriter, r *http.Request) error {
	if !websocket.IsWebSocketUpgrade(r) {
		return errorf(http.StatusBadRequest, CodeInvalidParameter, "/ws takes a WebSocket upgrade; see docs/websocket.md")
	}
	id, err := s.identity(r)
	if err != nil {
		return err
	}
	release, err := s.connSlot(r)
	if err != nil {
		return err
	}
	return s.serveWebSocket(w, r, id, nil, release)
}

func negotiate(r *http.Request, opts *broker.SubscribeOptions) (encoder, error) {
	format := r.URL.Query().Get("format")
	if format == "" {
		accept := r.Header.Get("Accept")
		switch {
		case strings.Contains(accept, "text/event-stream"):
			format = "sse"
		case strings.Contains(accept, "application/x-ndjson"), strings.Contains(accept, "application/ndjson"),
			strings.Contains(accept, "application/jsonl"):
			format = "ndjson"
		default:
			format = "raw"
		}
	}
	single := len(opts.Channels) == 1 && !broker.IsPattern(opts.Channels[0])
	switch format {
	case "sse":
		q := r.URL.Query()
		return &sseEncoder{single: single, raw: q.Get("data") == "raw", plain: q.Get("onmessage") == "1"}, nil
	case "ndjson", "json":
		return ndjsonEncoder{}, nil
	case "raw", "lines":
		return rawEncoder{tagged: !single}, nil
	}
	return nil, errorf(http.StatusBadRequest, CodeInvalidParameter, "format %q: want sse, ndjson or raw", format)
}

func contentType(enc encoder) string {
	switch enc.(type) {
	case *sseEncoder:
		return "text/event-stream"
	case ndjsonEncoder:
		return "application/x-ndjson"
	}
	return "text/plain; charset=utf-8"
}

// endLine is the error line that ends an NDJSON stream, saying why (the
// client can resume from its last id).
func endLine(err error) []byte {
	b := wire.AppendError(nil, "", asError(err))
	return append(b, '\n')
}

type ndjsonEncoder struct{}

func (ndjsonEncoder) transport() int                                         { return tNDJSON }
func (ndjsonEncoder) start(*connrt.Batch, *session)                          {}
func (ndjsonEncoder) message(b *connrt.Batch, _ *session, m *broker.Message) { b.Add(wire.JSON(m)) }
func (ndjsonEncoder) gap(b *connrt.Batch, _ *session, g *broker.Gap)         { b.Add(wire.Gap(g)) }
func (ndjsonEncoder) keepalive(b *connrt.Batch) bool                         { b.Add(newline); return true }
func (ndjsonEncoder) dropped(*connrt.Batch, string, error) bool              { return false }
func (ndjsonEncoder) end(_ *session, err error) []byte                       { return endIf(err, endLine) }

var newline = []byte("\n")

// endIf returns f(err) for reasons worth telling the client.
func endIf(err error, f func(error) []byte) []byte {
	if err == nil || errorsIsPeer(err) {
		return nil
	}
	return f(err)
}

func errorsIsPeer(err error) bool {
	c := reasonCode(err)
	return c == "client_closed" || c == "write_error"
}

type rawEncoder struct{ tagged bool }

func (rawEncoder) transport() int                { return tRaw }
func (rawEncoder) start(*connrt.Batch, *session) {}
func (e rawEncoder) message(b *connrt.Batch, _ *session, m *broker.Message) {
	if e.tagged {
		b.Add(wire.RawTagged(m))
	} else {
		b.Add(wire.Raw(m))
	}
}
func (rawEncoder) gap(*connrt.Batch, *session, *broker.Gap)  {}
func (rawEncoder) keepalive(*connrt.Batch) bool              { return false }
func (rawEncoder) dropped(*connrt.Batch, string, error) bool { return false }
func (rawEncoder) end(*session, error) []byte                { return nil }

// sseEncoder writes Server-Sent Events. The id of each event resumes the
// subscription via Last-Event-ID: the message id for one channel, the
// session's resume cursor (positions and, for patterns, a time) otherwise.
type sseEncoder struct {
	single bool
	raw    bool
	// plain sends every message as the default event (the name stays in
	// the envelope), for clients that cannot know event names in advance.
	plain bool
	id    []byte
}

func (*sseEncoder) transport() int { return tSSE }

// start says where the stream starts, as an id (so a browser resumes from
// there even if it loses the stream before the first message), and in
// plain mode (pushctl.js) also as a pushctl-start event it can read.
func (e *sseEncoder) start(b *connrt.Batch, ss *session) {
	b.Add([]byte("retry: 2000\n: connected\n\n"))
	cur := ss.resume()
	if e.single {
		for _, p := range ss.cursor {
			cur = p.String()
		}
	}
	if cur == "" {
		return
	}
	b.AddCopy(append(append([]byte("id: "), cur...), '\n'))
	if e.plain {
		b.AddCopy(sseEvent("pushctl-start", []byte(cur)))
	} else {
		b.Add(newline) // an id alone dispatches no event
	}
}

func (e *sseEncoder) writeID(b *connrt.Batch, ss *session, p broker.Position) {
	e.id = append(e.id[:0], "id: "...)
	if e.single {
		e.id = append(e.id, p.Epoch...)
		e.id = append(e.id, '-')
		e.id = strconv.AppendUint(e.id, p.Seq, 10)
	} else {
		e.id = append(e.id, ss.resume()...)
	}
	e.id = append(e.id, '\n')
	b.AddCopy(e.id)
}

func (e *sseEncoder) message(b *connrt.Batch, ss *session, m *broker.Message) {
	e.writeID(b, ss, m.Position())
	switch {
	case e.raw:
		b.Add(wire.SSERaw(m))
	case e.plain:
		b.Add(wire.SSEPlain(m))
	default:
		b.Add(wire.SSE(m))
	}
}

func (e *sseEncoder) gap(b *connrt.Batch, ss *session, g *broker.Gap) {
	e.writeID(b, ss, g.To)
	j := wire.Gap(g)
	b.AddCopy(sseEvent("pushctl-gap", j[:len(j)-1]))
}

func (*sseEncoder) keepalive(b *connrt.Batch) bool            { b.Add([]byte(": keepalive\n\n")); return true }
func (*sseEncoder) dropped(*connrt.Batch, string, error) bool { return false }
func (*sseEncoder) end(_ *session, err error) []byte {
	return endIf(err, func(err error) []byte {
		j := endLine(err)
		return sseEvent("pushctl-error", j[:len(j)-1])
	})
}

func sseEvent(name string, data []byte) []byte {
	b := make([]byte, 0, len(name)+len(data)+20)
	b = append(b, "event: "...)
	b = append(b, name...)
	b = append(b, "\ndata: "...)
	b = append(b, data...)
	return append(b, "\n\n"...)
}

// pollEncoder writes one long-poll reply: {"events":[…],"cursor":"…"}.
// The events are those of the first batch, in publish order; the cursor
// resumes after them, with the time for channels that appear later.
type pollEncoder struct{ n int }

func (*pollEncoder) transport() int                { return tPoll }
func (*pollEncoder) start(*connrt.Batch, *session) {}
func (e *pollEncoder) item(b *connrt.Batch, j []byte) {
	if e.n == 0 {
		b.Add([]byte(`{"events":[`))
	} else {
		b.Add([]byte{','})
	}
	e.n++
	b.Add(j[:len(j)-1])
}
func (e *pollEncoder) message(b *connrt.Batch, _ *session, m *broker.Message) {
	e.item(b, wire.JSON(m))
}
func (e *pollEncoder) gap(b *connrt.Batch, _ *session, g *broker.Gap) { e.item(b, wire.Gap(g)) }
func (*pollEncoder) keepalive(*connrt.Batch) bool                     { return false }
func (*pollEncoder) dropped(*connrt.Batch, string, error) bool        { return false }
func (e *pollEncoder) end(ss *session, err error) []byte {
	var out []byte
	if e.n == 0 {
		out = append(out, `{"events":[`...)
	}
	out = append(out, `],"cursor":`...)
	out = wire.AppendString(out, ss.resume())
	if err != nil {
		out = append(out, `,"error":`...)
		out = wire.AppendErrorObject(out, asError(err))
	}
	return append(out, "}\n"...)
}

// longPoll answers with what is new since the request's position, waiting
// up to wait for the first message. The reply's cursor resumes.
func (s *Server) longPoll(w http.ResponseWriter, r *http.Request, ss *session, sub *broker.Subscription, enc *pollEncoder, since time.Time, wait time.Duration) error {
	s.metrics.connections[tPoll].Add(1)
	defer s.metrics.connections[tPoll].Add(-1)
	w.Header().Set("Content-Type", "application/json")
	cw := &connrt.Writer{RW: w, RC: http.NewResponseController(w), Timeout: s.opts.WriteTimeout}
	ss.w = cw
	ss.trackCursor, ss.oneShot = true, true
	ss.startCursor(sub, since)
	// poll=0s answers at once with what is there (and the cursor).
	reason := ss.run(r.Context().Done(), 0, max(wait, time.Nanosecond))
	ss.closeSubs()
	if errorsIsPeer(reason) {
		return nil // the client is gone
	}
	if reason != nil {
		s.metrics.disconnected(tPoll, reasonCode(reason))
		if enc.n == 0 {
			return reason // nothing written yet: an ordinary error reply
		}
	}
	return cw.Write(net.Buffers{enc.end(ss, reason)})
}
