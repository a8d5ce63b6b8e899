package server

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/door"
	"github.com/pushctl/pushctl/internal/wire"
)

// Forks of Durable Streams (PUT with Stream-Forked-From): a fork is a new
// stream whose channel starts with a copy of its source's messages up to
// the fork offset (and, with a sub-offset, part of the next append), so
// its offsets are its source's: it keeps the source's epoch. A source
// lists its forks; deleting a source that has live forks only marks it
// deleted (410 to everyone, its path not reusable) until the last fork
// goes, then it goes too, and so on up the chain.

// lockSet holds stream locks, each once.
type lockSet struct {
	s    *streamsState
	held []*sync.Mutex
}

// lock takes ch's lock unless the set holds it already.
func (l *lockSet) lock(ch string) {
	mu := l.s.locks.of(ch)
	if slices.Contains(l.held, mu) {
		return
	}
	mu.Lock()
	l.held = append(l.held, mu)
}

func (l *lockSet) unlockAll() {
	for _, mu := range l.held {
		mu.Unlock()
	}
	l.held = nil
}

// forkAsk is what a PUT asks of a fork.
type forkAsk struct {
	source    string // the source's path (after /v1/stream/)
	offset    string // Stream-Fork-Offset as sent ("": the source's tail)
	sub       uint64 // Stream-Fork-Sub-Offset
	ctypeSent bool   // the PUT named a content type
}

// forkRequest parses the fork headers of a PUT (nil: not a fork).
func forkRequest(r *http.Request) (*forkAsk, error) {
	from := r.Header.Get("Stream-Forked-From")
	subs, hasSub := r.Header.Values("Stream-Fork-Sub-Offset"), len(r.Header.Values("Stream-Fork-Sub-Offset")) > 0
	if from == "" {
		if hasSub || r.Header.Get("Stream-Fork-Offset") != "" {
			return nil, errorf(http.StatusBadRequest, CodeInvalidParameter, "Stream-Fork-Offset and Stream-Fork-Sub-Offset need Stream-Forked-From")
		}
		return nil, nil
	}
	f := &forkAsk{offset: r.Header.Get("Stream-Fork-Offset"), ctypeSent: r.Header.Get("Content-Type") != ""}
	p, err := url.PathUnescape(from)
	if err != nil {
		return nil, errorf(http.StatusBadRequest, CodeInvalidParameter, "Stream-Forked-From %q: %v", from, err)
	}
	f.source = strings.TrimPrefix(strings.TrimPrefix(p, StreamsPrefix), "/")
	if hasSub {
		v := subs[0]
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil || v == "" || (len(v) > 1 && v[0] == '0') || v[0] == '+' {
			return nil, errorf(http.StatusBadRequest, CodeInvalidParameter, "Stream-Fork-Sub-Offset %q: want a whole number without sign or leading zero", v)
		}
		if n > 0 && f.offset == "" {
			return nil, errorf(http.StatusBadRequest, CodeInvalidParameter, "Stream-Fork-Sub-Offset needs Stream-Fork-Offset")
		}
		f.sub = n
	}
	return f, nil
}

