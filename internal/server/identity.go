package server

import (
	"net/http"
	"net/url"
	"strings"

	"github.com/gorilla/websocket"
	"github.com/pushctl/pushctl/internal/auth"
	"github.com/pushctl/pushctl/internal/door"
	"github.com/pushctl/pushctl/internal/hooks"
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

// connectIdentity identifies a connection (a subscribe request or a
// WebSocket): by its token, else by the application's connect hook.
func (s *Server) connectIdentity(r *http.Request) (*auth.Identity, error) {
	token := tokenOf(r)
	if !s.door.AsksConnectHook(token) {
		return s.door.Identify(token, s.remoteAddr(r))
	}
	// The application is asked from the site's cookies, which a browser
	// sends with a WebSocket opened by a page of any site: only the site's
	// own pages (the broker's origin, or one listed in --allowed-origins)
	// may connect that way.
	if origin := r.Header.Get("Origin"); origin != "" && !s.originListed(origin) && !sameHost(origin, r.Host) {
		s.limitHit("origin")
		return nil, errorf(http.StatusForbidden, CodeOriginRejected,
			"a page of %s may not connect with this site's session; list its origin in serve --allowed-origins", origin)
	}
	return s.door.Connect(r.Context(), token, s.remoteAddr(r), s.connectRequest(r))
}

// sameHost reports whether origin is a page of host (the broker's own).
func sameHost(origin, host string) bool {
	u, err := url.Parse(origin)
	return err == nil && u.Host != "" && strings.EqualFold(u.Host, host)
}

// connectRequest is what the connect hook is told of a request.
func (s *Server) connectRequest(r *http.Request) hooks.ConnectRequest {
	req := hooks.ConnectRequest{Transport: transportOf(r), Remote: s.clientKey(r)}
	for _, c := range r.Cookies() {
		if req.Cookies == nil {
			req.Cookies = map[string]string{}
		}
		req.Cookies[c.Name] = c.Value
	}
	for _, h := range s.door.ForwardedHeaders() {
		if v := r.Header.Get(h); v != "" {
			if req.Headers == nil {
				req.Headers = map[string]string{}
			}
			req.Headers[http.CanonicalHeaderKey(h)] = v
		}
	}
	for k, vs := range r.URL.Query() {
		if k == "token" || len(vs) == 0 {
			continue
		}
		if req.Query == nil {
			req.Query = map[string]string{}
		}
		req.Query[k] = vs[0]
	}
	return req
}

// transportOf names a subscribe request's transport for the hooks.
func transportOf(r *http.Request) string {
	q := r.URL.Query()
	switch {
	case websocket.IsWebSocketUpgrade(r):
		return "websocket"
	case q.Has("poll"):
		return "long-poll"
	case strings.Contains(r.Header.Get("Accept"), "text/event-stream") || q.Get("format") == "sse":
		return "sse"
	}
	return "stream"
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
