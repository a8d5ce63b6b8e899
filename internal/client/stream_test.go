package client_test

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/client"
	"github.com/pushctl/pushctl/internal/server"
	"github.com/pushctl/pushctl/internal/server/servertest"
)

// TestStreamDeliversEveryMessageInOrder: a stream of messages of every
// data kind (text, JSON, binary, empty, large), sent faster than the
// broker acknowledges them, arrives whole and in order, each acked once;
// the broker's keepalive pings in between are answered through the same
// writer without breaking a frame.
func TestStreamDeliversEveryMessageInOrder(t *testing.T) {
	b, url := servertest.Start(t, server.Options{PingInterval: time.Millisecond})
	sub, err := b.Subscribe(context.Background(), broker.SubscribeOptions{Channels: []string{"s"}})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	c, err := client.New(url)
	if err != nil {
		t.Fatal(err)
	}
	var acks []client.Ack
	s, err := c.OpenStream(context.Background(), func(a client.Ack) { acks = append(acks, a) })
	if err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 70000) // the 64-bit length form
	for i := range big {
		big[i] = 'a' + byte(i%26)
	}
	datas := [][]byte{[]byte("text"), []byte(`{"a": [1, 2]}`), {0xff, 0, 1}, {}, big, []byte(`say "hi"` + "\n\t\u2028")}
	const n = 1200
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	got := make(chan error, 1)
	go func() {
		var evs []broker.Event
		for i := 0; i < n; {
			var err error
			if evs, err = sub.Next(ctx, evs[:0]); err != nil {
				got <- err
				return
			}
			for _, e := range evs {
				want := datas[i%len(datas)]
				if string(want) == `{"a": [1, 2]}` {
					want = []byte(`{"a":[1,2]}`) // JSON travels compacted
				}
				if e.Msg == nil || string(e.Msg.Data) != string(want) {
					got <- fmt.Errorf("message %d: %+v, want %.40q", i+1, e, want)
					return
				}
				i++
			}
		}
		got <- nil
	}()
	for i := range n {
		if err := s.Publish(context.Background(), "s", "", datas[i%len(datas)]); err != nil {
			t.Fatal(err)
		}
	}
	acked, err := s.Close(ctx)
	if err != nil || acked != n {
		t.Fatalf("closed with %d of %d acked: %v", acked, n, err)
	}
	for i, a := range acks {
		if a.Line != i+1 {
			t.Fatalf("ack %d is for message %d", i+1, a.Line)
		}
	}
	if err := <-got; err != nil {
		t.Fatal(err)
	}
}

// BenchmarkStreamPublish: one stream publishing 100-byte lines as fast as
// the broker acknowledges them (what pushctl pub --lines does).
func BenchmarkStreamPublish(b *testing.B) {
	_, url := servertest.Start(b, server.Options{})
	c, err := client.New(url)
	if err != nil {
		b.Fatal(err)
	}
	s, err := c.OpenStream(context.Background(), nil)
	if err != nil {
		b.Fatal(err)
	}
	line := []byte(fmt.Sprintf("%-100s", "line "+strconv.Itoa(42)))
	b.ReportAllocs()
	for b.Loop() {
		if err := s.Publish(context.Background(), "bench", "", line); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := s.Close(context.Background()); err != nil {
		b.Fatal(err)
	}
}
