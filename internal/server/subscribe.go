package server

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gorilla/websocket"
	"github.com/pushctl/pushctl/internal/broker"
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
		if err != nil {
			n = -1 // refused below, with the same message
		}
		if err := wire.CheckLast(n); err != nil {
			return err
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
	// The connection's slot first: it bounds what one address can make
	// the connect hook do, too.
	release, err := s.connSlot(r)
	if err != nil {
		return err
	}
	defer func() {
		if release != nil { // not handed to an asynchronous session
			release()
		}
	}()
	id, err := s.connectIdentity(r)
	if err != nil {
		if isHookRefusal(err) && websocket.IsWebSocketUpgrade(r) {
			return s.refuseUpgrade(w, r, asError(err))
		}
		return err
	}
	if err := s.door.CheckSubscribe(s.caller(r, id), channels); err != nil {
		return err
	}
	if websocket.IsWebSocketUpgrade(r) {
		rel := release
		release = nil
		return s.serveWebSocket(w, r, id, &opts, rel)
	}
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
	s.connOpened(ss)
	end := func() {
		s.connClosed(ss)
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

func (s *Server) websocketOnly(w http.ResponseWriter, r *http.Request) error {
	if !websocket.IsWebSocketUpgrade(r) {
		return errorf(http.StatusBadRequest, CodeInvalidParameter, "/ws takes a WebSocket upgrade; see docs/websocket.md")
	}
	release, err := s.connSlot(r)
	if err != nil {
		return err
	}
	id, err := s.connectIdentity(r)
	if err != nil {
		defer release()
		if isHookRefusal(err) {
			return s.refuseUpgrade(w, r, asError(err))
		}
		return err
	}
	return s.serveWebSocket(w, r, id, nil, release)
}

// isHookRefusal reports whether err is the connect hook's refusal (which a
// WebSocket gets as a close frame a browser can read).
func isHookRefusal(err error) bool {
	e := asError(err)
	return e.Code == wire.CodeHookDenied || e.Code == wire.CodeHookUnavailable
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
