package server

import (
	"net/http"
	"strings"
)

// Browsers: which origins may open WebSockets and read replies.

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

// originListed reports whether origin is named in --allowed-origins (not
// merely allowed by "*" or by no list): only those may send cookies.
func (s *Server) originListed(origin string) bool {
	for _, o := range s.opts.AllowedOrigins {
		if o != "*" && strings.EqualFold(o, origin) {
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
			h.Set("Access-Control-Expose-Headers", "Pushctl-Cursor, Pushctl-Time, Retry-After, "+streamExposedHeaders)
			if s.originListed(origin) && s.door.HasConnectHook() {
				// The site's pages may send its cookies (a connect hook
				// reads the session); any other origin's requests go
				// without them.
				h.Set("Access-Control-Allow-Credentials", "true")
			}
			if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
				h.Set("Access-Control-Allow-Methods", "GET, HEAD, POST, PUT, DELETE")
				h.Set("Access-Control-Allow-Headers", "Authorization, Content-Type, Last-Event-ID, X-Pushctl-Event, Idempotency-Key, Accept, "+streamAllowedHeaders)
				h.Set("Access-Control-Max-Age", "600")
				w.WriteHeader(http.StatusNoContent)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}
