package server

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/door"
	"github.com/pushctl/pushctl/internal/wire"
)

// The Durable Streams protocol at /v1/stream/{path} (docs/durable-streams.md):
// a stream is the pushctl channel wire.StreamChannel names, and every
// request passes the door like any other: creating and appending are
// publishes, reading is subscribing, deleting needs the grant to publish.
// This file holds the writes (PUT, POST, DELETE) and HEAD; streams_read.go
// the reads; streams_state.go the stream's state record.

// StreamsPrefix is where streams are served.
const StreamsPrefix = "/v1/stream/"

// streamRequest is a request's stream: its path, channel and caller.
type streamRequest struct {
	path  string
	ch    string
	c     door.Caller
	locks *lockSet // the stream locks a write holds
}

// serveStream dispatches a request for a stream.
func (s *Server) serveStream(w http.ResponseWriter, r *http.Request) error {
	h := w.Header()
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cross-Origin-Resource-Policy", "cross-origin")
	path := strings.TrimPrefix(r.URL.Path, StreamsPrefix)
	ch, err := wire.StreamChannel(path)
	if err != nil {
		return errorf(http.StatusBadRequest, CodeInvalidChannel, "%v", err)
	}
	sr := streamRequest{path: path, ch: ch}
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		id, err := s.connectIdentity(r)
		if err != nil {
			return err
		}
		sr.c = s.caller(r, id)
		if r.Method == http.MethodHead {
			return s.streamHead(w, r, sr)
		}
		return s.streamRead(w, r, sr)
	case http.MethodPut, http.MethodPost, http.MethodDelete:
		id, err := s.identity(r)
		if err != nil {
			return err
		}
		sr.c = s.caller(r, id)
		if err := s.door.CheckPublish(sr.c, ch); err != nil {
			return err
		}
		// Creating and deleting may touch other streams (a fork's source):
		// they take turns, so that holding several stream locks cannot
		// deadlock; appends hold their stream's lock only.
		if r.Method != http.MethodPost {
			s.streams.topo.Lock()
			defer s.streams.topo.Unlock()
		}
		sr.locks = &lockSet{s: &s.streams}
		defer sr.locks.unlockAll()
		sr.locks.lock(ch)
		switch r.Method {
		case http.MethodPut:
			return s.streamCreate(w, r, sr)
		case http.MethodPost:
			return s.streamAppend(w, r, sr)
		}
		return s.streamDelete(w, r, sr)
	}
	h.Set("Allow", "GET, HEAD, PUT, POST, DELETE, OPTIONS")
	return errorf(http.StatusMethodNotAllowed, CodeMethodNotAllowed, "method %s not allowed on a stream", r.Method)
}

// createdBefore answers a PUT (or fork) of a stream that exists with the
// same configuration: 200 with its headers, as when it was made.
func (s *Server) createdBefore(ctx context.Context, w http.ResponseWriter, sr streamRequest, st *streamState) error {
	tail, err := s.streamTail(ctx, sr, st)
	if err != nil {
		return err
	}
	s.streamHeaders(w, st, tail)
	w.WriteHeader(http.StatusOK)
	return nil
}

// tail is the stream's tail: the position of its last message (capped at
// its closing point).
func (s *Server) streamTail(ctx context.Context, sr streamRequest, st *streamState) (broker.Position, error) {
	info, err := s.door.Channel(ctx, sr.ch)
	if errors.Is(err, broker.ErrNotFound) {
		// The channel of an empty stream is forgotten when idle (in
		// memory): make it again. Offsets carry the stream's epoch, not
		// the channel's, so they stay valid.
		return s.door.CreateChannel(ctx, door.System, sr.ch)
	}
	if err != nil {
		return broker.Position{}, err
	}
	p := broker.Position{Epoch: info.Epoch, Seq: info.LastSeq}
	if st.Closed && st.ClosedAt < p.Seq {
		p.Seq = st.ClosedAt
	}
	return p, nil
}

// readStreamBody reads a write's body, bounded by the message size limit,
// as a publish's (readBody: a declared length read into a slice of that
// size; cut short, refused).
func (s *Server) readStreamBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	if t := s.opts.Limits.ReadTimeout; t > 0 {
		http.NewResponseController(w).SetReadDeadline(time.Now().Add(t))
	}
	max := s.door.MaxMessageSize()
	body, err := readBody(http.MaxBytesReader(w, r.Body, max), r.ContentLength, max)
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return nil, door.TooLarge(mbe.Limit+1, s.door.MaxMessageSize())
	}
	return body, err
}

