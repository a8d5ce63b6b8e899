package server

import (
	"strconv"

	"github.com/pushctl/pushctl/internal/events"
)

// Connection lifecycle events (docs/events.md): a long-lived connection
// (WebSocket, Pusher, an SSE, NDJSON or raw stream; not a long-poll) is
// opened once it is served and closed with the reason it ended for.

// connOpened emits ss's connection_opened.
func (s *Server) connOpened(ss *session) {
	s.door.ConnectionEvent(events.ConnectionOpened, strconv.FormatUint(ss.id, 10), transportNames[ss.enc.transport()], "", ss.identity())
}

// connClosed emits ss's connection_closed, with the reason finish saw.
func (s *Server) connClosed(ss *session) {
	ss.mu.Lock()
	reason := ss.endCode
	ss.mu.Unlock()
	s.door.ConnectionEvent(events.ConnectionClosed, strconv.FormatUint(ss.id, 10), transportNames[ss.enc.transport()], reason, ss.identity())
}
