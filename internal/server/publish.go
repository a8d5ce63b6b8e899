package server

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/pushctl/pushctl/internal/auth"
	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/door"
	"github.com/pushctl/pushctl/internal/wire"
)

// eventName returns the event from the query or the X-Pushctl-Event header.
func eventName(r *http.Request) (string, error) {
	ev := r.URL.Query().Get("event")
	if ev == "" {
		ev = r.Header.Get("X-Pushctl-Event")
	}
	return ev, wire.ValidateEvent(ev)
}

// publish handles POST/PUT /pub/{channel}: the body is the message data.
// With ?lines=1 every line of the body is a message, acked as NDJSON.
func (s *Server) publish(w http.ResponseWriter, r *http.Request) error {
	channel := r.PathValue("channel")
	if err := broker.ValidateChannel(channel); err != nil {
		return err
	}
	id, err := s.identity(r)
	if err != nil {
		return err
	}
	c := s.caller(r, id)
	// Refused before the body is read; the door checks it all again.
	if err := s.door.CheckPublish(c, channel); err != nil {
		return err
	}
	event, err := eventName(r)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	ctype := q.Get("type")
	if ctype == "" {
		ctype = r.Header.Get("Content-Type")
		if ctype == "application/x-www-form-urlencoded" { // curl -d's default says nothing about the data
			ctype = ""
		}
	}
	key := r.Header.Get("Idempotency-Key")
	lines := q.Get("lines") == "1" || q.Get("lines") == "true"
	if _, given := r.Header["Idempotency-Key"]; given {
		if err := broker.ValidateKey(key); err != nil {
			return errorf(http.StatusBadRequest, CodeInvalidParameter, "Idempotency-Key must be 1 to %d printable ASCII characters without spaces", broker.MaxKeyLen)
		}
		if lines {
			return errorf(http.StatusBadRequest, CodeInvalidParameter, "Idempotency-Key names one message; it cannot go with lines=1")
		}
	}
	if v := q.Get("wait_subscribers"); v != "" {
		if err := s.waitSubscribers(r, channel, v, q.Get("timeout")); err != nil {
			return err
		}
	}
	if lines {
		return s.publishLines(w, r, c, channel, event, ctype)
	}
	if t := s.opts.Limits.ReadTimeout; t > 0 {
		// A client sending its body very slowly is cut off.
		http.NewResponseController(w).SetReadDeadline(time.Now().Add(t))
	}
	body, err := readBody(http.MaxBytesReader(w, r.Body, s.opts.MaxMessageSize), r.ContentLength, s.opts.MaxMessageSize)
	if err != nil {
		return err
	}
	kind, err := broker.ClassifyData(ctype, body)
	if err != nil {
		return errorf(http.StatusBadRequest, CodeInvalidJSON, "%v", err)
	}
	m, n, err := s.door.Publish(r.Context(), c, &broker.Message{Channel: channel, Event: event, Kind: kind, Data: body, Key: key})
	if err != nil {
		return err
	}
	var tmp [256]byte
	b := wire.AppendPublishAck(tmp[:0], m, n)
	h := w.Header()
	h["Content-Type"] = jsonContentType
	h["Content-Length"] = []string{strconv.Itoa(len(b))}
	w.WriteHeader(http.StatusOK)
	_, err = w.Write(b)
	return err
}

var jsonContentType = []string{"application/json"} // shared: never changed

// readBody reads a request body of declared length n (-1: unknown) up to
// max bytes. The message keeps the slice as its data for as long as the
// history holds it, so a declared length is read into a slice of exactly
// that size (io.ReadAll's first 512 bytes were kept for every 100-byte
// message).
func readBody(r io.Reader, n, max int64) ([]byte, error) {
	if n < 0 || n > max {
		return io.ReadAll(r)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		if err == io.ErrUnexpectedEOF {
			return nil, errorf(http.StatusBadRequest, CodeInvalidParameter, "the body ended after fewer bytes than its Content-Length")
		}
		return nil, err
	}
	return b, nil
}

// lineReader yields lines up to max bytes; longer lines are skipped whole
// and reported, so one bad line loses nothing else.
type lineReader struct {
	br   *bufio.Reader
	max  int
	line int
}

