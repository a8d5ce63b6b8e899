package client_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/client"
	"github.com/pushctl/pushctl/internal/server"
	"github.com/pushctl/pushctl/internal/server/servertest"
)

// BenchmarkFetchAck: one client fetching batches of 1000 from a durable
// consumer and acknowledging each batch in one request (what sub
// --durable does), per message.
func BenchmarkFetchAck(b *testing.B) {
	br, url := servertest.Start(b, server.Options{})
	c, err := client.New(url)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if _, err := c.CreateConsumer(ctx, "w", client.ConsumerOptions{Channel: "bench", MaxPending: 10000000}); err != nil {
		b.Fatal(err)
	}
	data := []byte(strings.Repeat("x", 100))
	for i := 0; i < b.N; i++ {
		if _, _, err := br.Publish(ctx, &broker.Message{Channel: "bench", Data: data}); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for got := 0; got < b.N; {
		ds, err := c.Fetch(ctx, "w", 1000, 5*time.Second, client.ConsumerOptions{})
		if err != nil {
			b.Fatal(err)
		}
		ids := make([]string, len(ds))
		for i, d := range ds {
			ids[i] = d.ID
		}
		if _, err := c.Ack(ctx, "w", ids); err != nil {
			b.Fatal(err)
		}
		got += len(ds)
	}
}