// streamFork creates a fork (have: what is at its path already).
func (s *Server) streamFork(w http.ResponseWriter, r *http.Request, sr streamRequest, want *streamState, f *forkAsk, have *streamState, body []byte) error {
	ctx := r.Context()
	srcCh, err := wire.StreamChannel(f.source)
	if err != nil {
		return errorf(http.StatusBadRequest, CodeInvalidChannel, "Stream-Forked-From: %v", err)
	}
	if srcCh == sr.ch {
		return errorf(http.StatusBadRequest, CodeInvalidParameter, "a stream cannot fork itself")
	}
	sr.locks.lock(srcCh)
	src, err := s.loadStream(ctx, srcCh)
	if errors.Is(err, errNoStream) {
		return noStream(f.source)
	}
	if err != nil {
		return err
	}
	if src.Deleted {
		return errorf(http.StatusConflict, wire.CodeStreamGone, "stream %q was deleted: it cannot be forked", f.source)
	}
	if f.ctypeSent && mediaType(want.ContentType) != mediaType(src.ContentType) {
		return errorf(http.StatusConflict, wire.CodeStreamConflict, "Content-Type %s is not the source's (%s)", want.ContentType, src.ContentType)
	}
	want.ContentType = src.ContentType
	if want.TTL == nil && want.ExpiresAt.IsZero() {
		want.TTL, want.ExpiresAt = src.TTL, src.ExpiresAt
	}
	want.Source, want.ForkOffset, want.ForkSub = srcCh, f.offset, f.sub
	if have != nil {
		if !sameConfig(have, want) || have.Source != srcCh || have.ForkOffset != f.offset || have.ForkSub != f.sub {
			return errorf(http.StatusConflict, wire.CodeStreamExists, "stream %q exists with another configuration", sr.path)
		}
		return s.createdBefore(ctx, w, sr, have)
	}
	srcReq := streamRequest{path: f.source, ch: srcCh, c: sr.c}
	srcTail, err := s.streamTail(ctx, srcReq, src)
	if err != nil {
		return err
	}
	at := srcTail.Seq
	if f.offset != "" {
		p, err := wire.ParseOffset(f.offset)
		if err != nil {
			return errorf(http.StatusBadRequest, CodeInvalidPosition, "Stream-Fork-Offset: %v", err)
		}
		if p.Seq > srcTail.Seq {
			return errorf(http.StatusBadRequest, CodeInvalidPosition, "Stream-Fork-Offset %s is beyond the source's tail %s", f.offset, src.offset(srcTail))
		}
		at = p.Seq
	}
	// The source's messages, read as the caller (who needs the grant to
	// read it).
	res, err := s.door.ReadHistory(ctx, sr.c, srcCh, broker.ReadRequest{Last: -1})
	if err != nil {
		return err
	}
	var msgs []*broker.Message
	for _, ev := range res.Events {
		if ev.Msg != nil && ev.Msg.Seq <= srcTail.Seq {
			msgs = append(msgs, ev.Msg)
		}
	}
	if len(msgs) > 0 && msgs[0].Seq != 1 {
		return errorf(http.StatusConflict, wire.CodeOffsetGone, "the source no longer holds its first messages: it cannot be forked")
	}
	inherit := msgs[:min(int(at), len(msgs))]
	var partial []*broker.Message
	if f.sub > 0 {
		rest := msgs[len(inherit):]
		if len(rest) == 0 {
			return errorf(http.StatusBadRequest, CodeInvalidPosition, "Stream-Fork-Sub-Offset %d: nothing follows the fork offset", f.sub)
		}
		if src.isJSON() {
			if f.sub > uint64(len(rest)) {
				return errorf(http.StatusBadRequest, CodeInvalidPosition, "Stream-Fork-Sub-Offset %d: only %d messages follow the fork offset", f.sub, len(rest))
			}
			partial = rest[:f.sub]
		} else {
			next := rest[0]
			if f.sub > uint64(len(next.Data)) {
				return errorf(http.StatusBadRequest, CodeInvalidPosition, "Stream-Fork-Sub-Offset %d: the next append has %d bytes", f.sub, len(next.Data))
			}
			partial = []*broker.Message{{Kind: next.Kind, Data: next.Data[:f.sub]}}
		}
	}
	msgsIn, err := splitBody(want, body, true)
	if err != nil {
		return err
	}
	head, err := s.door.CreateChannel(ctx, sr.c, sr.ch)
	if err != nil {
		return err
	}
	if head.Seq != 0 {
		return errorf(http.StatusConflict, wire.CodeStreamExists, "channel %s already holds messages: a fork starts from an empty channel", sr.ch)
	}
	tail := head
	// The copies are the broker's: the caller was admitted to write the
	// fork and to read the source.
	copies := append(slices.Clone(inherit), partial...)
	waits := make([]func() (*broker.Message, int, error), 0, len(copies))
	for _, m := range copies {
		wait, err := s.door.StartPublish(ctx, door.System, &broker.Message{Channel: sr.ch, Event: m.Event, Kind: m.Kind, Data: m.Data})
		if err != nil {
			return err
		}
		waits = append(waits, wait)
	}
	for _, wait := range waits {
		m, _, err := wait()
		if err != nil {
			return err
		}
		tail = m.Position()
	}
	if len(msgsIn) > 0 {
		if tail, err = s.appendMessages(ctx, sr, want, msgsIn); err != nil {
			return err
		}
	}
	if err := s.saveCreated(ctx, sr.ch, want, src.Epoch, tail); err != nil {
		return err
	}
	src.Forks = append(src.Forks, sr.ch)
	if err := s.saveStream(ctx, srcCh, src); err != nil {
		return err
	}
	s.streamHeaders(w, want, tail)
	w.Header().Set("Location", requestURL(r))
	w.WriteHeader(http.StatusCreated)
	return nil
}

