package server

import (
	"fmt"
	"net/http"
	"time"
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
