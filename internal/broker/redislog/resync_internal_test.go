package redislog

import (
	"context"
	"errors"
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

// manyChannels starts nodes A and B on srv, B subscribed to n channels
// each with a message it got: A's broker, B's log, B's subscription and
// the channels' names.
func manyChannels(t *testing.T, ctx context.Context, srv *redistest.Server, n int) (*broker.Core, *Log, *broker.Subscription, []string) {
	t.Helper()
	o := Options{URL: srv.URL(), Prefix: "many:"}
	a, _ := openCore(t, ctx, o)
	bc, b := openCore(t, ctx, o)
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("c%d", i)
	}
	live, err := bc.Subscribe(ctx, broker.SubscribeOptions{Channels: names})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(live.Close)
	publishAll(t, ctx, a, names, "first")
	takeAll(t, ctx, live, names, "first", false)
	return a, b, live, names
}

func publishAll(t *testing.T, ctx context.Context, a *broker.Core, names []string, round string) {
	t.Helper()
	for _, ch := range names {
		if _, _, err := a.Publish(ctx, &broker.Message{Channel: ch, Data: []byte(round + " " + ch)}); err != nil {
			t.Fatal(err)
		}
	}
}

// takeAll takes from live exactly one message of round per channel (each
// after a gap notice, with gap), and checks nothing else came.
func takeAll(t *testing.T, ctx context.Context, live *broker.Subscription, names []string, round string, gap bool) {
	t.Helper()
	got, gaps := map[string]string{}, map[string]int{}
	wait, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	for len(got) < len(names) {
		evs, err := live.Next(wait, nil)
		if err != nil {
			t.Fatalf("%d of %d messages %s: %v", len(got), len(names), round, err)
		}
		for _, e := range evs {
			if e.Gap != nil {
				if !gap || got[e.Gap.Channel] != "" {
					t.Fatalf("gap notice %s %s -> %s", e.Gap.Channel, e.Gap.From, e.Gap.To)
				}
				gaps[e.Gap.Channel]++
				continue
			}
			if got[e.Msg.Channel] != "" || gap && gaps[e.Msg.Channel] != 1 {
				t.Fatalf("%s: %q after %q and %d gap notices", e.Msg.Channel, e.Msg.Data, got[e.Msg.Channel], gaps[e.Msg.Channel])
			}
			got[e.Msg.Channel] = string(e.Msg.Data)
		}
	}
	for _, ch := range names {
		if got[ch] != round+" "+ch {
			t.Fatalf("%s: %q, want %q", ch, got[ch], round+" "+ch)
		}
	}
	if evs, _ := live.TryNext(nil); len(evs) > 0 {
		t.Fatalf("more than one event per channel: then %+v", evs[0])
	}
}

// resyncCounted runs b's resync of its classic connection's channels and
// returns the round trips it made to Redis.
func resyncCounted(t *testing.T, b *Log) int64 {
	t.Helper()
	rt := &roundTrips{}
	b.rdb.AddHook(rt)
	rt.on.Store(true)
	if err := b.resync(b.onClassic); err != nil {
		t.Fatal(err)
	}
	rt.on.Store(false)
	if b.holding.Load() {
		t.Fatal("still holding after the resync")
	}
	return rt.n.Load()
}

// A node that follows many channels is back from a broken Pub/Sub
// connection in a few round trips, not a few per channel: each one held
// every delivery up (the second review measured 5 s with 3,000 channels
// on a Redis 2 ms away). B follows 300 channels that have a message
// each; they are put on hold as when the connection breaks, A publishes
// a second message on each (B hears and leaves them to the resync), and
// B's resync must deliver each once in at most a dozen round trips.
func TestResyncOfManyChannelsInFewRoundTrips(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, b, live, names := manyChannels(t, ctx, srv, 300)
	b.hold(b.onClassic) // as when the connection broke
	publishAll(t, ctx, a, names, "second")
	// B has heard all 300 (and left them) once this PING's answer is back.
	if err := b.ping(ctx, b.ps); err != nil {
		t.Fatal(err)
	}
	n := resyncCounted(t, b)
	takeAll(t, ctx, live, names, "second", false)
	if n > 12 {
		t.Fatalf("the resync of %d channels took %d round trips; want at most 12", len(names), n)
	}
}

// The same when Redis lost every channel (restarted without persistence):
// each subscriber gets a gap notice, then the channel's first message of
// its new epoch, in a few round trips (the channels' new epochs read
// together; the first pipelined resync read them one at a time).
func TestResyncOfLostChannelsInFewRoundTrips(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, b, live, names := manyChannels(t, ctx, srv, 300)
	b.hold(b.onClassic)
	if err := newRedisClient(t, srv.Addr()).FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	publishAll(t, ctx, a, names, "second")
	if err := b.ping(ctx, b.ps); err != nil {
		t.Fatal(err)
	}
	n := resyncCounted(t, b)
	takeAll(t, ctx, live, names, "second", true)
	if n > 12 {
		t.Fatalf("the resync of %d lost channels took %d round trips; want at most 12", len(names), n)
	}
}

// failScriptLoad makes a client's SCRIPT LOAD fail.
type failScriptLoad struct{}

func (failScriptLoad) DialHook(next redis.DialHook) redis.DialHook { return next }

func (failScriptLoad) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if a := cmd.Args(); len(a) > 1 && cmd.Name() == "script" && fmt.Sprint(a[1]) == "load" {
			cmd.SetErr(errors.New("test: SCRIPT LOAD refused"))
			return cmd.Err()
		}
		return next(ctx, cmd)
	}
}

func (failScriptLoad) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// Redis forgot the scripts (it restarted) and loading them again fails:
// the channels on hold are still compared with Redis and refilled (the
// read sends the script itself), not let go as if only they could not
// be read (the first pipelined resync took NOSCRIPT for one channel's
// error: the message B left to it never came).
func TestResyncWhenScriptsCannotBeLoaded(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, b, live, names := manyChannels(t, ctx, srv, 3)
	b.hold(b.onClassic)
	publishAll(t, ctx, a, names, "second")
	if err := b.ping(ctx, b.ps); err != nil {
		t.Fatal(err)
	}
	if err := newRedisClient(t, srv.Addr()).ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	b.rdb.AddHook(failScriptLoad{})
	if err := b.resync(b.onClassic); err != nil {
		t.Fatal(err)
	}
	takeAll(t, ctx, live, names, "second", false)
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