var errLineTooLong = errors.New("line too long")

func (lr *lineReader) next() ([]byte, error) {
	lr.line++
	var buf []byte
	for {
		chunk, err := lr.br.ReadSlice('\n')
		if len(buf)+len(chunk) > lr.max+2 { // allow for "\r\n"
			buf = nil
			for errors.Is(err, bufio.ErrBufferFull) {
				_, err = lr.br.ReadSlice('\n')
			}
			if err != nil && err != io.EOF {
				return nil, err
			}
			return nil, errLineTooLong
		}
		buf = append(buf, chunk...)
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if err == io.EOF && len(buf) > 0 {
			err = nil
		}
		if err != nil {
			return nil, err
		}
		buf = bytes.TrimSuffix(buf, []byte("\n"))
		buf = bytes.TrimSuffix(buf, []byte("\r"))
		return buf, nil
	}
}

type ackWriter struct {
	w   http.ResponseWriter
	bw  *bufio.Writer
	rc  *http.ResponseController
	enc *json.Encoder
}

func newAckWriter(w http.ResponseWriter) *ackWriter {
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	bw := bufio.NewWriterSize(w, 32<<10)
	return &ackWriter{w: w, bw: bw, rc: http.NewResponseController(w), enc: newEncoder(bw)}
}

func (a *ackWriter) write(v any, buffered bool) error {
	if err := a.enc.Encode(v); err != nil {
		return err
	}
	if !buffered {
		return a.flush()
	}
	return nil
}

func (a *ackWriter) flush() error {
	if err := a.bw.Flush(); err != nil {
		return err
	}
	return a.rc.Flush()
}

func (a *ackWriter) lineError(line int, err error) error {
	e := asError(err)
	if errors.Is(err, errLineTooLong) {
		e = &Error{Status: http.StatusRequestEntityTooLarge, Code: CodeTooLarge, Message: "line longer than the message size limit"}
	}
	return a.write(wire.ErrorReply{Line: line, Error: e}, false)
}

// maxPendingReplies bounds the acknowledgements a streaming publish holds
// for a client that sends without reading them (Python's http.client sends
// the whole body first). Past it the broker stops publishing, reads the
// rest of the body without publishing it, and says so in the last line.
var maxPendingReplies = 100_000

type pubReply struct {
	line int
	wait func() (*broker.Message, int, error)
	err  error
}

// replyQueue hands replies from the body reader to the ack writer without
// ever blocking the reader: a client that reads its acks only after
// sending everything cannot deadlock the request.
type replyQueue struct {
	mu     sync.Mutex
	items  []pubReply
	closed bool
	ready  chan struct{}
}

func (q *replyQueue) push(r pubReply) int {
	q.mu.Lock()
	q.items = append(q.items, r)
	n := len(q.items)
	q.mu.Unlock()
	select {
	case q.ready <- struct{}{}:
	default:
	}
	return n
}

func (q *replyQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

// take returns what is queued, waiting for something; ok is false once
// the queue is closed and empty.
func (q *replyQueue) take(dst []pubReply) ([]pubReply, bool) {
	for {
		q.mu.Lock()
		if len(q.items) > 0 {
			out := q.items
			q.items = dst[:0]
			q.mu.Unlock()
			return out, true
		}
		closed := q.closed
		q.mu.Unlock()
		if closed {
			return nil, false
		}
		<-q.ready
	}
}

func (q *replyQueue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.items)
}

