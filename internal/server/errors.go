package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"

	"github.com/pushctl/pushctl/internal/broker"
)

// Error codes are stable: clients and scripts match on them. They are
// listed in docs/errors.md.
const (
	CodeInvalidChannel   = "invalid_channel"
	CodeInvalidPosition  = "invalid_position"
	CodeInvalidParameter = "invalid_parameter"
	CodeInvalidJSON      = "invalid_json"
	CodeInvalidFrame     = "invalid_frame"
	CodeTooLarge         = "message_too_large"
	CodeNotFound         = "not_found"
	CodeChannelNotFound  = "channel_not_found"
	CodeMethodNotAllowed = "method_not_allowed"
	CodeWaitTimeout      = "wait_timeout"
	CodeSlowConsumer     = "slow_consumer"
	CodeChannelDeleted   = "channel_deleted"
	CodeShuttingDown     = "shutting_down"
	CodeInternal         = "internal_error"
	CodeStoreFailed      = "store_failed"
	CodeRequestTimeout   = "request_timeout"
)

// Error is an error with an HTTP status and a stable code.
type Error struct {
	Status  int    `json:"status"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

func errorf(status int, code, format string, args ...any) *Error {
	return &Error{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

// asError maps any error to an *Error.
func asError(err error) *Error {
	var e *Error
	if ae := accessError(err); ae != nil {
		return ae
	}
	switch {
	case errors.As(err, &e):
		return e
	case errors.Is(err, broker.ErrInvalidChannel):
		return &Error{http.StatusBadRequest, CodeInvalidChannel, err.Error()}
	case errors.Is(err, broker.ErrInvalidPosition):
		return &Error{http.StatusBadRequest, CodeInvalidPosition, err.Error()}
	case errors.Is(err, broker.ErrNotFound):
		return &Error{http.StatusNotFound, CodeChannelNotFound, err.Error()}
	case errors.Is(err, broker.ErrTooLarge):
		return &Error{http.StatusRequestEntityTooLarge, CodeTooLarge, err.Error()}
	case errors.Is(err, broker.ErrSlowConsumer):
		return &Error{http.StatusServiceUnavailable, CodeSlowConsumer, err.Error()}
	case errors.Is(err, broker.ErrChannelDeleted):
		return &Error{http.StatusGone, CodeChannelDeleted, err.Error()}
	case errors.Is(err, broker.ErrClosed):
		return &Error{http.StatusServiceUnavailable, CodeShuttingDown, "the broker is shutting down; reconnect and resume from the last id"}
	case errors.Is(err, broker.ErrStore):
		return &Error{http.StatusInsufficientStorage, CodeStoreFailed, "the message could not be stored (disk full or failing); it was not published: " + err.Error()}
	case errors.Is(err, context.DeadlineExceeded):
		return &Error{http.StatusRequestTimeout, CodeWaitTimeout, "timed out waiting"}
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, os.ErrDeadlineExceeded) {
		return &Error{http.StatusRequestTimeout, CodeRequestTimeout, "the request body did not arrive in time"}
	}
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return &Error{http.StatusRequestEntityTooLarge, CodeTooLarge, fmt.Sprintf("message larger than the limit of %d bytes", mbe.Limit)}
	}
	return &Error{http.StatusInternalServerError, CodeInternal, "internal error"}
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
	if e.Status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="pushctl"`)
	}
	w.WriteHeader(e.Status)
	json.NewEncoder(w).Encode(struct {
		Error *Error `json:"error"`
	}{e})
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
