package server

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"math/rand/v2"
	"net/http"
	"strings"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/door"
	"github.com/pushctl/pushctl/internal/wire"
)

// Reading a Durable Stream: catch-up GETs, long-polls and SSE. Catch-up
// reads the channel's history through the door (as the caller, who needs
// the grant to subscribe); live reads subscribe to the channel, and to
// its state channel (as the broker, not counted as a subscriber) to see
// the stream close.

// Bounds of reads.
const (
	// streamChunk is about the most data one catch-up reply carries.
	streamChunk = 4 << 20
	// streamSSELife is how long an SSE reply stays open (the protocol
	// asks for about a minute, so CDNs can collapse readers).
	streamSSELife = 60 * time.Second
)

// chunk is one read's worth of a stream.
type chunk struct {
	msgs     []*broker.Message
	next     broker.Position // the offset after the chunk
	upToDate bool            // the chunk reaches the tail
	closed   bool            // and the stream is closed there
}

// readChunk reads what follows from (the start when start is set) up to
// tail, at most about streamChunk bytes, as c.
func (s *Server) readChunk(ctx context.Context, c door.Caller, sr streamRequest, st *streamState, from broker.Position, start bool, tail broker.Position) (chunk, error) {
	req := broker.ReadRequest{Last: -1}
	if !start {
		req = broker.ReadRequest{From: from, Resume: true}
	}
	res, err := s.door.ReadHistory(ctx, c, sr.ch, req)
	if errors.Is(err, broker.ErrInvalidPosition) {
		return chunk{}, errorf(http.StatusBadRequest, CodeInvalidPosition, "offset %s is beyond the stream's tail %s", st.offset(from), st.offset(tail))
	}
	if errors.Is(err, broker.ErrNotFound) {
		return chunk{}, noStream(sr.path)
	}
	if err != nil {
		return chunk{}, err
	}
	ck := chunk{next: from}
	if start {
		ck.next = broker.Position{Epoch: tail.Epoch}
		if len(res.Events) == 0 {
			ck.next = tail
		}
	}
	size := 0
	for _, ev := range res.Events {
		if ev.Gap != nil {
			return chunk{}, errorf(http.StatusGone, wire.CodeOffsetGone, "offset %s is no longer retained (or is of another stream); read from -1", st.offset(from))
		}
		m := ev.Msg
		if m.Seq > tail.Seq || (size > 0 && size+len(m.Data) > streamChunk) {
			break
		}
		ck.msgs = append(ck.msgs, m)
		ck.next = m.Position()
		size += len(m.Data)
	}
	if len(ck.msgs) == 0 && start {
		ck.next = tail
	}
	ck.upToDate = ck.next.Seq >= tail.Seq
	ck.closed = st.Closed && ck.upToDate
	return ck, nil
}

// body is the chunk's bytes as the stream's content type wants them: in
// JSON mode a JSON array of its messages.
func (ck chunk) body(st *streamState) []byte {
	var b bytes.Buffer
	if st.isJSON() {
		b.WriteByte('[')
		for i, m := range ck.msgs {
			if i > 0 {
				b.WriteByte(',')
			}
			if m.Kind == broker.KindJSON {
				b.Write(m.Data)
			} else {
				b.Write(wire.AppendString(nil, string(m.Data)))
			}
		}
		b.WriteByte(']')
		return b.Bytes()
	}
	for _, m := range ck.msgs {
		b.Write(m.Data)
	}
	return b.Bytes()
}