// splitBody turns a write's body into the stream's messages: in JSON
// mode one per element of a top-level array (or the one value), else the
// bytes as one message.
func splitBody(st *streamState, body []byte, put bool) ([][]byte, error) {
	if len(body) == 0 {
		return nil, nil
	}
	if !st.isJSON() {
		return [][]byte{body}, nil
	}
	if !json.Valid(body) {
		return nil, errorf(http.StatusBadRequest, CodeInvalidJSON, "the body is not valid JSON, which an application/json stream takes")
	}
	trimmed := strings.TrimSpace(string(body))
	if !strings.HasPrefix(trimmed, "[") {
		return [][]byte{[]byte(trimmed)}, nil
	}
	var elems []json.RawMessage
	if err := json.Unmarshal(body, &elems); err != nil {
		return nil, errorf(http.StatusBadRequest, CodeInvalidJSON, "%v", err)
	}
	if len(elems) == 0 && !put {
		return nil, errorf(http.StatusBadRequest, CodeInvalidJSON, "an empty JSON array appends nothing")
	}
	out := make([][]byte, len(elems))
	for i, e := range elems {
		out[i] = e
	}
	return out, nil
}

// appendMessages publishes msgs to the stream as c, in order, and returns
// the position of the last.
func (s *Server) appendMessages(ctx context.Context, sr streamRequest, st *streamState, msgs [][]byte) (broker.Position, error) {
	waits := make([]func() (*broker.Message, int, error), 0, len(msgs))
	kind := broker.KindJSON
	for _, data := range msgs {
		if !st.isJSON() {
			k, err := broker.ClassifyData(st.ContentType, data)
			if err != nil {
				k = broker.KindBinary
			}
			kind = k
		}
		wait, err := s.door.StartPublish(ctx, sr.c, &broker.Message{Channel: sr.ch, Kind: kind, Data: data})
		if err != nil {
			return broker.Position{}, err
		}
		waits = append(waits, wait)
	}
	var last broker.Position
	for _, wait := range waits {
		m, _, err := wait()
		if err != nil {
			return broker.Position{}, err
		}
		last = m.Position()
	}
	return last, nil
}

// streamConfig is what a PUT asks for.
func streamConfig(r *http.Request) (*streamState, error) {
	st := &streamState{ContentType: r.Header.Get("Content-Type")}
	if st.ContentType == "" {
		st.ContentType = "application/octet-stream"
	}
	ttl, exp := r.Header.Get(wire.HeaderStreamTTL), r.Header.Get(wire.HeaderStreamExpiresAt)
	if ttl != "" && exp != "" {
		return nil, errorf(http.StatusBadRequest, CodeInvalidParameter, "give Stream-TTL or Stream-Expires-At, not both")
	}
	if ttl != "" {
		d, err := wire.ParseStreamTTL(ttl)
		if err != nil {
			return nil, errorf(http.StatusBadRequest, CodeInvalidParameter, "%v", err)
		}
		secs := int64(d / time.Second)
		st.TTL = &secs
	}
	if exp != "" {
		t, err := time.Parse(time.RFC3339Nano, exp)
		if err != nil {
			return nil, errorf(http.StatusBadRequest, CodeInvalidParameter, "Stream-Expires-At %q: want an RFC 3339 time such as 2030-01-02T15:04:05Z", exp)
		}
		st.ExpiresAt = t
	}
	st.Closed = wire.IsTrue(r.Header.Get(wire.HeaderStreamClosed))
	return st, nil
}

// sameConfig says whether an existing stream is what a PUT asks for.
func sameConfig(have, want *streamState) bool {
	ttlSame := (have.TTL == nil) == (want.TTL == nil) && (have.TTL == nil || *have.TTL == *want.TTL)
	return mediaType(have.ContentType) == mediaType(want.ContentType) && ttlSame &&
		have.ExpiresAt.Equal(want.ExpiresAt) && have.Closed == want.Closed
}

