package bridge

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/pushctl/pushctl/internal/wire"
)

// Durable Streams endpoints (docs/durable-streams.md): ds://HOST:PORT/PATH
// (dss:// for HTTPS) names a stream of any server that speaks the
// protocol, pushctl's at /v1/stream/… among them.
//
// As a source it reads the stream by long-poll from ?offset= (default
// now: what comes next; -1: from the start), resuming from the last
// offset it got after a failure, and ends when the stream is closed. In
// JSON mode each value is one message; otherwise each read is.
//
// As a sink it appends each message as an idempotent producer (a random
// Producer-Id, epoch 0), so a retried append is never stored twice. A
// stream that does not exist is created, with ?content-type= (default
// application/octet-stream).

// IsDurableStream reports whether raw is a ds:// or dss:// URL.
func IsDurableStream(raw string) bool {
	return strings.HasPrefix(raw, "ds://") || strings.HasPrefix(raw, "dss://")
}

// dsURL splits a ds:// URL into the stream's http(s) URL and its query.
func dsURL(raw string) (string, url.Values, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", nil, err
	}
	switch u.Scheme {
	case "ds":
		u.Scheme = "http"
	case "dss":
		u.Scheme = "https"
	default:
		return "", nil, fmt.Errorf("want ds:// or dss://, not %q", u.Scheme)
	}
	if u.Host == "" || u.Path == "" || u.Path == "/" {
		return "", nil, fmt.Errorf("want ds://HOST:PORT/PATH, such as ds://127.0.0.1:7070/v1/stream/chat")
	}
	q := u.Query()
	u.RawQuery, u.ForceQuery, u.Fragment, u.RawFragment = "", false, "", ""
	return u.String(), q, nil
}

type dsSource struct {
	url    string
	offset string
	o      EndpointOptions
	env    *Env
}

func newDSSource(raw string, o EndpointOptions, env *Env) (*dsSource, error) {
	u, q, err := dsURL(raw)
	if err != nil {
		return nil, err
	}
	s := &dsSource{url: u, offset: q.Get("offset"), o: o, env: env}
	if s.offset == "" {
		s.offset = wire.OffsetNow
	}
	return s, nil
}

func (s *dsSource) String() string { return s.url }

func (s *dsSource) Run(ctx context.Context, emit func(Message) error) error {
	hc, err := s.o.httpClient(0)
	if err != nil {
		return err
	}
	var bo backoff
	cursor := ""
	for {
		closed, err := s.poll(ctx, hc, &cursor, emit, &bo)
		if closed {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var fatal *fatalError
		if errors.As(err, &fatal) || errors.Is(err, errEmit) {
			return err
		}
		if err == nil {
			continue
		}
		if err := retryAfter(ctx, s.env, &bo, s, err, "reconnecting"); err != nil {
			return err
		}
	}
}

// poll makes one long-poll and emits what it brings; closed says the
// stream ended.
func (s *dsSource) poll(ctx context.Context, hc *http.Client, cursor *string, emit func(Message) error, bo *backoff) (closed bool, err error) {
	q := url.Values{"offset": {s.offset}, "live": {"long-poll"}}
	if *cursor != "" {
		q.Set("cursor", *cursor)
	}
	req, err := http.NewRequestWithContext(ctx, "GET", s.url+"?"+q.Encode(), nil)
	if err != nil {
		return false, &fatalError{err}
	}
	for k, v := range s.o.Headers {
		req.Header[k] = v
	}
	resp, err := hc.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	bo.heard()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxSSELine+1))
	if err != nil {
		return false, err
	}
	switch {
	case resp.StatusCode == http.StatusOK, resp.StatusCode == http.StatusNoContent:
	case resp.StatusCode >= 400 && resp.StatusCode < 500 && resp.StatusCode != 408 && resp.StatusCode != 429:
		return false, &fatalError{fmt.Errorf("HTTP %d: %s", resp.StatusCode, bytes.TrimSpace(body))}
	default:
		return false, fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	bo.reset()
	if len(body) > maxSSELine {
		return false, &fatalError{fmt.Errorf("a read of more than %d bytes", maxSSELine)}
	}
	next := resp.Header.Get(wire.HeaderStreamNextOffset)
	if c := resp.Header.Get(wire.HeaderStreamCursor); c != "" {
		*cursor = c
	}
	if resp.StatusCode == http.StatusOK && len(body) > 0 {
		mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
		msgs := [][]byte{body}
		if mt == "application/json" {
			var vals []json.RawMessage
			if err := json.Unmarshal(body, &vals); err != nil {
				return false, &fatalError{fmt.Errorf("a JSON stream's read is not a JSON array: %v", err)}
			}
			msgs = msgs[:0]
			for _, v := range vals {
				msgs = append(msgs, v)
			}
		}
		for _, m := range msgs {
			if err := emit(Message{Data: m, ID: next}); err != nil {
				return false, errors.Join(errEmit, err) // the reader stopped: not retried
			}
		}
	}
	if next != "" {
		s.offset = next
	}
	return wire.IsTrue(resp.Header.Get(wire.HeaderStreamClosed)), nil
}

