package server_test

import (
	"context"
	"io"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/server"
)

// BenchmarkFanOutWebSocket publishes one 100-byte message per op to 200
// WebSocket subscribers on loopback (the subscribers' reading runs in the
// same process) and reports deliveries/s. `pushctl bench --against`
// compares the whole broker with nchan; this isolates the hub, encoder
// and writer path for profiling (-cpuprofile).
func BenchmarkFanOutWebSocket(b *testing.B) {
	const subs = 200
	br := broker.NewMemory(broker.MemoryOptions{})
	srv := httptest.NewServer(server.New(br, server.Options{}))
	defer func() {
		srv.CloseClientConnections()
		br.Close()
		srv.Close()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var got atomic.Int64
	target := atomic.Int64{}
	target.Store(-1)
	done := make(chan struct{}, 1)
	for i := 0; i < subs; i++ {
		c, _, err := websocket.DefaultDialer.DialContext(ctx, "ws"+strings.TrimPrefix(srv.URL, "http")+"/sub/fan", nil)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		go func() {
			for {
				_, r, err := c.NextReader()
				if err != nil {
					return
				}
				io.Copy(io.Discard, r)
				if n := got.Add(1); n == target.Load() {
					done <- struct{}{}
				}
			}
		}()
	}
	if err := br.WaitSubscribers(ctx, "fan", subs); err != nil {
		b.Fatal(err)
	}
	data := []byte(strings.Repeat("x", 100))
	b.ResetTimer()
	target.Store(int64(subs * b.N))
	for i := 0; i < b.N; i++ {
		if _, _, err := br.Publish(ctx, &broker.Message{Channel: "fan", Data: data}); err != nil {
			b.Fatal(err)
		}
	}
	if got.Load() < int64(subs*b.N) {
		select {
		case <-done:
		case <-ctx.Done():
			b.Fatalf("%d of %d deliveries", got.Load(), subs*b.N)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(subs*b.N)/b.Elapsed().Seconds(), "deliveries/s")
}