// streamPublish reads lines, starts each publish via fn and streams one
// ack (or error) per line, in order. A goroutine writes the acks as the
// publishes complete, so a durable broker stores many lines per commit,
// and the reader never waits for the client to read them.
func (s *Server) streamPublish(w http.ResponseWriter, r *http.Request, fn func(line []byte) (func() (*broker.Message, int, error), error)) error {
	rc := http.NewResponseController(w)
	// Acks stream while the body is still arriving; servers that cannot
	// do that (HTTP/2 always can) just buffer them.
	rc.EnableFullDuplex()
	lr := &lineReader{br: bufio.NewReaderSize(r.Body, 64<<10), max: int(s.opts.MaxMessageSize) * 2}
	aw := newAckWriter(w)
	q := &replyQueue{ready: make(chan struct{}, 1)}
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		failed := false
		var batch []pubReply
		for {
			items, ok := q.take(batch)
			if !ok {
				break
			}
			for i, rp := range items {
				if failed {
					continue // the client is gone; let the reader finish
				}
				var werr error
				err := rp.err
				if err == nil {
					m, n, perr := rp.wait()
					if perr == nil {
						ack := wire.AckOf(m, n)
						ack.Line = rp.line
						werr = aw.write(ack, i < len(items)-1)
					}
					err = perr
				}
				if err != nil {
					werr = aw.lineError(rp.line, err)
				}
				failed = werr != nil
			}
			clear(items)
			batch = items
			if !failed && aw.flush() != nil {
				failed = true
			}
		}
		aw.flush()
	}()
	for {
		line, err := lr.next()
		if err == io.EOF {
			break
		}
		if err != nil && !errors.Is(err, errLineTooLong) {
			q.push(pubReply{line: lr.line, err: errorf(http.StatusBadRequest, CodeInvalidParameter, "reading body: %v", err)})
			break
		}
		if err != nil {
			q.push(pubReply{line: lr.line, err: err})
			continue
		}
		if len(line) == 0 {
			continue
		}
		if q.len() >= maxPendingReplies {
			first := lr.line
			s.limitHit("ack_backlog")
			for { // read the rest so the client can finish sending and read
				if _, err := lr.next(); err != nil && !errors.Is(err, errLineTooLong) {
					break
				}
			}
			q.push(pubReply{line: first, err: errorf(http.StatusServiceUnavailable, CodeAckBacklog,
				"lines %d to %d were not published: %d acknowledgements were waiting to be read; read the response while sending, or send fewer lines per request",
				first, lr.line-1, maxPendingReplies)})
			break
		}
		wait, err := fn(line)
		q.push(pubReply{line: lr.line, wait: wait, err: err})
	}
	q.close()
	<-writerDone
	return nil
}

func (s *Server) publishLines(w http.ResponseWriter, r *http.Request, c door.Caller, channel, event, ctype string) error {
	max := int(s.opts.MaxMessageSize)
	return s.streamPublish(w, r, func(line []byte) (func() (*broker.Message, int, error), error) {
		if len(line) > max {
			return nil, door.TooLarge(int64(len(line)), int64(max))
		}
		kind, err := broker.ClassifyData(ctype, line)
		if err != nil {
			return nil, errorf(http.StatusBadRequest, CodeInvalidJSON, "%v", err)
		}
		// The door checks the grant per line: the token may have expired.
		return s.door.StartPublish(r.Context(), c, &broker.Message{Channel: channel, Event: event, Kind: kind, Data: line})
	})
}

// publishBatch handles POST /pub: NDJSON, one wire.PublishFrame per line; a
// line without a channel uses ?channel=.
func (s *Server) publishBatch(w http.ResponseWriter, r *http.Request) error {
	if _, given := r.Header["Idempotency-Key"]; given {
		return errorf(http.StatusBadRequest, CodeInvalidParameter, "Idempotency-Key names one message; give each line its own \"idempotency_key\"")
	}
	def := r.URL.Query().Get("channel")
	if def != "" {
		if err := broker.ValidateChannel(def); err != nil {
			return err
		}
	}
	id, err := s.identity(r)
	if err != nil {
		return err
	}
	c := s.caller(r, id)
	// Grants are checked per line; a request with no credentials at all
	// is refused as a whole.
	if s.door.Auth().Enabled() && id.Claims == nil && !id.Trusted {
		if err := s.door.Allow(c, auth.Publish, ">"); err != nil {
			return err
		}
	}
	return s.streamPublish(w, r, func(line []byte) (func() (*broker.Message, int, error), error) {
		f, err := wire.DecodePublishFrame(line)
		if err != nil {
			return nil, err
		}
		if f.Channel == "" {
			f.Channel = def
		}
		m, err := f.Message(s.opts.MaxMessageSize)
		if err != nil {
			return nil, err
		}
		return s.door.StartPublish(r.Context(), c, m)
	})
}