// streamRead handles GET: catch-up, long-poll or SSE.
func (s *Server) streamRead(w http.ResponseWriter, r *http.Request, sr streamRequest) error {
	q := r.URL.Query()
	live := q.Get("live")
	if live != "" && live != "long-poll" && live != "sse" {
		return errorf(http.StatusBadRequest, CodeInvalidParameter, "live=%q: want long-poll or sse", live)
	}
	offset, hasOffset := q.Get("offset"), q.Has("offset")
	if live != "" && !hasOffset {
		return errorf(http.StatusBadRequest, CodeInvalidParameter, "live=%s needs an offset (-1 for the start, now for the tail)", live)
	}
	if vs := q["offset"]; len(vs) > 1 {
		return errorf(http.StatusBadRequest, CodeInvalidParameter, "one offset per request")
	}
	var from broker.Position
	start, now := !hasOffset || offset == wire.OffsetStart, offset == wire.OffsetNow
	if !start && !now {
		p, err := wire.ParseOffset(offset)
		if err != nil {
			return errorf(http.StatusBadRequest, CodeInvalidPosition, "%v", err)
		}
		from = p
	}
	ctx := r.Context()
	// Reading the stream's state needs the grant to read the stream.
	if err := s.door.CheckSubscribe(sr.c, []string{sr.ch}); err != nil {
		return err
	}
	st, err := s.existingStream(ctx, sr)
	if err != nil {
		return err
	}
	if st.TTL != nil {
		s.streams.touch(sr.ch, time.Now())
	}
	tail, err := s.streamTail(ctx, sr, st)
	if err != nil {
		return err
	}
	if now {
		from = tail
	} else if !start {
		if from.Epoch != st.Epoch {
			return errorf(http.StatusGone, wire.CodeOffsetGone, "offset %s is of an earlier stream at this path; read from -1", offset)
		}
		from.Epoch = tail.Epoch
	}
	w.Header().Set("Content-Type", st.ContentType)
	if live != "" {
		// A live read is a long-lived connection: it counts against the
		// address's limit, and shutdown ends its wait.
		release, err := s.connSlot(r)
		if err != nil {
			return err
		}
		defer release()
	}
	switch live {
	case "sse":
		return s.streamSSE(w, r, sr, st, from, start, tail)
	case "long-poll":
		return s.streamPoll(w, r, sr, st, from, start, tail, now)
	}
	if now {
		ck := chunk{next: tail, upToDate: true, closed: st.Closed}
		w.Header().Set("Cache-Control", "no-store")
		return s.writeChunk(w, r, st, ck, "", false)
	}
	ck, err := s.readChunk(ctx, sr.c, sr, st, from, start, tail)
	if err != nil {
		return err
	}
	return s.writeChunk(w, r, st, ck, etag(sr, st, from, start, ck), false)
}

// etag names a catch-up reply: the stream, where it starts and ends, and
// whether the stream was closed there.
func etag(sr streamRequest, st *streamState, from broker.Position, start bool, ck chunk) string {
	f := wire.OffsetStart
	if !start {
		f = st.offset(from)
	}
	t := `"` + st.Epoch + ":" + f + ":" + st.offset(ck.next)
	if ck.closed {
		t += ":c"
	}
	return t + `"`
}

// writeChunk writes a 200 reply carrying ck.
func (s *Server) writeChunk(w http.ResponseWriter, r *http.Request, st *streamState, ck chunk, tag string, live bool) error {
	h := w.Header()
	h.Set(wire.HeaderStreamNextOffset, st.offset(ck.next))
	if ck.upToDate {
		h.Set(wire.HeaderStreamUpToDate, "true")
	}
	if ck.closed {
		h.Set(wire.HeaderStreamClosed, "true")
	}
	if live || !ck.closed {
		h.Set(wire.HeaderStreamCursor, wire.StreamCursor(time.Now(), r.URL.Query().Get("cursor"), rand.Float64()))
	}
	if tag != "" {
		h.Set("ETag", tag)
		if h.Get("Cache-Control") == "" {
			h.Set("Cache-Control", cacheControl(r))
		}
		if inm := r.Header.Get("If-None-Match"); inm != "" && etagMatch(inm, tag) {
			w.WriteHeader(http.StatusNotModified)
			return nil
		}
	}
	body := ck.body(st)
	w.WriteHeader(http.StatusOK)
	_, err := w.Write(body)
	return err
}

