package server

import (
	"bufio"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gorilla/websocket"
	"github.com/pushctl/pushctl/internal/auth"
	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/wire"
)

// parseResume fills the replay part of opts from a request: the
// Last-Event-ID header (or last_event_id), since and last.
func parseResume(r *http.Request, opts *broker.SubscribeOptions) error {
	q := r.URL.Query()
	id := r.Header.Get("Last-Event-ID")
	if id == "" {
		id = q.Get("last_event_id")
	}
	if id != "" {
		c, err := broker.ParseCursor(id, opts.Channels)
		if err != nil {
			return err
		}
		opts.From = c
		return nil
	}
	if v := q.Get("since"); v != "" {
		if err := parseSince(v, opts, time.Now()); err != nil {
			return err
		}
	}
	// since_time covers the channels a cursor does not name: those a
	// pattern subscription had not seen yet when its connection dropped.
	if v := q.Get("since_time"); v != "" {
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			return errorf(http.StatusBadRequest, CodeInvalidPosition, "since_time %q: want an RFC 3339 time", v)
		}
		opts.Since = t
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
		c, err := broker.ParseCursor(v, opts.Channels)
		if err != nil {
			return err
		}
		opts.From = c
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
		"since %q: want all, a message id, ch=<id>,…, an RFC 3339 time or a duration such as 5m", v)
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
	for _, ch := range channels {
		if err := s.allow(id, auth.Subscribe, ch); err != nil {
			return err
		}
	}
	release, err := s.connSlot(r)
	if err != nil {
		return err
	}
	defer release()
	if websocket.IsWebSocketUpgrade(r) {
		return s.serveWebSocket(w, r, id, &opts)
	}
	q := r.URL.Query()
	if q.Has("poll") {
		return s.longPoll(w, r, &opts)
	}
	enc, err := negotiate(r, &opts)
	if err != nil {
		return err
	}
	// The broker's time before the subscription starts: a client resuming
	// a pattern subscription passes it back as since_time.
	w.Header().Set("Pushctl-Time", time.Now().UTC().Format(time.RFC3339Nano))
	sub, err := s.b.Subscribe(r.Context(), opts)
	if err != nil {
		return err
	}
	defer sub.Close()
	s.pumpStream(w, r, sub, enc, expiry(r.Context(), id))
	return nil
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
	defer release()
	return s.serveWebSocket(w, r, id, nil)
}

// streamEncoder writes one transport's framing; the subscribe loop is
// shared by all of them.
type streamEncoder interface {
	transport() int
	contentType() string
	start(bw *bufio.Writer)
	message(bw *bufio.Writer, m *broker.Message)
	gap(bw *bufio.Writer, g *broker.Gap)
	// keepalive writes something harmless, if the format has such a thing.
	keepalive(bw *bufio.Writer) bool
	end(bw *bufio.Writer, err error)
}

func negotiate(r *http.Request, opts *broker.SubscribeOptions) (streamEncoder, error) {
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
		return &sseEncoder{single: single, raw: r.URL.Query().Get("data") == "raw", cursor: broker.Cursor{}}, nil
	case "ndjson", "json":
		return ndjsonEncoder{}, nil
	case "raw", "lines":
		return rawEncoder{tagged: !single}, nil
	}
	return nil, errorf(http.StatusBadRequest, CodeInvalidParameter, "format %q: want sse, ndjson or raw", format)
}

