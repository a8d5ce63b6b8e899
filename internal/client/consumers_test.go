package client_test

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/client"
	"github.com/pushctl/pushctl/internal/server"
	"github.com/pushctl/pushctl/internal/server/servertest"
)

// TestFetchReadsLinesOfAnySize: a fetch reply's lines are read from a
// reused buffer; deliveries longer than it (a 300 KB message between small
// ones) and the next fetch's deliveries come back whole, each once.
func TestFetchReadsLinesOfAnySize(t *testing.T) {
	br, url := servertest.Start(t, server.Options{})
	c, err := client.New(url)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.CreateConsumer(ctx, "w", client.ConsumerOptions{Channel: "big"}); err != nil {
		t.Fatal(err)
	}
	var want [][]byte
	for i := range 12 {
		data := []byte(fmt.Sprintf("small %d", i))
		if i%4 == 1 {
			data = bytes.Repeat([]byte(fmt.Sprintf("%d-large\\\"é", i)), 30000)
		}
		want = append(want, data)
		if _, _, err := br.Publish(ctx, &broker.Message{Channel: "big", Data: data}); err != nil {
			t.Fatal(err)
		}
	}
	var got [][]byte
	for len(got) < len(want) {
		ds, err := c.Fetch(ctx, "w", 5, 5*time.Second, client.ConsumerOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ids := make([]string, 0, len(ds))
		for _, d := range ds {
			if d.Msg == nil || d.Consumer != "w" || d.Msg.Channel != "big" {
				t.Fatalf("delivery %+v", d)
			}
			got = append(got, d.Msg.Data)
			ids = append(ids, d.ID)
		}
		if _, err := c.Ack(ctx, "w", ids); err != nil {
			t.Fatal(err)
		}
	}
	if len(got) != len(want) {
		t.Fatalf("got %d deliveries, want %d", len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("delivery %d: %d bytes starting %q, want %d bytes starting %q", i, len(got[i]), clip(got[i]), len(want[i]), clip(want[i]))
		}
	}
}

func clip(b []byte) string { return strings.ToValidUTF8(string(b[:min(len(b), 30)]), "?") }
