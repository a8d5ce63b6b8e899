package server

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pushctl/pushctl/internal/auth"
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

// accessError maps auth errors to HTTP errors.
func accessError(err error) *Error {
	switch {
	case errors.Is(err, auth.ErrNoToken):
		return &Error{Status: http.StatusUnauthorized, Code: CodeTokenMissing, Message: "a token is required: send Authorization: Bearer <token> or ?token=<token>"}
	case errors.Is(err, auth.ErrExpired):
		return &Error{Status: http.StatusUnauthorized, Code: CodeTokenExpired, Message: "the token has expired; get a new one"}
	case errors.Is(err, auth.ErrBadToken):
		return &Error{Status: http.StatusUnauthorized, Code: CodeTokenInvalid, Message: err.Error()}
	case errors.Is(err, auth.ErrForbidden):
		return &Error{Status: http.StatusForbidden, Code: CodeForbidden, Message: err.Error()}
	}
	return nil
}

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
	id, err := s.auth.Authenticate(tokenOf(r), s.remoteAddr(r))
	if err != nil {
		s.limitHit("bad_token")
		return nil, accessError(err)
	}
	return id, nil
}

// allow checks one action; a refusal is counted.
func (s *Server) allow(id *auth.Identity, a auth.Action, channel string) error {
	if err := s.auth.Allow(id, a, channel); err != nil {
		s.limitHit("denied")
		return accessError(err)
	}
	return nil
}

// limitHit counts a limit or refusal by name (exported in /metrics).
func (s *Server) limitHit(name string) {
	v, _ := s.limitHits.LoadOrStore(name, new(atomic.Uint64))
	v.(*atomic.Uint64).Add(1)
}

// rateLimiter is a token bucket per key.
type rateLimiter struct {
	rate  float64
	burst float64
	mu    sync.Mutex
	bkts  map[string]*bucket
	last  time.Time
}

type bucket struct {
	tokens float64
	at     time.Time
}

func newRateLimiter(rate float64, burst int) *rateLimiter {
	if burst <= 0 {
		burst = max(1, int(rate))
	}
	return &rateLimiter{rate: rate, burst: float64(burst), bkts: map[string]*bucket{}}
}

// take spends one token for key, or says how long until one is there.
func (l *rateLimiter) take(key string, now time.Time) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.last) > time.Minute { // forget idle keys, bounding memory
		for k, b := range l.bkts {
			if now.Sub(b.at) > time.Minute {
				delete(l.bkts, k)
			}
		}
		l.last = now
	}
	b := l.bkts[key]
	if b == nil {
		b = &bucket{tokens: l.burst, at: now}
		l.bkts[key] = b
	}
	if b.take(l.rate, l.burst, now) {
		return true, 0
	}
	return false, time.Duration((1 - b.tokens) / l.rate * float64(time.Second))
}

// take refills the bucket for the time since its last use and spends one
// token if there is one.
func (b *bucket) take(rate, burst float64, now time.Time) bool {
	b.tokens = min(burst, b.tokens+now.Sub(b.at).Seconds()*rate)
	b.at = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// checkRate applies the publish rate limit to id (or the address).
func (s *Server) checkRate(w http.ResponseWriter, r *http.Request, id *auth.Identity) error {
	if s.rate == nil {
		return nil
	}
	return s.checkRateKey(w, s.clientKey(r), id)
}

// checkRateKey is checkRate for a client known by its address key.
func (s *Server) checkRateKey(w http.ResponseWriter, client string, id *auth.Identity) error {
	if s.rate == nil {
		return nil
	}
	key := id.Key()
	if key == "" {
		key = "ip:" + client
	}
	ok, wait := s.rate.take(key, time.Now())
	if ok {
		return nil
	}
	s.limitHit("publish_rate")
	secs := int(wait/time.Second) + 1
	if w != nil {
		w.Header().Set("Retry-After", strconv.Itoa(secs))
	}
	return &Error{Status: http.StatusTooManyRequests, Code: CodeRateLimited, Message: fmt.Sprintf("publishing faster than %g messages/s; retry in %ds", s.opts.Limits.PublishRate, secs)}
}

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