// pumpStream is the subscribe loop of every HTTP streaming transport.
func (s *Server) pumpStream(w http.ResponseWriter, r *http.Request, sub *broker.Subscription, enc streamEncoder, expired <-chan struct{}) {
	s.conns.Add(1)
	defer s.conns.Done()
	t := enc.transport()
	s.metrics.connections[t].Add(1)
	defer s.metrics.connections[t].Add(-1)
	h := w.Header()
	h.Set("Content-Type", enc.contentType())
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	start := sub.Start()
	if len(start) > 0 {
		// Where this stream starts: a client that loses the connection
		// before its first message resumes from here.
		h.Set("Pushctl-Cursor", start.String())
	}
	if se, ok := enc.(*sseEncoder); ok && !se.single {
		for ch, p := range start {
			se.cursor[ch] = p
		}
	}
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	bw := bufio.NewWriterSize(w, 16<<10)
	flush := func() error {
		rc.SetWriteDeadline(time.Now().Add(s.opts.WriteTimeout))
		if err := bw.Flush(); err != nil {
			return err
		}
		return rc.Flush()
	}
	enc.start(bw)
	if flush() != nil {
		return
	}
	tick := time.NewTicker(s.opts.Keepalive)
	defer tick.Stop()
	var buf []broker.Event
	var times []time.Time
	for {
		evs, err := sub.TryNext(buf)
		if len(evs) > 0 {
			times = times[:0]
			for _, e := range evs {
				if e.Gap != nil {
					enc.gap(bw, e.Gap)
				} else {
					enc.message(bw, e.Msg)
					times = append(times, e.Msg.Time)
				}
			}
			clear(evs) // drop references for the garbage collector
			buf = evs
			if flush() != nil {
				return
			}
			s.metrics.delivered(t, times, time.Now())
			continue
		}
		if err != nil {
			enc.end(bw, err)
			flush()
			return
		}
		select {
		case <-sub.Ready():
		case <-tick.C:
			if enc.keepalive(bw) && flush() != nil {
				return
			}
		case <-r.Context().Done():
			return
		case <-s.stopping:
			enc.end(bw, broker.ErrClosed)
			flush()
			return
		case <-expired:
			s.limitHit("token_expired_live")
			enc.end(bw, errExpiredLive)
			flush()
			return
		}
	}
}

// endReason is the error frame sent when a stream ends for a reason the
// client should know (it can resume from its last id).
func endReason(err error) []byte {
	e := asError(err)
	b := []byte(`{"type":"error","code":`)
	b = wire.AppendString(b, e.Code)
	b = append(b, `,"message":`...)
	b = wire.AppendString(b, e.Message)
	return append(b, "}\n"...)
}

type ndjsonEncoder struct{}

func (ndjsonEncoder) transport() int                              { return tNDJSON }
func (ndjsonEncoder) contentType() string                         { return "application/x-ndjson" }
func (ndjsonEncoder) start(*bufio.Writer)                         {}
func (ndjsonEncoder) message(bw *bufio.Writer, m *broker.Message) { bw.Write(wire.JSON(m)) }
func (ndjsonEncoder) gap(bw *bufio.Writer, g *broker.Gap)         { bw.Write(wire.Gap(g)) }
func (ndjsonEncoder) keepalive(bw *bufio.Writer) bool             { bw.WriteByte('\n'); return true }
func (ndjsonEncoder) end(bw *bufio.Writer, err error)             { bw.Write(endReason(err)) }

type rawEncoder struct{ tagged bool }

func (rawEncoder) transport() int      { return tRaw }
func (rawEncoder) contentType() string { return "text/plain; charset=utf-8" }
func (rawEncoder) start(*bufio.Writer) {}
func (e rawEncoder) message(bw *bufio.Writer, m *broker.Message) {
	if e.tagged {
		bw.Write(wire.RawTagged(m))
	} else {
		bw.Write(wire.Raw(m))
	}
}
func (rawEncoder) gap(*bufio.Writer, *broker.Gap) {}
func (rawEncoder) keepalive(*bufio.Writer) bool   { return false }
func (rawEncoder) end(*bufio.Writer, error)       {}

// sseEncoder writes Server-Sent Events. The id of each event resumes the
// subscription via Last-Event-ID: the message id for one channel, a
// cursor naming every channel otherwise.
type sseEncoder struct {
	single bool
	raw    bool
	cursor broker.Cursor
}

func (*sseEncoder) transport() int      { return tSSE }
func (*sseEncoder) contentType() string { return "text/event-stream" }
func (*sseEncoder) start(bw *bufio.Writer) {
	bw.WriteString("retry: 2000\n: connected\n\n")
}

