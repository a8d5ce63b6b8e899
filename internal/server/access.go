package server

import (
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/pushctl/pushctl/internal/auth"
	"github.com/pushctl/pushctl/internal/door"
	"github.com/pushctl/pushctl/internal/wire"
)

// Limits bound what one client may use. Zero values mean no limit.
type Limits struct {
	// ConnsPerIP bounds long-lived connections (streams, WebSockets) per address.
	ConnsPerIP int
	// ChannelsPerConn bounds subscriptions on one WebSocket.
	ChannelsPerConn int
	// PublishRate and PublishBurst bound publishes per second per token
	// (or per address without one).
	PublishRate  float64
	PublishBurst int
	// ReadTimeout bounds reading one ordinary request body (slow senders).
	ReadTimeout time.Duration
}

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

// connSlot counts a long-lived connection against its address's limit;
// release it when the connection ends.
func (s *Server) connSlot(r *http.Request) (release func(), err error) {
	if s.opts.Limits.ConnsPerIP <= 0 {
		return func() {}, nil
	}
	host := s.clientKey(r)
	s.connMu.Lock()
	defer s.connMu.Unlock()
	if s.connsPerIP[host] >= s.opts.Limits.ConnsPerIP {
		s.limitHit("conns_per_ip")
		return nil, &Error{Status: http.StatusTooManyRequests, Code: CodeTooManyConns, Message: fmt.Sprintf("more than %d connections from one address", s.opts.Limits.ConnsPerIP)}
	}
	s.connsPerIP[host]++
	return func() {
		s.connMu.Lock()
		defer s.connMu.Unlock()
		if s.connsPerIP[host]--; s.connsPerIP[host] <= 0 {
			delete(s.connsPerIP, host)
		}
	}, nil
}

// originAllowed checks a browser's Origin against the configured list.
func (s *Server) originAllowed(origin string) bool {
	if origin == "" || len(s.opts.AllowedOrigins) == 0 {
		return true
	}
	for _, o := range s.opts.AllowedOrigins {
		if o == "*" || strings.EqualFold(o, origin) {
			return true
		}
	}
	return false
}

// cors answers preflights and sets CORS headers for allowed origins.
func (s *Server) cors(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		origin := r.Header.Get("Origin")
		if origin != "" && s.originAllowed(origin) {
			h := w.Header()
			h.Set("Access-Control-Allow-Origin", origin)
			h.Add("Vary", "Origin")
			h.Set("Access-Control-Expose-Headers", "Pushctl-Cursor, Pushctl-Time, Retry-After")
			if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
				h.Set("Access-Control-Allow-Methods", "GET, POST, PUT, DELETE")
				h.Set("Access-Control-Allow-Headers", "Authorization, Content-Type, Last-Event-ID, X-Pushctl-Event, Accept")
				h.Set("Access-Control-Max-Age", "600")
				w.WriteHeader(http.StatusNoContent)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}
