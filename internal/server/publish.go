package server

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"time"
	"unicode/utf8"

	"github.com/pushctl/pushctl/internal/auth"
	"github.com/pushctl/pushctl/internal/broker"
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
	return ev, validateEvent(ev)
}

func validateEvent(ev string) error {
	if len(ev) > 128 {
		return errorf(http.StatusBadRequest, CodeInvalidParameter, "event name longer than 128 bytes")
	}
	if !utf8.ValidString(ev) {
		return errorf(http.StatusBadRequest, CodeInvalidParameter, "event name is not valid UTF-8")
	}
	for i := 0; i < len(ev); i++ {
		if ev[i] < 0x20 || ev[i] == 0x7f {
			return errorf(http.StatusBadRequest, CodeInvalidParameter, "event name contains a control character")
		}
	}
	return nil
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
	return writeJSON(w, http.StatusOK, ackOf(m, n))
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
	w     http.ResponseWriter
	bw    *bufio.Writer
	rc    *http.ResponseController
	enc   *json.Encoder
	count int
}

func newAckWriter(w http.ResponseWriter) *ackWriter {
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	bw := bufio.NewWriterSize(w, 32<<10)
	return &ackWriter{w: w, bw: bw, rc: http.NewResponseController(w), enc: json.NewEncoder(bw)}
}

func (a *ackWriter) write(v any, buffered bool) error {
	if err := a.enc.Encode(v); err != nil {
		return err
	}
	if !buffered {
		if err := a.bw.Flush(); err != nil {
			return err
		}
		return a.rc.Flush()
	}
	return nil
}

func (a *ackWriter) lineError(line int, err error) error {
	e := asError(err)
	if errors.Is(err, errLineTooLong) {
		e = &Error{http.StatusRequestEntityTooLarge, CodeTooLarge, "line longer than the message size limit"}
	}
	return a.write(map[string]any{"line": line, "error": e}, false)
}

// streamPublish reads lines, queues each publish via fn and streams one
// ack (or error) per line, in order. A goroutine writes the acks as the
// publishes complete, so a durable broker stores many lines per commit.
func (s *Server) streamPublish(w http.ResponseWriter, r *http.Request, fn func(line []byte) (func() (*broker.Message, int, error), error)) error {
	rc := http.NewResponseController(w)
	// Acks stream while the body is still arriving; servers that cannot
	// do that (HTTP/2 always can) just buffer them.
	rc.EnableFullDuplex()
	lr := &lineReader{br: bufio.NewReaderSize(r.Body, 64<<10), max: int(s.opts.MaxMessageSize) * 2}
	aw := newAckWriter(w)
	type reply struct {
		line int
		wait func() (*broker.Message, int, error)
		err  error
	}
	replies := make(chan reply, 1024)
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		failed := false
		for rp := range replies {
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
					werr = aw.write(ack, len(replies) > 0)
				}
				err = perr
			}
			if err != nil {
				werr = aw.lineError(rp.line, err)
			}
			failed = werr != nil
		}
		aw.bw.Flush()
	}()
	for {
		line, err := lr.next()
		if err == io.EOF {
			break
		}
		if err != nil && !errors.Is(err, errLineTooLong) {
			replies <- reply{line: lr.line, err: errorf(http.StatusBadRequest, CodeInvalidParameter, "reading body: %v", err)}
			break
		}
		if err != nil {
			replies <- reply{line: lr.line, err: err}
			continue
		}
		if len(line) == 0 {
			continue
		}
		wait, err := fn(line)
		replies <- reply{line: lr.line, wait: wait, err: err}
	}
	close(replies)
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

// PublishFrame is one message to publish, as an NDJSON line of POST /pub
// or a WebSocket "publish" frame.
type PublishFrame struct {
	Type     string          `json:"type,omitempty"`
	Ref      string          `json:"ref,omitempty"`
	Channel  string          `json:"channel"`
	Event    string          `json:"event,omitempty"`
	Data     json.RawMessage `json:"data"`
	Encoding string          `json:"encoding,omitempty"`
}

// message turns the frame into a broker message: a JSON string is text (or
// binary with "encoding":"base64"), any other JSON value stays JSON.
func (f *PublishFrame) message(max int64) (*broker.Message, error) {
	if err := broker.ValidateChannel(f.Channel); err != nil {
		return nil, err
	}
	if err := validateEvent(f.Event); err != nil {
		return nil, err
	}
	m := &broker.Message{Channel: f.Channel, Event: f.Event}
	switch {
	case len(f.Data) == 0 || string(f.Data) == "null":
		m.Kind = broker.KindText
	case f.Data[0] == '"':
		var str string
		if err := json.Unmarshal(f.Data, &str); err != nil {
			return nil, errorf(http.StatusBadRequest, CodeInvalidJSON, "data: %v", err)
		}
		m.Data = []byte(str)
		switch f.Encoding {
		case "":
		case "base64":
			b, err := base64.StdEncoding.DecodeString(str)
			if err != nil {
				return nil, errorf(http.StatusBadRequest, CodeInvalidParameter, "data is not valid base64: %v", err)
			}
			m.Data, m.Kind = b, broker.KindBinary
		default:
			return nil, errorf(http.StatusBadRequest, CodeInvalidParameter, "unknown encoding %q (only base64)", f.Encoding)
		}
	default:
		m.Data, m.Kind = bytes.Clone(f.Data), broker.KindJSON
	}
	if int64(len(m.Data)) > max {
		return nil, errorf(http.StatusRequestEntityTooLarge, CodeTooLarge, "message larger than the limit of %d bytes", max)
	}
	return m, nil
}

// publishBatch handles POST /pub: NDJSON, one PublishFrame per line; a
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
		var f PublishFrame
		if err := json.Unmarshal(line, &f); err != nil {
			return nil, errorf(http.StatusBadRequest, CodeInvalidJSON, "not a JSON object: %v", err)
		}
		if f.Channel == "" {
			f.Channel = def
		}
		m, err := f.message(s.opts.MaxMessageSize)
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
