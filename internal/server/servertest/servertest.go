// Package servertest starts a pushctl broker on loopback for the tests of
// packages that talk to one (commands, clients).
package servertest

import (
	"net/http/httptest"
	"testing"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/server"
)

// Start runs an in-memory broker behind a server on a free loopback port
// until the test ends, and returns the broker and the server's URL.
func Start(t testing.TB, so server.Options) (*broker.Core, string) {
	t.Helper()
	b := broker.NewMemory(broker.MemoryOptions{})
	srv := httptest.NewServer(server.New(b, so))
	t.Cleanup(func() {
		srv.CloseClientConnections()
		b.Close()
		srv.Close()
	})
	return b, srv.URL
}