// cacheControl is a catch-up reply's: shared caches may keep it unless
// the request carried credentials.
func cacheControl(r *http.Request) string {
	if r.Header.Get("Authorization") != "" || r.URL.Query().Has("token") {
		return "private, max-age=60, stale-while-revalidate=300"
	}
	return "public, max-age=60, stale-while-revalidate=300"
}

// etagMatch reports whether an If-None-Match list names tag.
func etagMatch(list, tag string) bool {
	for _, t := range strings.Split(list, ",") {
		t = strings.TrimSpace(t)
		if t == "*" || strings.TrimPrefix(t, "W/") == tag {
			return true
		}
	}
	return false
}

// waiter wakes a live read when the stream gets data or a new state.
type waiter struct {
	notify     chan struct{}
	data, meta *broker.Subscription
	buf        []broker.Event
}

// watch subscribes to the stream's channel after from (as the caller,
// through the door) and to its state channel (as the broker).
func (s *Server) watch(ctx context.Context, sr streamRequest, from broker.Position) (*waiter, error) {
	wt := &waiter{notify: make(chan struct{}, 1)}
	var err error
	wt.data, err = s.door.Subscribe(ctx, sr.c, broker.SubscribeOptions{Channels: []string{sr.ch},
		From: broker.Cursor{sr.ch: from}, Notify: wt.notify, QueueSize: 1024})
	if err != nil {
		return nil, err
	}
	wt.meta, err = s.door.Subscribe(ctx, door.System, broker.SubscribeOptions{Channels: []string{wire.StateChannel(sr.ch)},
		Notify: wt.notify, Internal: true, QueueSize: 16})
	if err != nil {
		wt.data.Close()
		return nil, err
	}
	return wt, nil
}

func (wt *waiter) close() {
	wt.data.Close()
	wt.meta.Close()
}

// wait returns when something may have changed (true), or when the
// deadline or ctx ends (false). A subscription that ended (overflowed,
// the stream deleted) counts as a change: the caller reads again.
func (wt *waiter) wait(ctx context.Context, deadline <-chan time.Time, stop <-chan struct{}) (changed bool) {
	for {
		n := 0
		for _, sub := range []*broker.Subscription{wt.data, wt.meta} {
			evs, err := sub.TryNext(wt.buf[:0])
			n += len(evs)
			if err != nil {
				return true
			}
		}
		if n > 0 {
			return true
		}
		select {
		case <-wt.notify:
		case <-deadline:
			return false
		case <-ctx.Done():
			return false
		case <-stop:
			return false
		}
	}
}

// reload re-reads the stream's state and tail after a change.
func (s *Server) reload(ctx context.Context, sr streamRequest) (*streamState, broker.Position, error) {
	st, err := s.existingStream(ctx, sr)
	if err != nil {
		return nil, broker.Position{}, err
	}
	tail, err := s.streamTail(ctx, sr, st)
	return st, tail, err
}