func (e *sseEncoder) writeID(bw *bufio.Writer, ch string, p broker.Position) {
	bw.WriteString("id: ")
	if e.single {
		bw.WriteString(p.String())
	} else {
		e.cursor[ch] = p
		if len(e.cursor) > broker.MaxCursorEntries {
			// Beyond the bound resume falls back to the newest channels.
			for name := range e.cursor {
				if name != ch {
					delete(e.cursor, name)
					break
				}
			}
		}
		bw.WriteString(e.cursor.String())
	}
	bw.WriteByte('\n')
}

func (e *sseEncoder) message(bw *bufio.Writer, m *broker.Message) {
	e.writeID(bw, m.Channel, m.Position())
	if e.raw {
		bw.Write(wire.SSERaw(m))
	} else {
		bw.Write(wire.SSE(m))
	}
}

func (e *sseEncoder) gap(bw *bufio.Writer, g *broker.Gap) {
	e.writeID(bw, g.Channel, g.To)
	bw.WriteString("event: pushctl-gap\ndata: ")
	j := wire.Gap(g)
	bw.Write(j[:len(j)-1])
	bw.WriteString("\n\n")
}

func (*sseEncoder) keepalive(bw *bufio.Writer) bool { bw.WriteString(": keepalive\n\n"); return true }
func (*sseEncoder) end(bw *bufio.Writer, err error) {
	bw.WriteString("event: pushctl-error\ndata: ")
	j := endReason(err)
	bw.Write(j[:len(j)-1])
	bw.WriteString("\n\n")
}

// longPoll answers with what is new since the request's position, waiting
// up to ?poll=DURATION for the first message. The reply's cursor resumes.
func (s *Server) longPoll(w http.ResponseWriter, r *http.Request, opts *broker.SubscribeOptions) error {
	wait := 30 * time.Second
	if v := r.URL.Query().Get("poll"); v != "" && v != "1" && v != "true" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return errorf(http.StatusBadRequest, CodeInvalidParameter, "poll must be a duration such as 30s")
		}
		wait = min(d, s.opts.MaxPoll)
	}
	sub, err := s.b.Subscribe(r.Context(), *opts)
	if err != nil {
		return err
	}
	defer sub.Close()
	s.metrics.connections[tPoll].Add(1)
	defer s.metrics.connections[tPoll].Add(-1)
	// The reply's cursor starts where the subscription started, so a poll
	// that times out empty still resumes without loss.
	cursor := sub.Start()
	timer := time.NewTimer(wait)
	defer timer.Stop()
	var evs []broker.Event
	for evs == nil {
		evs, err = sub.TryNext(nil)
		if evs != nil {
			break
		}
		if err != nil {
			return err
		}
		select {
		case <-sub.Ready():
		case <-timer.C:
			evs = []broker.Event{}
		case <-r.Context().Done():
			return nil
		case <-s.stopping:
			return broker.ErrClosed
		}
	}
	out := make([]byte, 0, 256)
	out = append(out, `{"events":[`...)
	for i, e := range evs {
		if i > 0 {
			out = append(out, ',')
		}
		var j []byte
		if e.Gap != nil {
			j = wire.Gap(e.Gap)
			cursor[e.Gap.Channel] = e.Gap.To
		} else {
			j = wire.JSON(e.Msg)
			cursor[e.Msg.Channel] = e.Msg.Position()
		}
		out = append(out, j[:len(j)-1]...)
	}
	out = append(out, `],"cursor":`...)
	out = wire.AppendString(out, cursor.String())
	out = append(out, "}\n"...)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-cache")
	if _, err = w.Write(out); err == nil {
		times := make([]time.Time, 0, len(evs))
		for _, e := range evs {
			if e.Msg != nil {
				times = append(times, e.Msg.Time)
			}
		}
		s.metrics.delivered(tPoll, times, time.Now())
	}
	return err
}
