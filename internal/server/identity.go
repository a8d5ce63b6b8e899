package server

import (
	"net/http"
	"strings"

	"github.com/pushctl/pushctl/internal/auth"
	"github.com/pushctl/pushctl/internal/door"
	"github.com/pushctl/pushctl/internal/wire"
)

// Access error codes.
const (
	CodeTokenMissing   = wire.CodeTokenMissing
	CodeTokenInvalid   = wire.CodeTokenInvalid
	CodeTokenExpired   = wire.CodeTokenExpired
	CodeForbidden      = wire.CodeForbidden
	CodeRateLimited    = wire.CodeRateLimited
	CodeTooManyConns   = wire.CodeTooManyConns
	CodeOriginRejected = wire.CodeOriginRejected
)

// accessError maps auth errors to HTTP errors (nil: not one).
func accessError(err error) *Error { return door.AccessError(err) }

// tokenOf returns the request's token: the Authorization header, else
// the token query parameter (for EventSource and browser WebSockets).
func tokenOf(r *http.Request) string {
	if h := r.Header.Get("Authorization"); h != "" {
		if t, ok := strings.CutPrefix(h, "Bearer "); ok {
			return strings.TrimSpace(t)
		}
		return "\x00invalid" // a scheme we do not take fails as a bad token
	}
	return r.URL.Query().Get("token")
}

// identity authenticates the request. Errors are access errors.
func (s *Server) identity(r *http.Request) (*auth.Identity, error) {
	return s.door.Identify(tokenOf(r), s.remoteAddr(r))
}

// caller is who the request is, for the door.
func (s *Server) caller(r *http.Request, id *auth.Identity) door.Caller {
	return door.Caller{ID: id, Client: s.clientKey(r)}
}

// allow checks one grant of id; a refusal is counted.
func (s *Server) allow(id *auth.Identity, a auth.Action, channel string) error {
	return s.door.Allow(door.Caller{ID: id}, a, channel)
}

// limitHit counts a limit or refusal by name (exported in /metrics).
func (s *Server) limitHit(name string) { s.door.Refuse(name) }