// streamCreate handles PUT: create the stream, or confirm it exists as asked.
func (s *Server) streamCreate(w http.ResponseWriter, r *http.Request, sr streamRequest) error {
	want, err := streamConfig(r)
	if err != nil {
		return err
	}
	fork, err := forkRequest(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	have, err := s.loadStream(ctx, sr.ch)
	if err != nil && !errors.Is(err, errNoStream) {
		return err
	}
	if have != nil && have.Deleted {
		if s.liveForks(ctx, sr.ch, have) > 0 {
			return errorf(http.StatusConflict, wire.CodeStreamExists, "stream %q was deleted but its forks still read it: its path cannot be used again yet", sr.path)
		}
		if err := s.finishDelete(ctx, sr, sr.ch); err != nil {
			return err
		}
		have = nil
	}
	body, err := s.readStreamBody(w, r)
	if err != nil {
		return err
	}
	if fork != nil {
		return s.streamFork(w, r, sr, want, fork, have, body)
	}
	if have != nil {
		if !sameConfig(have, want) || have.Source != "" {
			return errorf(http.StatusConflict, wire.CodeStreamExists, "stream %q exists with another content type, expiry or closure", sr.path)
		}
		return s.createdBefore(ctx, w, sr, have)
	}
	msgs, err := splitBody(want, body, true)
	if err != nil {
		return err
	}
	head, err := s.door.CreateChannel(ctx, sr.c, sr.ch)
	if err != nil {
		return err
	}
	tail := head
	if len(msgs) > 0 {
		if tail, err = s.appendMessages(ctx, sr, want, msgs); err != nil {
			return err
		}
	}
	if err := s.saveCreated(ctx, sr.ch, want, tail.Epoch, tail); err != nil {
		return err
	}
	s.streamHeaders(w, want, tail)
	w.Header().Set("Location", requestURL(r))
	w.WriteHeader(http.StatusCreated)
	return nil
}

// requestURL is the absolute URL the request was made to.
func requestURL(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host + r.URL.EscapedPath()
}

// streamHeaders sets the headers every reply about a stream carries.
func (s *Server) streamHeaders(w http.ResponseWriter, st *streamState, tail broker.Position) {
	h := w.Header()
	h.Set("Content-Type", st.ContentType)
	h.Set(wire.HeaderStreamNextOffset, st.offset(tail))
	if st.Closed {
		h.Set(wire.HeaderStreamClosed, "true")
	}
}

// producerHeaders parses the idempotent producer headers: all three or
// none.
func producerHeaders(r *http.Request) (*producerRef, error) {
	id, e, q := r.Header.Values(wire.HeaderProducerID), r.Header.Get(wire.HeaderProducerEpoch), r.Header.Get(wire.HeaderProducerSeq)
	if len(id) == 0 && e == "" && q == "" {
		return nil, nil
	}
	if len(id) == 0 || id[0] == "" || e == "" || q == "" {
		return nil, errorf(http.StatusBadRequest, CodeInvalidParameter, "Producer-Id, Producer-Epoch and Producer-Seq go together, none empty")
	}
	epoch, err := wire.ParseProducerNumber(wire.HeaderProducerEpoch, e)
	if err != nil {
		return nil, errorf(http.StatusBadRequest, CodeInvalidParameter, "%v", err)
	}
	seq, err := wire.ParseProducerNumber(wire.HeaderProducerSeq, q)
	if err != nil {
		return nil, errorf(http.StatusBadRequest, CodeInvalidParameter, "%v", err)
	}
	return &producerRef{ID: id[0], Epoch: epoch, Seq: seq}, nil
}

// streamAppend handles POST: append, close, or both.
func (s *Server) streamAppend(w http.ResponseWriter, r *http.Request, sr streamRequest) error {
	ctx := r.Context()
	prod, err := producerHeaders(r)
	if err != nil {
		return err
	}
	closing := wire.IsTrue(r.Header.Get(wire.HeaderStreamClosed))
	st, err := s.existingStream(ctx, sr)
	if err != nil {
		return err
	}
	body, err := s.readStreamBody(w, r)
	if err != nil {
		return err
	}
	if len(body) == 0 && !closing {
		return errorf(http.StatusBadRequest, CodeInvalidParameter, "an append needs a body (or Stream-Closed: true to close)")
	}
	tail, err := s.streamTail(ctx, sr, st)
	if err != nil {
		return err
	}
	if st.TTL != nil {
		s.streams.touch(sr.ch, time.Now())
	}
	h := w.Header()
	if st.Closed {
		h.Set(wire.HeaderStreamClosed, "true")
		h.Set(wire.HeaderStreamNextOffset, st.offset(tail))
		if prod != nil && st.ClosedBy != nil && *prod == *st.ClosedBy {
			setProducer(h, prod.Epoch, prod.Seq)
			w.WriteHeader(http.StatusNoContent)
			return nil
		}
		if len(body) == 0 && closing {
			w.WriteHeader(http.StatusNoContent)
			return nil
		}
		return errorf(http.StatusConflict, wire.CodeStreamClosed, "stream %q is closed", sr.path)
	}
	if len(body) > 0 {
		ct := r.Header.Get("Content-Type")
		if ct == "" {
			return errorf(http.StatusBadRequest, CodeInvalidParameter, "an append needs a Content-Type (the stream's: %s)", st.ContentType)
		}
		if mediaType(ct) != mediaType(st.ContentType) {
			return errorf(http.StatusConflict, wire.CodeStreamConflict, "Content-Type %s is not the stream's (%s)", ct, st.ContentType)
		}
	}
	changed := false
	if prod != nil {
		p := st.Producers[prod.ID]
		switch checkProducer(p, prod.Epoch, prod.Seq) {
		case producerFenced:
			h.Set(wire.HeaderProducerEpoch, strconv.FormatUint(p.Epoch, 10))
			return errorf(http.StatusForbidden, wire.CodeProducerFenced, "producer %q epoch %d is older than its epoch %d", prod.ID, prod.Epoch, p.Epoch)
		case producerBadEpoch:
			return errorf(http.StatusBadRequest, CodeInvalidParameter, "a new producer epoch starts at Producer-Seq 0")
		case producerGap:
			expected := uint64(0)
			if p != nil {
				expected = p.Seq + 1
			}
			h.Set(wire.HeaderProducerExpected, strconv.FormatUint(expected, 10))
			h.Set(wire.HeaderProducerReceived, strconv.FormatUint(prod.Seq, 10))
			return errorf(http.StatusConflict, wire.CodeProducerSeqGap, "producer %q: expected Producer-Seq %d, got %d", prod.ID, expected, prod.Seq)
		case producerDuplicate:
			setProducer(h, p.Epoch, p.Seq)
			h.Set(wire.HeaderStreamNextOffset, st.offset(tail))
			w.WriteHeader(http.StatusNoContent)
			return nil
		}
		if st.Producers == nil {
			st.Producers = map[string]*producer{}
		}
		st.Producers[prod.ID] = &producer{Epoch: prod.Epoch, Seq: prod.Seq}
		changed = true
	}
	if seq := r.Header.Get(wire.HeaderStreamSeq); seq != "" {
		if st.StreamSeq != "" && seq <= st.StreamSeq {
			return errorf(http.StatusConflict, wire.CodeStreamSeqRegress, "Stream-Seq %q is not after %q", seq, st.StreamSeq)
		}
		st.StreamSeq, changed = seq, true
	}
	msgs, err := splitBody(st, body, false)
	if err != nil {
		return err
	}
	if len(msgs) > 0 {
		if tail, err = s.appendMessages(ctx, sr, st, msgs); err != nil {
			return err
		}
	}
	if closing {
		st.Closed, st.ClosedAt, st.ClosedBy, changed = true, tail.Seq, prod, true
	}
	if changed {
		if err := s.saveStream(ctx, sr.ch, st); err != nil {
			return err
		}
	}
	h.Set(wire.HeaderStreamNextOffset, st.offset(tail))
	if st.Closed {
		h.Set(wire.HeaderStreamClosed, "true")
	}
	if prod != nil {
		setProducer(h, prod.Epoch, prod.Seq)
		if len(msgs) > 0 {
			w.WriteHeader(http.StatusOK)
			return nil
		}
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func setProducer(h http.Header, epoch, seq uint64) {
	h.Set(wire.HeaderProducerEpoch, strconv.FormatUint(epoch, 10))
	h.Set(wire.HeaderProducerSeq, strconv.FormatUint(seq, 10))
}

// streamDelete handles DELETE.
func (s *Server) streamDelete(w http.ResponseWriter, r *http.Request, sr streamRequest) error {
	st, err := s.existingStream(r.Context(), sr)
	if err != nil {
		return err
	}
	if err := s.door.DeleteChannel(r.Context(), sr.c, sr.ch); err != nil && !errors.Is(err, broker.ErrNotFound) {
		return err
	}
	if err := s.deleteStream(r.Context(), sr, st); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// streamHead handles HEAD: the stream's metadata.
func (s *Server) streamHead(w http.ResponseWriter, r *http.Request, sr streamRequest) error {
	if err := s.door.CheckSubscribe(sr.c, []string{sr.ch}); err != nil {
		return err
	}
	st, err := s.existingStream(r.Context(), sr)
	if err != nil {
		return err
	}
	tail, err := s.streamTail(r.Context(), sr, st)
	if err != nil {
		return err
	}
	s.streamHeaders(w, st, tail)
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	if st.TTL != nil {
		h.Set(wire.HeaderStreamTTL, strconv.FormatInt(*st.TTL, 10))
	}
	if !st.ExpiresAt.IsZero() {
		h.Set(wire.HeaderStreamExpiresAt, st.ExpiresAt.UTC().Format(time.RFC3339Nano))
	}
	w.WriteHeader(http.StatusOK)
	return nil
}

// What browsers may send to and read from streams (cors.go).
const (
	streamAllowedHeaders = "If-None-Match, Stream-Seq, Stream-TTL, Stream-Expires-At, Stream-Closed, Producer-Id, Producer-Epoch, Producer-Seq"
	streamExposedHeaders = "ETag, Location, Stream-Next-Offset, Stream-Up-To-Date, Stream-Closed, Stream-Cursor, Stream-TTL, Stream-Expires-At, Stream-SSE-Data-Encoding, Producer-Epoch, Producer-Seq, Producer-Expected-Seq, Producer-Received-Seq"
)
