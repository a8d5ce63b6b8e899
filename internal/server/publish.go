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
	"github.com/pushctl/pushctl/internal/wire"
)

// Ack is the reply to a publish.
type Ack struct {
	Line        int       `json:"line,omitempty"`
	ID          string    `json:"id"`
	Channel     string    `json:"channel"`
	Seq         uint64    `json:"seq"`
	Subscribers int       `json:"subscribers"`
	Time        time.Time `json:"time"`
}

func ackOf(m *broker.Message, n int) Ack {
	return Ack{ID: m.ID(), Channel: m.Channel, Seq: m.Seq, Subscribers: n, Time: m.Time}
}

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
	if err := s.allow(id, auth.Publish, channel); err != nil {
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
	if v := q.Get("wait_subscribers"); v != "" {
		if err := s.waitSubscribers(r, channel, v, q.Get("timeout")); err != nil {
			return err
		}
	}
	if q.Get("lines") == "1" || q.Get("lines") == "true" {
		return s.publishLines(w, r, id, channel, event, ctype)
	}
	if err := s.checkRate(w, r, id); err != nil {
		return err
	}
	if t := s.opts.Limits.ReadTimeout; t > 0 {
		// A client sending its body very slowly is cut off.
		http.NewResponseController(w).SetReadDeadline(time.Now().Add(t))
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.opts.MaxMessageSize))
	if err != nil {
		return err
	}
	kind, err := broker.ClassifyData(ctype, body)
	if err != nil {
		return errorf(http.StatusBadRequest, CodeInvalidJSON, "%v", err)
	}
	m, n, err := s.b.Publish(r.Context(), &broker.Message{Channel: channel, Event: event, Kind: kind, Data: body})
	if err != nil {
		return err
	}
	// The ack is written by hand: encoding/json's reflection was a tenth
	// of the broker's time per HTTP publish. TestPublishAckIsAckJSON
	// checks it against encoding/json's.
	var tmp [256]byte
	b := appendAck(tmp[:0], m, n)
	h := w.Header()
	h["Content-Type"] = jsonContentType
	h["Content-Length"] = []string{strconv.Itoa(len(b))}
	w.WriteHeader(http.StatusOK)
	_, err = w.Write(b)
	return err
}

var jsonContentType = []string{"application/json"} // shared: never changed

// appendAck appends the JSON line of ackOf(m, n) (without a line number).
func appendAck(b []byte, m *broker.Message, n int) []byte {
	b = append(b, `{"id":"`...)
	b = append(b, m.Epoch...)
	b = append(b, '-')
	b = strconv.AppendUint(b, m.Seq, 10)
	b = append(b, `","channel":`...)
	b = wire.AppendString(b, m.Channel)
	b = append(b, `,"seq":`...)
	b = strconv.AppendUint(b, m.Seq, 10)
	b = append(b, `,"subscribers":`...)
	b = strconv.AppendInt(b, int64(n), 10)
	b = append(b, `,"time":"`...)
	b = m.Time.AppendFormat(b, time.RFC3339Nano)
	return append(b, "\"}\n"...)
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
	return a.write(map[string]any{"line": line, "error": e}, false)
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
						ack := ackOf(m, n)
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

func (s *Server) publishLines(w http.ResponseWriter, r *http.Request, id *auth.Identity, channel, event, ctype string) error {
	max := int(s.opts.MaxMessageSize)
	return s.streamPublish(w, r, func(line []byte) (func() (*broker.Message, int, error), error) {
		if len(line) > max {
			return nil, broker.ErrTooLarge
		}
		if err := s.allow(id, auth.Publish, channel); err != nil { // the token may have expired
			return nil, err
		}
		if err := s.checkRate(nil, r, id); err != nil {
			return nil, err
		}
		kind, err := broker.ClassifyData(ctype, line)
		if err != nil {
			return nil, errorf(http.StatusBadRequest, CodeInvalidJSON, "%v", err)
		}
		return broker.StartPublish(r.Context(), s.b, &broker.Message{Channel: channel, Event: event, Kind: kind, Data: line})
	})
}

// publishBatch handles POST /pub: NDJSON, one wire.PublishFrame per line; a
// line without a channel uses ?channel=.
func (s *Server) publishBatch(w http.ResponseWriter, r *http.Request) error {
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
	// Grants are checked per line; a request with no credentials at all
	// is refused as a whole.
	if s.auth.Enabled() && id.Claims == nil && !id.Trusted {
		if err := s.allow(id, auth.Publish, ">"); err != nil {
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
		if err := s.allow(id, auth.Publish, m.Channel); err != nil {
			return nil, err
		}
		if err := s.checkRate(nil, r, id); err != nil {
			return nil, err
		}
		return broker.StartPublish(r.Context(), s.b, m)
	})
}
