package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/connrt"
	"github.com/pushctl/pushctl/internal/wire"
)

// Error codes, defined once in wire (docs/errors.md lists them).
const (
	CodeInvalidChannel   = wire.CodeInvalidChannel
	CodeInvalidPosition  = wire.CodeInvalidPosition
	CodeInvalidParameter = wire.CodeInvalidParameter
	CodeInvalidJSON      = wire.CodeInvalidJSON
	CodeInvalidFrame     = wire.CodeInvalidFrame
	CodeTooLarge         = wire.CodeTooLarge
	CodeNotFound         = wire.CodeNotFound
	CodeChannelNotFound  = wire.CodeChannelNotFound
	CodeMethodNotAllowed = wire.CodeMethodNotAllowed
	CodeWaitTimeout      = wire.CodeWaitTimeout
	CodeSlowConsumer     = wire.CodeSlowConsumer
	CodeStalled          = wire.CodeStalled
	CodeChannelDeleted   = wire.CodeChannelDeleted
	CodeShuttingDown     = wire.CodeShuttingDown
	CodeInternal         = wire.CodeInternal
	CodeStoreFailed      = wire.CodeStoreFailed
	CodeRequestTimeout   = wire.CodeRequestTimeout
	CodeAckBacklog       = wire.CodeAckBacklog
)

// Error is an error with an HTTP status and a stable code.
type Error = wire.Error

func errorf(status int, code, format string, args ...any) *Error {
	return wire.Errorf(status, code, format, args...)
}

// asError maps any error to an *Error.
func asError(err error) *Error {
	var e *Error
	if ae := accessError(err); ae != nil {
		return ae
	}
	if pe := presenceError(err); pe != nil {
		return pe
	}
	switch {
	case errors.As(err, &e):
		return e
	case errors.Is(err, connrt.ErrStalled):
		return errStalledError
	case errors.Is(err, broker.ErrInvalidChannel):
		return &Error{Status: http.StatusBadRequest, Code: CodeInvalidChannel, Message: err.Error()}
	case errors.Is(err, broker.ErrInvalidPosition):
		return &Error{Status: http.StatusBadRequest, Code: CodeInvalidPosition, Message: err.Error()}
	case errors.Is(err, broker.ErrNotFound):
		return &Error{Status: http.StatusNotFound, Code: CodeChannelNotFound, Message: err.Error()}
	case errors.Is(err, broker.ErrTooLarge):
		return &Error{Status: http.StatusRequestEntityTooLarge, Code: CodeTooLarge, Message: err.Error()}
	case errors.Is(err, broker.ErrSlowConsumer):
		return &Error{Status: http.StatusServiceUnavailable, Code: CodeSlowConsumer, Message: err.Error()}
	case errors.Is(err, broker.ErrChannelDeleted):
		return &Error{Status: http.StatusGone, Code: CodeChannelDeleted, Message: err.Error()}
	case errors.Is(err, broker.ErrClosed):
		return &Error{Status: http.StatusServiceUnavailable, Code: CodeShuttingDown, Message: "the broker is shutting down; reconnect and resume from the last id"}
	case errors.Is(err, broker.ErrStore):
		return &Error{Status: http.StatusInsufficientStorage, Code: CodeStoreFailed, Message: "the broker's store refused the write (a full or failing disk, or Redis over its maxmemory or unable to save); nothing was published or changed: " + err.Error()}
	case errors.Is(err, broker.ErrOutcomeUnknown):
		return &Error{Status: http.StatusServiceUnavailable, Code: wire.CodeOutcomeUnknown, Message: "the broker's storage (Redis) did not answer in time; the message may or may not have been published (never twice); check the channel's history before publishing it again: " + err.Error()}
	case errors.Is(err, broker.ErrUnavailable):
		return &Error{Status: http.StatusServiceUnavailable, Code: wire.CodeUnavailable, Message: "the broker's storage (Redis) is unreachable; nothing was published; retry, or use another node: " + err.Error()}
	case errors.Is(err, context.DeadlineExceeded):
		return &Error{Status: http.StatusRequestTimeout, Code: CodeWaitTimeout, Message: "timed out waiting"}
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, os.ErrDeadlineExceeded) {
		return &Error{Status: http.StatusRequestTimeout, Code: CodeRequestTimeout, Message: "the request body did not arrive in time"}
	}
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return &Error{Status: http.StatusRequestEntityTooLarge, Code: CodeTooLarge, Message: fmt.Sprintf("message larger than the limit of %d bytes", mbe.Limit)}
	}
	return &Error{Status: http.StatusInternalServerError, Code: CodeInternal, Message: "internal error"}
}

// writeError sends err as a JSON error body.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	e := asError(err)
	s.metrics.errors.Add(1)
	if e.Status >= 500 && e.Code == CodeInternal {
		s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if e.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(e.RetryAfter))
	}
	if e.Status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="pushctl"`)
	}
	w.WriteHeader(e.Status)
	newEncoder(w).Encode(wire.ErrorReply{Error: e})
}

// newEncoder is a JSON encoder for bodies people and tools read: <, > and &
// stay as they are (encoding/json would write \u003c… for HTML pages; no
// body of this server is HTML).
func newEncoder(w io.Writer) *json.Encoder {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	return enc
}

// handlerFunc is an HTTP handler that returns its error.
type handlerFunc func(w http.ResponseWriter, r *http.Request) error

func (s *Server) handle(h handlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := h(w, r); err != nil {
			s.writeError(w, r, err)
		}
	})
}
