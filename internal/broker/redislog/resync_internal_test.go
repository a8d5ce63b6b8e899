package redislog

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/redistest"
)

// roundTrips counts the commands and pipelines a client sends while on.
type roundTrips struct {
	on atomic.Bool
	n  atomic.Int64
}

func (r *roundTrips) DialHook(next redis.DialHook) redis.DialHook { return next }

func (r *roundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if r.on.Load() {
			r.n.Add(1)
		}
		return next(ctx, cmd)
	}
}

func (r *roundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if r.on.Load() {
			r.n.Add(1)
		}
		return next(ctx, cmds)
	}
}

// A node that follows many channels is back from a broken Pub/Sub
// connection in a few round trips, not a few per channel: each one held
// every delivery up (the second review measured 5 s with 3,000 channels
// on a Redis 2 ms away). B follows 300 channels that have a message
// each; they are put on hold as when the connection breaks, A publishes
// a second message on each (B hears and leaves them to the resync), and
// B's resync must deliver all 300 in at most a dozen round trips.
func TestResyncOfManyChannelsInFewRoundTrips(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	o := Options{URL: srv.URL(), Prefix: "many:"}
	a, _ := openCore(t, ctx, o)
	bc, b := openCore(t, ctx, o)
	const n = 300
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("c%d", i)
	}
	live, err := bc.Subscribe(ctx, broker.SubscribeOptions{Channels: names})
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	take := func(round string) {
		t.Helper()
		got := map[string]string{}
		wait, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		for len(got) < n {
			evs, err := live.Next(wait, nil)
			if err != nil {
				t.Fatalf("%d of %d messages %s: %v", len(got), n, round, err)
			}
			for _, e := range evs {
				if e.Msg == nil {
					t.Fatalf("gap notice %s -> %s", e.Gap.From, e.Gap.To)
				}
				got[e.Msg.Channel] = string(e.Msg.Data)
			}
		}
		for _, ch := range names {
			if got[ch] != round+" "+ch {
				t.Fatalf("%s: %q, want %q", ch, got[ch], round+" "+ch)
			}
		}
	}
	publishAll := func(round string) {
		t.Helper()
		for _, ch := range names {
			if _, _, err := a.Publish(ctx, &broker.Message{Channel: ch, Data: []byte(round + " " + ch)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	publishAll("first")
	take("first")

	b.hold(b.onClassic) // as when the connection broke
	publishAll("second")
	// B has heard all 300 (and left them) once this PING's answer is back.
	if err := b.ping(ctx, b.ps); err != nil {
		t.Fatal(err)
	}
	rt := &roundTrips{}
	b.rdb.AddHook(rt)
	rt.on.Store(true)
	if err := b.resync(b.onClassic); err != nil {
		t.Fatal(err)
	}
	rt.on.Store(false)
	take("second")
	if got := rt.n.Load(); got > 12 {
		t.Fatalf("the resync of %d channels took %d round trips; want at most 12", n, got)
	}
	if b.holding.Load() {
		t.Fatal("still holding after the resync")
	}
}

// A message published on a channel on hold after the resync read it,
// and heard (left to the resync) before the resync delivers what it read,
// is delivered by that resync, not only when the next message comes.
func TestHeardWhileResyncReads(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	o := Options{URL: srv.URL(), Prefix: "mid:"}
	a, _ := openCore(t, ctx, o)
	var b *Log
	o.afterResyncRead = func() {
		if _, _, err := a.Publish(ctx, &broker.Message{Channel: "x", Data: []byte("two")}); err != nil {
			t.Error(err)
			return
		}
		// B has heard "two" once this PING's answer is back.
		if err := b.ping(ctx, b.ps); err != nil {
			t.Error(err)
		}
		b.lastMu.Lock()
		heard := b.last["x"].heard.Seq
		b.lastMu.Unlock()
		if heard != 2 {
			t.Errorf("B left %d to the resync, want 2", heard)
		}
	}
	bc, bl := openCore(t, ctx, o)
	b = bl
	live, err := bc.Subscribe(ctx, broker.SubscribeOptions{Channels: []string{"x"}})
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	if _, _, err := a.Publish(ctx, &broker.Message{Channel: "x", Data: []byte("one")}); err != nil {
		t.Fatal(err)
	}
	expectNext(t, ctx, live, "one")
	b.hold(b.onClassic)
	if err := b.resync(b.onClassic); err != nil {
		t.Fatal(err)
	}
	expectNext(t, ctx, live, "two")
}

// BenchmarkResync: one resync of channels on hold (-benchtime Nx; the
// channels' count is resyncBenchChannels), each with a message to refill.
// It reports the resync's wall time and round trips per op.
func BenchmarkResync(b *testing.B) {
	srv := redistest.Start(b, redistest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	o := Options{URL: srv.URL(), Prefix: "rb:"}
	a, _ := openCore(b, ctx, o)
	nc, node := openCore(b, ctx, o)
	names := make([]string, resyncBenchChannels)
	for i := range names {
		names[i] = fmt.Sprintf("c%d", i)
	}
	live, err := nc.Subscribe(ctx, broker.SubscribeOptions{Channels: names})
	if err != nil {
		b.Fatal(err)
	}
	defer live.Close()
	drain := func() {
		got := 0
		for got < len(names) {
			evs, err := live.Next(ctx, nil)
			if err != nil {
				b.Fatal(err)
			}
			got += len(evs)
		}
	}
	publishAll := func() {
		for _, ch := range names {
			if _, _, err := a.Publish(ctx, &broker.Message{Channel: ch, Data: []byte("m")}); err != nil {
				b.Fatal(err)
			}
		}
	}
	publishAll()
	drain()
	rt := &roundTrips{}
	node.rdb.AddHook(rt)
	var took time.Duration
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		node.hold(node.onClassic)
		publishAll()
		if err := node.ping(ctx, node.ps); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		rt.on.Store(true)
		start := time.Now()
		if err := node.resync(node.onClassic); err != nil {
			b.Fatal(err)
		}
		took += time.Since(start)
		rt.on.Store(false)
		b.StopTimer()
		drain()
		b.StartTimer()
	}
	b.ReportMetric(float64(took.Milliseconds())/float64(b.N), "ms/resync")
	b.ReportMetric(float64(rt.n.Load())/float64(b.N), "roundtrips/resync")
}

const resyncBenchChannels = 3000
