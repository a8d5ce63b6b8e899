package bridge_test

import (
	"context"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/pushctl/pushctl/internal/bridge"
	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/server"
)

// The HTTP sink adds an Idempotency-Key to every POST but a pushctl
// /pub/CH?lines=1 URL, which refuses a key (it names one message): a
// bridge into such a URL keeps working.
func TestHTTPSinkIntoLinesEndpoint(t *testing.T) {
	br := broker.NewMemory(broker.MemoryOptions{})
	srv := httptest.NewServer(server.New(br, server.Options{}))
	defer func() { srv.CloseClientConnections(); br.Close(); srv.Close() }()
	sink, err := bridge.ParseSink(srv.URL+"/pub/logs?lines=1", bridge.EndpointOptions{}, &bridge.Env{Counters: &bridge.Counters{}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := sink.Send(ctx, bridge.Message{Data: []byte("line 1\nline 2")}); err != nil {
		t.Fatalf("bridge into ?lines=1: %v", err)
	}
}
