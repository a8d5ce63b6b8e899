package server

import (
	"net/http"
	"strings"
	"time"

	"github.com/pushctl/pushctl/internal/connrt"
)

// HTTP streams (SSE, NDJSON, raw): the response is taken over by the
// subscribe loop's writer, and what the peer sends is read and dropped.

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