type dsSink struct {
	url      string
	ctype    string
	o        EndpointOptions
	env      *Env
	hc       *http.Client
	bo       backoff
	producer string
	seq      uint64
	ready    bool // the stream exists and ctype is its content type
}

func newDSSink(raw string, o EndpointOptions, env *Env) (*dsSink, error) {
	u, q, err := dsURL(raw)
	if err != nil {
		return nil, err
	}
	hc, err := o.httpClient(30 * time.Second)
	if err != nil {
		return nil, err
	}
	id := make([]byte, 8)
	rand.Read(id)
	s := &dsSink{url: u, ctype: q.Get("content-type"), o: o, env: env, hc: hc, producer: "pushctl-bridge-" + hex.EncodeToString(id)}
	if s.ctype == "" {
		s.ctype = "application/octet-stream"
	}
	return s, nil
}

func (s *dsSink) String() string { return s.url }

// do sends one request; the status and an error for a failure to retry.
func (s *dsSink) do(ctx context.Context, method string, body []byte, hdr map[string]string) (int, http.Header, error) {
	req, err := http.NewRequestWithContext(ctx, method, s.url, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	for k, v := range s.o.Headers {
		req.Header[k] = v
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := s.hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	s.bo.heard()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	if resp.StatusCode >= 500 || resp.StatusCode == 408 || resp.StatusCode == 429 {
		return resp.StatusCode, resp.Header, fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return resp.StatusCode, resp.Header, nil
}

// prepare learns the stream's content type, creating the stream when
// there is none.
func (s *dsSink) prepare(ctx context.Context) error {
	st, h, err := s.do(ctx, "HEAD", nil, nil)
	if err != nil {
		return err
	}
	switch {
	case st == http.StatusOK:
		if ct := h.Get("Content-Type"); ct != "" {
			s.ctype = ct
		}
	case st == http.StatusNotFound:
		st, _, err = s.do(ctx, "PUT", nil, map[string]string{"Content-Type": s.ctype})
		if err != nil {
			return err
		}
		if st >= 300 {
			return &fatalError{fmt.Errorf("creating the stream: HTTP %d", st)}
		}
	default:
		return &fatalError{fmt.Errorf("HEAD: HTTP %d", st)}
	}
	s.ready = true
	s.seq = 0 // the producer is new to this stream
	return nil
}

func (s *dsSink) Send(ctx context.Context, m Message) error {
	for {
		err := s.send(ctx, m)
		var fatal *fatalError
		if err == nil || errors.Is(err, ErrRejected) || errors.As(err, &fatal) {
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err := retryAfter(ctx, s.env, &s.bo, s, err, "retrying"); err != nil {
			return err
		}
	}
}

func (s *dsSink) send(ctx context.Context, m Message) error {
	if !s.ready {
		if err := s.prepare(ctx); err != nil {
			return err
		}
	}
	st, h, err := s.do(ctx, "POST", m.Data, map[string]string{
		"Content-Type":           s.ctype,
		wire.HeaderProducerID:    s.producer,
		wire.HeaderProducerEpoch: "0",
		wire.HeaderProducerSeq:   strconv.FormatUint(s.seq, 10),
	})
	if err != nil {
		return err
	}
	switch {
	case st == http.StatusOK || st == http.StatusNoContent: // appended, or a retry of one that was
		s.seq++
		s.bo.reset()
		return nil
	case st == http.StatusConflict && wire.IsTrue(h.Get(wire.HeaderStreamClosed)):
		return &fatalError{errors.New("the stream is closed")}
	case st == http.StatusNotFound:
		s.ready = false
		return errors.New("the stream is gone")
	}
	return fmt.Errorf("%w: HTTP %d", ErrRejected, st)
}

func (s *dsSink) Close(context.Context) error { return nil }