// streamPoll handles live=long-poll: what follows the offset, waiting up
// to Options.StreamPollWait for it to come.
func (s *Server) streamPoll(w http.ResponseWriter, r *http.Request, sr streamRequest, st *streamState, from broker.Position, start bool, tail broker.Position, now bool) error {
	ctx := r.Context()
	ck, err := s.readChunk(ctx, sr.c, sr, st, from, start, tail)
	if err != nil {
		return err
	}
	if len(ck.msgs) == 0 && !ck.closed {
		wt, err := s.watch(ctx, sr, ck.next)
		if err != nil {
			return err
		}
		defer wt.close()
		timer := time.NewTimer(s.opts.StreamPollWait)
		defer timer.Stop()
		for len(ck.msgs) == 0 && !ck.closed {
			if !wt.wait(ctx, timer.C, s.stopping) {
				break
			}
			if st, tail, err = s.reload(ctx, sr); err != nil {
				return err
			}
			if ck, err = s.readChunk(ctx, door.System, sr, st, ck.next, false, tail); err != nil {
				return err
			}
		}
	}
	if len(ck.msgs) > 0 {
		return s.writeChunk(w, r, st, ck, "", true)
	}
	h := w.Header()
	h.Del("Content-Type")
	h.Set(wire.HeaderStreamNextOffset, st.offset(ck.next))
	h.Set(wire.HeaderStreamUpToDate, "true")
	if ck.closed {
		h.Set(wire.HeaderStreamClosed, "true")
	} else {
		h.Set(wire.HeaderStreamCursor, wire.StreamCursor(time.Now(), r.URL.Query().Get("cursor"), rand.Float64()))
	}
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// streamSSE handles live=sse: data events, each followed by a control
// event, from the offset on, for about a minute or until the stream
// closes.
func (s *Server) streamSSE(w http.ResponseWriter, r *http.Request, sr streamRequest, st *streamState, from broker.Position, start bool, tail broker.Position) error {
	ctx := r.Context()
	ck, err := s.readChunk(ctx, sr.c, sr, st, from, start, tail)
	if err != nil {
		return err
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	text := st.isText()
	if !text {
		h.Set(wire.HeaderSSEDataEncoding, "base64")
	}
	rc := http.NewResponseController(w)
	w.WriteHeader(http.StatusOK)
	cursor := r.URL.Query().Get("cursor")
	var wt *waiter
	defer func() {
		if wt != nil {
			wt.close()
		}
	}()
	end := time.NewTimer(streamSSELife)
	defer end.Stop()
	for {
		var out bytes.Buffer
		if len(ck.msgs) > 0 {
			writeSSEData(&out, ck.body(st), text)
		}
		ctl := wire.StreamControl{NextOffset: st.offset(ck.next), UpToDate: ck.upToDate, Closed: ck.closed}
		if !ck.closed {
			cursor = wire.StreamCursor(time.Now(), cursor, rand.Float64())
			ctl.Cursor = cursor
		}
		out.WriteString("event: control\ndata:")
		out.Write(ctl.JSON())
		out.WriteString("\n\n")
		if _, err := w.Write(out.Bytes()); err != nil {
			return nil
		}
		if err := rc.Flush(); err != nil {
			return nil
		}
		if ck.closed {
			return nil
		}
		prev := ck
		for {
			if !prev.upToDate {
				if ck, err = s.readChunk(ctx, door.System, sr, st, prev.next, false, tail); err != nil {
					return nil
				}
				break
			}
			if wt == nil {
				if wt, err = s.watch(ctx, sr, prev.next); err != nil {
					return nil
				}
			}
			if !wt.wait(ctx, end.C, s.stopping) {
				return nil
			}
			if wt.data.Err() != nil { // overflowed or deleted: watch again
				wt.close()
				wt = nil
			}
			if st, tail, err = s.reload(ctx, sr); err != nil {
				return nil
			}
			if ck, err = s.readChunk(ctx, door.System, sr, st, prev.next, false, tail); err != nil {
				return nil
			}
			if len(ck.msgs) > 0 || ck.closed {
				break
			}
		}
	}
}

// writeSSEData writes one SSE data event: text line by line (a CR, LF
// or CRLF in the data ends a line, so nothing in it can end the event),
// else base64.
func writeSSEData(out *bytes.Buffer, body []byte, text bool) {
	out.WriteString("event: data\n")
	if !text {
		out.WriteString("data:")
		out.WriteString(base64.StdEncoding.EncodeToString(body))
		out.WriteString("\n\n")
		return
	}
	for {
		line := body
		i := bytes.IndexAny(body, "\r\n")
		if i >= 0 {
			line = body[:i]
		}
		out.WriteString("data:")
		if len(line) > 0 && line[0] == ' ' {
			out.WriteByte(' ') // a reader strips one space after the colon
		}
		out.Write(line)
		out.WriteByte('\n')
		if i < 0 {
			break
		}
		if body[i] == '\r' && i+1 < len(body) && body[i+1] == '\n' {
			i++
		}
		body = body[i+1:]
	}
	out.WriteByte('\n')
}