// liveForks counts the forks of st (the stream of channel ch) that still
// exist and are still its forks.
func (s *Server) liveForks(ctx context.Context, ch string, st *streamState) int {
	n := 0
	for _, f := range st.Forks {
		fs, err := s.loadStream(ctx, f)
		if err == nil && fs.Source == ch {
			n++
		}
	}
	return n
}

// existingStream is the state of an existing stream for a read or an append:
// 404 when there is none, 410 when it was deleted and forks still read it.
func (s *Server) existingStream(ctx context.Context, sr streamRequest) (*streamState, error) {
	st, err := s.loadStream(ctx, sr.ch)
	if errors.Is(err, errNoStream) {
		return nil, noStream(sr.path)
	}
	if err != nil {
		return nil, err
	}
	if !st.Deleted {
		return st, nil
	}
	if s.liveForks(ctx, sr.ch, st) > 0 {
		return nil, errorf(http.StatusGone, wire.CodeStreamGone, "stream %q was deleted (its forks still read it)", sr.path)
	}
	if sr.locks == nil { // a read, holding no lock: finish the deletion
		s.streams.topo.Lock()
		defer s.streams.topo.Unlock()
		ls := &lockSet{s: &s.streams}
		defer ls.unlockAll()
		ls.lock(sr.ch)
		sr.locks = ls
		if err := s.finishDelete(ctx, sr, sr.ch); err != nil {
			return nil, err
		}
	}
	return nil, noStream(sr.path)
}

// deleteStream deletes the stream of channel ch: marked deleted while
// forks read it, else gone (and released by its source).
func (s *Server) deleteStream(ctx context.Context, sr streamRequest, st *streamState) error {
	if n := s.liveForks(ctx, sr.ch, st); n > 0 {
		st.Deleted = true
		return s.saveStream(ctx, sr.ch, st)
	}
	return s.finishDelete(ctx, sr, sr.ch)
}

// finishDelete drops the stream of channel ch, then lets its source go
// when that was deleted and this was its last fork, up the chain. The
// caller holds the topology lock.
func (s *Server) finishDelete(ctx context.Context, sr streamRequest, ch string) error {
	for depth := 0; ch != "" && depth < 64; depth++ {
		sr.locks.lock(ch)
		st, err := s.loadStream(ctx, ch)
		if errors.Is(err, errNoStream) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := s.dropStream(ctx, ch); err != nil {
			return err
		}
		if st.Source == "" {
			return nil
		}
		sr.locks.lock(st.Source)
		src, err := s.loadStream(ctx, st.Source)
		if errors.Is(err, errNoStream) {
			return nil
		}
		if err != nil {
			return err
		}
		src.Forks = slices.DeleteFunc(src.Forks, func(f string) bool { return f == ch })
		if !src.Deleted || s.liveForks(ctx, st.Source, src) > 0 {
			return s.saveStream(ctx, st.Source, src)
		}
		ch = st.Source
	}
	return nil
}
