package consumer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/broker/redislog"
	"github.com/pushctl/pushctl/internal/redistest"
)

// Consumers on Redis, against a real redis-server (and a Redis Cluster):
// two nodes (a broker and a RedisEngine each) sharing one Redis.

var testPrefixes atomic.Int64

type redisNode struct {
	b *broker.Core
	e *RedisEngine
}

// redisNodes starts n nodes on url sharing one key prefix.
func redisNodes(t *testing.T, url string, n int) []*redisNode {
	t.Helper()
	return redisNodesWith(t, url, fmt.Sprintf("ct%d:", testPrefixes.Add(1)), n)
}

// redisNodesWith starts n nodes on url with key prefix prefix.
func redisNodesWith(t *testing.T, url, prefix string, n int) []*redisNode {
	t.Helper()
	return redisNodesOpts(t, url, prefix, n, nil)
}

// redisNodesOpts starts n nodes, each node's log options changed by set.
func redisNodesOpts(t *testing.T, url, prefix string, n int, set func(i int, o *redislog.Options)) []*redisNode {
	t.Helper()
	var out []*redisNode
	for i := 0; i < n; i++ {
		hub := broker.NewHub()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		o := redislog.Options{URL: url, Prefix: prefix, NodeTimeout: 600 * time.Millisecond,
			Retention: broker.Retention{HistorySize: 1000}}
		if set != nil {
			set(i, &o)
		}
		l, err := redislog.Open(ctx, o, hub)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		b := broker.New(hub, l, broker.CoreOptions{})
		e, err := NewRedis(b, RedisOptions{Client: l.Client(), Prefix: l.Prefix(), LeaseTTL: l.LeaseTTL()})
		if err != nil {
			t.Fatal(err)
		}
		nd := &redisNode{b: b, e: e}
		t.Cleanup(func() { nd.close() })
		out = append(out, nd)
	}
	return out
}

func (n *redisNode) close() {
	n.e.Close()
	n.b.Close()
}

func redisOpen(t *testing.T, n *redisNode, name string, cfg Config) *redisConsumer {
	t.Helper()
	h, err := n.e.Open(name, cfg, true)
	if err != nil {
		t.Fatal(err)
	}
	return h.(*redisConsumer)
}

func redisPublish(t *testing.T, b broker.Broker, ch string, from, to int) {
	t.Helper()
	for i := from; i <= to; i++ {
		if _, _, err := b.Publish(context.Background(), &broker.Message{Channel: ch, Data: []byte(strconv.Itoa(i))}); err != nil {
			t.Fatal(err)
		}
	}
}

func describe(t *testing.T, c Handle) Info {
	t.Helper()
	inf, err := c.Describe(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return inf
}

// waitInfo waits (on wake notices, bounded) until ok holds.
func waitInfo(t *testing.T, c *redisConsumer, what string, ok func(Info) bool) Info {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		wake := c.wakeChan()
		inf := describe(t, c)
		if ok(inf) {
			return inf
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s: %+v", what, inf)
		}
		tm := time.NewTimer(100 * time.Millisecond) // a change without a notice (an ack) is seen at the next look
		select {
		case <-wake:
		case <-tm.C:
		}
		tm.Stop()
	}
}

func fetchAll(t *testing.T, c Handle, n, max int) []Delivery {
	t.Helper()
	var out []Delivery
	deadline := time.Now().Add(10 * time.Second)
	for len(out) < n {
		if time.Now().After(deadline) {
			t.Fatalf("got %d of %d deliveries", len(out), n)
		}
		ds, err := c.Fetch(context.Background(), min(max, n-len(out)), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, ds...)
	}
	return out
}

func forEachRedis(t *testing.T, f func(t *testing.T, url string)) {
	t.Run("redis", func(t *testing.T) { f(t, redistest.Start(t, redistest.Options{}).URL()) })
	t.Run("cluster", func(t *testing.T) { f(t, redistest.StartCluster(t, 3).URL()) })
}

// A consumer created on one node is the same on the other: what one
// fetches the other does not; ack, nack (now and delayed), the ack wait
// and max_deliveries work across nodes, and the dead letter is published
// once and counted.
func TestRedisConsumerSharedByNodes(t *testing.T) {
	forEachRedis(t, func(t *testing.T, url string) {
		ns := redisNodes(t, url, 2)
		a := redisOpen(t, ns[0], "w", Config{Filter: "jobs", AckWait: 300 * time.Millisecond, MaxDeliveries: 2})
		dl, err := ns[1].b.Subscribe(context.Background(), broker.SubscribeOptions{Channels: []string{"_dead.w"}})
		if err != nil {
			t.Fatal(err)
		}
		defer dl.Close()
		bh, err := ns[1].e.Open("w", Config{}, false)
		if err != nil {
			t.Fatal(err)
		}
		b := bh.(*redisConsumer)
		if _, err := ns[1].e.Open("w", Config{Filter: "other"}, true); err == nil {
			t.Fatal("a consumer opened with another filter")
		}
		redisPublish(t, ns[0].b, "jobs", 1, 4)
		waitInfo(t, a, "4 kept", func(i Info) bool { return i.Pending == 4 })
		d1 := fetchAll(t, a, 2, 2)
		d2 := fetchAll(t, b, 2, 5)
		got := map[string]string{}
		for _, d := range append(d1, d2...) {
			got[string(d.Msg.Data)] = d.ID
			if d.Count != 1 {
				t.Fatalf("first delivery %s has count %d", d.ID, d.Count)
			}
		}
		if len(got) != 4 {
			t.Fatalf("the two nodes fetched %v", got)
		}
		// Acked on the other node than the one that fetched it.
		if n, err := b.Ack([]string{got["1"]}); err != nil || n != 1 {
			t.Fatalf("ack: %d %v", n, err)
		}
		if n, _ := a.Ack([]string{got["1"]}); n != 0 {
			t.Fatal("a second ack removed something")
		}
		// 2: nacked now, comes back with count 2, nacked again: dead.
		if ok, dead, err := a.Nack(got["2"], 0); !ok || dead || err != nil {
			t.Fatalf("nack: %v %v %v", ok, dead, err)
		}
		if ok, _, _ := a.Nack(got["2"], 0); ok {
			t.Fatal("a nack of a delivery no longer current counted")
		}
		d := fetchAll(t, b, 1, 1)[0]
		if string(d.Msg.Data) != "2" || d.Count != 2 {
			t.Fatalf("after the nack: %s %q count %d", d.ID, d.Msg.Data, d.Count)
		}
		if ok, dead, err := b.Nack(d.ID, 0); !ok || !dead || err != nil {
			t.Fatalf("last nack: %v %v %v", ok, dead, err)
		}
		// 3: nacked with a delay: not before it.
		start := time.Now()
		if ok, _, err := a.Nack(got["3"], 400*time.Millisecond); !ok || err != nil {
			t.Fatal(ok, err)
		}
		// 4: never answered: after the ack wait (300ms) it comes again.
		var again []Delivery
		for len(again) < 2 {
			ds, err := b.Fetch(context.Background(), 2, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			again = append(again, ds...)
		}
		if e := time.Since(start); e < 300*time.Millisecond {
			t.Fatalf("redelivered after %s, before the ack wait and the delay", e)
		}
		for _, d := range again {
			if d.Count != 2 || (string(d.Msg.Data) != "3" && string(d.Msg.Data) != "4") {
				t.Fatalf("redelivery %s %q", d.ID, d.Msg.Data)
			}
			if n, err := a.Ack([]string{d.ID}); n != 1 || err != nil {
				t.Fatal(n, err)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		evs, err := dl.Next(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		var dead struct {
			Consumer   string
			Deliveries int
			Message    struct{ Data string }
		}
		if err := json.Unmarshal(evs[0].Msg.Data, &dead); err != nil || dead.Consumer != "w" || dead.Deliveries != 2 || dead.Message.Data != "2" {
			t.Fatalf("dead letter %s: %v", evs[0].Msg.Data, err)
		}
		inf := waitInfo(t, b, "dead letter counted", func(i Info) bool { return i.DeadLettered == 1 })
		if inf.Pending != 0 || inf.Acked != 3 || inf.Nacked != 3 || inf.Expired != 1 || inf.Delivered != 7 || inf.Redelivered != 3 || inf.Inflight != 0 {
			t.Fatalf("counters %+v", inf)
		}
		if len(inf.Cursor) != 1 || inf.Cursor["jobs"] == "" {
			t.Fatalf("cursor %v", inf.Cursor)
		}
		// Listing and deleting from either node.
		list, err := ns[1].e.List(context.Background())
		if err != nil || len(list) != 1 || list[0].Name != "w" {
			t.Fatalf("list %v %v", list, err)
		}
		if err := ns[1].e.Delete("w"); err != nil {
			t.Fatal(err)
		}
		if _, err := a.Fetch(context.Background(), 1, 0); !errors.Is(err, ErrNotFound) {
			t.Fatalf("fetch of a deleted consumer: %v", err)
		}
		if _, err := ns[0].e.Open("w", Config{}, false); !errors.Is(err, ErrNotFound) {
			t.Fatalf("open of a deleted consumer: %v", err)
		}
	})
}

// A waiting fetch on one node wakes when a message the other node
// publishes is kept, and at the ack wait of a delivery another node
// held; ordered mode holds one at a time across nodes.
func TestRedisConsumerWaitsAndOrders(t *testing.T) {
	forEachRedis(t, func(t *testing.T, url string) {
		ns := redisNodes(t, url, 2)
		// An exact channel: on Redis Cluster a pattern subscription made
		// while a new channel's first message is published can miss it
		// (a broker bug of its own, reported with this work).
		a := redisOpen(t, ns[0], "o", Config{Filter: "q.x", AckWait: 300 * time.Millisecond, MaxInflight: 1})
		b := redisOpen(t, ns[1], "o", Config{Filter: "q.x"})
		got := make(chan []Delivery, 1)
		go func() {
			ds, err := b.Fetch(context.Background(), 5, 10*time.Second)
			if err != nil {
				t.Error(err)
			}
			got <- ds
		}()
		waitInfo(t, b, "fetch waiting", func(i Info) bool { return i.Fetchers == 1 })
		redisPublish(t, ns[0].b, "q.x", 1, 3)
		ds := <-got
		if len(ds) != 1 || string(ds[0].Msg.Data) != "1" {
			for _, d := range ds {
				t.Logf("got %s %q", d.ID, d.Msg.Data)
			}
			t.Fatalf("ordered: first fetch %v", ds)
		}
		// Nothing else while 1 is in flight; after its ack wait, 1 again.
		start := time.Now()
		d := fetchAll(t, a, 1, 5)[0]
		if string(d.Msg.Data) != "1" || d.Count != 2 || time.Since(start) < 200*time.Millisecond {
			t.Fatalf("ordered: after the ack wait %q count %d after %s", d.Msg.Data, d.Count, time.Since(start))
		}
		if n, err := b.Ack([]string{d.ID}); n != 1 || err != nil {
			t.Fatal(n, err)
		}
		for _, want := range []string{"2", "3"} {
			d := fetchAll(t, b, 1, 5)[0]
			if string(d.Msg.Data) != want {
				t.Fatalf("ordered: got %q, want %s", d.Msg.Data, want)
			}
			a.Ack([]string{d.ID})
		}
	})
}

// Past max_pending the consumer keeps a counted gap notice, one per run
// of messages it could not keep, never a silent skip.
func TestRedisConsumerGap(t *testing.T) {
	forEachRedis(t, func(t *testing.T, url string) {
		ns := redisNodes(t, url, 1)
		c := redisOpen(t, ns[0], "g", Config{Filter: "jobs", MaxPending: 2})
		redisPublish(t, ns[0].b, "jobs", 1, 5)
		waitInfo(t, c, "5 seen", func(i Info) bool { return i.Lost == 3 })
		ds := fetchAll(t, c, 3, 10)
		if string(ds[0].Msg.Data) != "1" || string(ds[1].Msg.Data) != "2" || ds[2].Gap == nil {
			t.Fatalf("deliveries %+v", ds)
		}
		g := ds[2]
		if g.Lost != 3 || g.Gap.Channel != "jobs" || g.Gap.To.Seq != 5 || g.Gap.From.Seq != 2 {
			t.Fatalf("gap %+v lost %d", g.Gap, g.Lost)
		}
		inf := describe(t, c)
		if inf.Gaps != 1 || inf.Lost != 3 || inf.Pending != 2 {
			t.Fatalf("counters %+v", inf)
		}
		c.Ack([]string{ds[0].ID, ds[1].ID})
		redisPublish(t, ns[0].b, "jobs", 6, 6)
		if d := fetchAll(t, c, 1, 10)[0]; d.Msg == nil || string(d.Msg.Data) != "6" {
			t.Fatalf("after the gap: %+v", d)
		}
	})
}

// The append script keeps a message once however often a feeder sends
// it (a resumed subscription's overlap), and refuses a node that does not
// hold the lease; when the feeding node stops, the other takes over from
// the stored cursor and misses nothing.
func TestRedisConsumerFeedersOnce(t *testing.T) {
	forEachRedis(t, func(t *testing.T, url string) {
		ns := redisNodes(t, url, 2)
		a := redisOpen(t, ns[0], "f", Config{Filter: "jobs"})
		b := redisOpen(t, ns[1], "f", Config{Filter: "jobs"})
		redisPublish(t, ns[0].b, "jobs", 1, 3)
		waitInfo(t, a, "3 kept", func(i Info) bool { return i.Pending == 3 })
		// Send the same three again as whichever node holds the lease.
		holder, other := a, b
		lease, _ := ns[0].e.rdb.Get(context.Background(), a.keys[9]).Result()
		if lease == ns[1].e.token {
			holder, other = b, a
		}
		sub, err := ns[0].b.Subscribe(context.Background(), broker.SubscribeOptions{Channels: []string{"jobs"}, Last: -1})
		if err != nil {
			t.Fatal(err)
		}
		var evs []broker.Event
		for len(evs) < 3 {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			evs, err = sub.Next(ctx, evs)
			cancel()
			if err != nil {
				t.Fatal(err)
			}
		}
		sub.Close()
		if err := holder.appendEvents(context.Background(), evs); err != nil {
			t.Fatal(err)
		}
		if err := other.appendEvents(context.Background(), evs); !errors.Is(err, errLeaseLost) {
			t.Fatalf("append without the lease: %v", err)
		}
		if inf := describe(t, a); inf.Pending != 3 {
			t.Fatalf("kept %d, want 3 (once each)", inf.Pending)
		}
		// The holder's node stops; the other takes the lease over.
		stopped, alive := ns[0], ns[1]
		if holder == b {
			stopped, alive = ns[1], ns[0]
		}
		stopped.close()
		redisPublish(t, alive.b, "jobs", 4, 6)
		ah, _ := alive.e.Open("f", Config{}, false)
		c := ah.(*redisConsumer)
		inf := waitInfo(t, c, "6 kept after the takeover", func(i Info) bool { return i.Pending == 6 })
		if inf.Feeder != alive.e.token {
			t.Fatalf("feeder %q after the takeover, want %q", inf.Feeder, alive.e.token)
		}
		ds := fetchAll(t, c, 6, 10)
		for i, d := range ds {
			if string(d.Msg.Data) != strconv.Itoa(i+1) || d.Count != 1 {
				t.Fatalf("delivery %d: %q count %d", i, d.Msg.Data, d.Count)
			}
		}
	})
}

// A pattern consumer keeps the messages of every channel it matches, each
// channel with its own cursor, and not its own dead-letter channel. (Single
// Redis only: see TestRedisConsumerWaitsAndOrders about patterns on Redis
// Cluster.)
func TestRedisConsumerPattern(t *testing.T) {
	ns := redisNodes(t, redistest.Start(t, redistest.Options{}).URL(), 2)
	c := redisOpen(t, ns[0], "p", Config{Filter: "jobs.*"})
	redisPublish(t, ns[1].b, "jobs.a", 1, 2)
	redisPublish(t, ns[0].b, "jobs.b", 3, 3)
	redisPublish(t, ns[0].b, "other", 4, 4)
	inf := waitInfo(t, c, "3 kept", func(i Info) bool { return i.Pending == 3 })
	if len(inf.Cursor) != 2 || inf.Cursor["jobs.a"] == "" || inf.Cursor["jobs.b"] == "" {
		t.Fatalf("cursor %v", inf.Cursor)
	}
	got := map[string]string{}
	for _, d := range fetchAll(t, c, 3, 10) {
		got[string(d.Msg.Data)] = d.Msg.Channel
	}
	if got["1"] != "jobs.a" || got["2"] != "jobs.a" || got["3"] != "jobs.b" {
		t.Fatalf("deliveries %v", got)
	}
}

// A node that marked a message out of deliveries and died before
// publishing it to the dead-letter channel loses nothing: after deadRetry
// the feeding node publishes it, and it is counted once.
func TestRedisConsumerDeadLetterAfterCrash(t *testing.T) {
	was := deadRetry
	deadRetry = 500 * time.Millisecond
	t.Cleanup(func() { deadRetry = was })
	forEachRedis(t, func(t *testing.T, url string) {
		ns := redisNodes(t, url, 2)
		a := redisOpen(t, ns[0], "d", Config{Filter: "jobs", MaxDeliveries: 1})
		dl, err := ns[1].b.Subscribe(context.Background(), broker.SubscribeOptions{Channels: []string{"_dead.d"}})
		if err != nil {
			t.Fatal(err)
		}
		defer dl.Close()
		redisPublish(t, ns[0].b, "jobs", 1, 1)
		d := fetchAll(t, a, 1, 1)[0]
		seq, count, _ := ParseDeliveryID(d.ID)
		// The nack script alone, as a node that dies before publishing.
		vals, err := a.run(context.Background(), nackScript, seq, count, 0, 1, deadRetry.Milliseconds()).Slice()
		if err != nil || asInt(vals[0]) != 2 {
			t.Fatalf("nack: %v %v", vals, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		evs, err := dl.Next(ctx, nil)
		if err != nil {
			t.Fatalf("no dead letter after the crash: %v", err)
		}
		if !strings.Contains(string(evs[0].Msg.Data), `"consumer":"d"`) {
			t.Fatalf("dead letter %s", evs[0].Msg.Data)
		}
		inf := waitInfo(t, a, "counted", func(i Info) bool { return i.DeadLettered == 1 })
		if inf.Pending != 0 {
			t.Fatalf("after the dead letter: %+v", inf)
		}
	})
}

// A delivery id kept from before the consumer was deleted and made again
// names an entry number the new consumer reuses: acking it must not
// remove a message nobody was given; an id with a later count than any
// delivery removes nothing either; a late worker's ack (an earlier
// count) still counts.
func TestRedisStaleAckAfterRecreate(t *testing.T) {
	forEachRedis(t, func(t *testing.T, url string) {
		ns := redisNodes(t, url, 1)
		cfg := Config{Filter: "jobs", AckWait: time.Hour}
		c := redisOpen(t, ns[0], "w", cfg)
		redisPublish(t, ns[0].b, "jobs", 1, 1)
		old := fetchAll(t, c, 1, 1)[0]
		if old.ID != "1.1" {
			t.Fatalf("first delivery id %s", old.ID)
		}
		if err := ns[0].e.Delete("w"); err != nil {
			t.Fatal(err)
		}
		c = redisOpen(t, ns[0], "w", cfg)
		redisPublish(t, ns[0].b, "jobs", 2, 2)
		waitInfo(t, c, "kept", func(i Info) bool { return i.Pending == 1 })
		if n, err := c.Ack([]string{old.ID, "1.2"}); err != nil || n != 0 {
			t.Fatalf("stale ack of a message never delivered: removed %d, %v", n, err)
		}
		if ok, _, _ := c.Nack(old.ID, 0); ok {
			t.Fatal("stale nack of a message never delivered counted")
		}
		d := fetchAll(t, c, 1, 1)[0]
		if d.ID != "1.1" || string(d.Msg.Data) != "2" {
			t.Fatalf("the new message: %s %q", d.ID, d.Msg.Data)
		}
		if ok, _, err := c.Nack(d.ID, 0); !ok || err != nil {
			t.Fatalf("nack: %v %v", ok, err)
		}
		d2 := fetchAll(t, c, 1, 1)[0]
		if d2.ID != "1.2" {
			t.Fatalf("redelivery %s", d2.ID)
		}
		if n, _ := c.Ack([]string{"1.3"}); n != 0 {
			t.Fatal("an ack with a count later than any delivery removed the message")
		}
		// The first worker, late, finished after all: its ack counts.
		if n, err := c.Ack([]string{d.ID}); err != nil || n != 1 {
			t.Fatalf("late ack: %d %v", n, err)
		}
		if i := describe(t, c); i.Counters.Acked != 1 || i.Pending != 0 {
			t.Fatalf("after the ack: %+v", i)
		}
	})
}

// While Redis is down the wake-notice reader backs off (50ms doubling)
// instead of trying again at once at full CPU.
func TestRedisWakeReaderBacksOffWhileRedisIsDown(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	hub := broker.NewHub()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	l, err := redislog.Open(ctx, redislog.Options{URL: srv.URL(), Prefix: "wb:", NodeTimeout: 600 * time.Millisecond}, hub)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	b := broker.New(hub, l, broker.CoreOptions{})
	defer b.Close()
	fails := make(chan time.Time, 100)
	e, err := NewRedis(b, RedisOptions{Client: l.Client(), Prefix: l.Prefix(), LeaseTTL: l.LeaseTTL(),
		onReceiveError: func() {
			select {
			case fails <- time.Now():
			default:
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	srv.Kill()
	var at []time.Time
	deadline := time.After(15 * time.Second)
	for len(at) < 5 {
		select {
		case tm := <-fails:
			at = append(at, tm)
		case <-deadline:
			t.Fatalf("%d failed receives in 15s", len(at))
		}
	}
	// 50+100+200+400ms between the first and the fifth, less some slack.
	if span := at[4].Sub(at[0]); span < 700*time.Millisecond {
		t.Fatalf("5 failed receives within %s: the reader does not back off", span)
	}
}

// An append script run twice (go-redis sending it again after a reply it
// did not read) keeps a gap once: the second run finds the channel's
// cursor at the gap's end.
func TestRedisGapAppendedTwiceCountsOnce(t *testing.T) {
	ns := redisNodes(t, redistest.Start(t, redistest.Options{}).URL(), 1)
	c := redisOpen(t, ns[0], "w", Config{Filter: "jobs"})
	waitInfo(t, c, "fed", func(i Info) bool { return i.Feeder == ns[0].e.token })
	for i := 0; i < 2; i++ {
		err := c.run(context.Background(), appendScript, ns[0].e.token, c.cfg.MaxPending, c.cfg.MaxPendingBytes,
			"g", "jobs", "E1", 20, 7, "", "E1 13").Err()
		if err != nil {
			t.Fatal(err)
		}
	}
	inf := describe(t, c)
	if inf.Counters.Gaps != 1 || inf.Counters.Lost != 7 {
		t.Fatalf("a gap appended twice: gaps %d lost %d", inf.Counters.Gaps, inf.Counters.Lost)
	}
	ds, err := c.Fetch(context.Background(), 10, 0)
	if err != nil || len(ds) != 1 || ds[0].Gap == nil {
		t.Fatalf("gap notices: %+v %v", ds, err)
	}
}

// dropProxy forwards TCP to addr; once armed, it breaks the connection
// whose reply from the server holds mark, so that the client never reads
// it (the command ran on the server).
type dropProxy struct {
	ln    net.Listener
	addr  string
	mark  []byte
	armed atomic.Bool
	hits  atomic.Int64
}

func startDropProxy(t *testing.T, addr, mark string) *dropProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &dropProxy{ln: ln, addr: addr, mark: []byte(mark)}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			cn, err := ln.Accept()
			if err != nil {
				return
			}
			go p.serve(cn)
		}
	}()
	return p
}

func (p *dropProxy) serve(cn net.Conn) {
	up, err := net.Dial("tcp", p.addr)
	if err != nil {
		cn.Close()
		return
	}
	defer cn.Close()
	defer up.Close()
	go func() {
		io.Copy(up, cn)
		up.Close()
	}()
	buf := make([]byte, 64<<10)
	for {
		n, err := up.Read(buf)
		if n > 0 {
			if p.armed.Load() && bytes.Contains(buf[:n], p.mark) && p.armed.CompareAndSwap(true, false) {
				p.hits.Add(1)
				return // the reply is never forwarded
			}
			if _, err := cn.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// A fetch whose reply was lost is not sent again: it ran once on Redis
// (one delivery counted, not a second message taken for no one).
func TestRedisFetchNotSentAgain(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	px := startDropProxy(t, srv.Addr(), "MARK-")
	url := "redis://" + px.ln.Addr().String() + "/0"
	hub := broker.NewHub()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	l, err := redislog.Open(ctx, redislog.Options{URL: url, Prefix: "fr:", NodeTimeout: 600 * time.Millisecond,
		Retention: broker.Retention{HistorySize: 100}}, hub)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	b := broker.New(hub, l, broker.CoreOptions{})
	defer b.Close()
	e, err := NewRedis(b, RedisOptions{Client: l.Client(), Prefix: l.Prefix(), LeaseTTL: l.LeaseTTL()})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	h, err := e.Open("w", Config{Filter: "jobs", AckWait: time.Hour}, true)
	if err != nil {
		t.Fatal(err)
	}
	c := h.(*redisConsumer)
	for i := 1; i <= 2; i++ {
		if _, _, err := b.Publish(context.Background(), &broker.Message{Channel: "jobs", Data: []byte(fmt.Sprintf("MARK-%d", i))}); err != nil {
			t.Fatal(err)
		}
	}
	waitInfo(t, c, "kept", func(i Info) bool { return i.Pending == 2 })
	px.armed.Store(true)
	ds, err := c.Fetch(context.Background(), 1, 0)
	if px.hits.Load() != 1 {
		t.Fatalf("the fetch's reply was not dropped (%d): %+v %v", px.hits.Load(), ds, err)
	}
	if err == nil {
		t.Fatalf("a fetch whose reply was lost answered %d deliveries", len(ds))
	}
	// What it took is given back: not held by no one for the ack wait.
	if inf := describe(t, c); inf.Counters.Delivered != 0 || inf.Inflight != 0 || inf.Pending != 2 {
		t.Fatalf("after the lost fetch: delivered %d, in flight %d, pending %d", inf.Counters.Delivered, inf.Inflight, inf.Pending)
	}
	ds = fetchAll(t, c, 1, 1)
	if string(ds[0].Msg.Data) != "MARK-1" || ds[0].Count != 1 {
		t.Fatalf("after the lost fetch: %q count %d", ds[0].Msg.Data, ds[0].Count)
	}
	// Redis lost its scripts (a restart): a fetch loads them and runs.
	if err := l.Client().ScriptFlush(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	ds = fetchAll(t, c, 1, 1)
	if string(ds[0].Msg.Data) != "MARK-2" {
		t.Fatalf("after SCRIPT FLUSH: %q", ds[0].Msg.Data)
	}
}

// A failing append (here: the lease key damaged, so the script errs)
// makes the feeder read again from the cursor, after a pause that
// doubles, not at once in a loop.
func TestRedisFeederBacksOffAfterAppendError(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	hub := broker.NewHub()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	l, err := redislog.Open(ctx, redislog.Options{URL: srv.URL(), Prefix: "ab:", NodeTimeout: 600 * time.Millisecond,
		Retention: broker.Retention{HistorySize: 100}}, hub)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	b := broker.New(hub, l, broker.CoreOptions{})
	defer b.Close()
	fails := make(chan time.Time, 100)
	e, err := NewRedis(b, RedisOptions{Client: l.Client(), Prefix: l.Prefix(), LeaseTTL: l.LeaseTTL(),
		onAppendError: func() {
			select {
			case fails <- time.Now():
			default:
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	h, err := e.Open("w", Config{Filter: "jobs"}, true)
	if err != nil {
		t.Fatal(err)
	}
	c := h.(*redisConsumer)
	waitInfo(t, c, "fed", func(i Info) bool { return i.Feeder == e.token })
	rdb := l.Client()
	if err := rdb.Del(context.Background(), c.keys[9]).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.HSet(context.Background(), c.keys[9], "not", "a lease").Err(); err != nil {
		t.Fatal(err)
	}
	redisPublish(t, b, "jobs", 1, 1)
	var at []time.Time
	deadline := time.After(15 * time.Second)
	for len(at) < 5 {
		select {
		case tm := <-fails:
			at = append(at, tm)
		case <-deadline:
			t.Fatalf("%d failed appends in 15s", len(at))
		}
	}
	if span := at[4].Sub(at[0]); span < 700*time.Millisecond {
		t.Fatalf("5 failed appends within %s: the feeder does not back off", span)
	}
}

// A consumer that dropped out of the registry (a delete racing a create
// of the same name) is still fed: a node holding its handle takes it
// over when the feeding node goes.
func TestRedisConsumerOutOfRegistryStillFed(t *testing.T) {
	url := redistest.Start(t, redistest.Options{}).URL()
	first := redisNodesWith(t, url, "reg:", 1)[0]
	a := redisOpen(t, first, "w", Config{Filter: "jobs"})
	waitInfo(t, a, "fed", func(i Info) bool { return i.Feeder == first.e.token })
	if err := first.e.rdb.SRem(context.Background(), first.e.registry(), "w").Err(); err != nil {
		t.Fatal(err)
	}
	// A node started now does not find it in the registry; it opens it.
	other := redisNodesWith(t, url, "reg:", 1)[0]
	oh, err := other.e.Open("w", Config{}, false)
	if err != nil {
		t.Fatal(err)
	}
	o := oh.(*redisConsumer)
	first.close()
	redisPublish(t, other.b, "jobs", 1, 1)
	inf := waitInfo(t, o, "kept by the other node", func(i Info) bool { return i.Pending == 1 })
	if inf.Feeder != other.e.token {
		t.Fatalf("feeder %q", inf.Feeder)
	}
	if ok, err := other.e.rdb.SIsMember(context.Background(), other.e.registry(), "w").Result(); err != nil || !ok {
		t.Fatalf("not in the registry again: %v %v", ok, err)
	}
}

// A node holding a consumer's handle when another node deletes it and
// creates it again serves the new consumer at once: no
// consumer_not_found for a consumer that exists.
func TestRedisStaleHandleReloads(t *testing.T) {
	ns := redisNodes(t, redistest.Start(t, redistest.Options{}).URL(), 2)
	cfg := Config{Filter: "jobs", AckWait: time.Hour}
	redisOpen(t, ns[0], "w", cfg)
	stale := func() *redisConsumer {
		h, err := ns[1].e.Open("w", Config{}, false)
		if err != nil {
			t.Fatal(err)
		}
		return h.(*redisConsumer)
	}
	old := stale()
	if err := ns[0].e.Delete("w"); err != nil {
		t.Fatal(err)
	}
	a := redisOpen(t, ns[0], "w", cfg)
	redisPublish(t, ns[0].b, "jobs", 1, 2)
	waitInfo(t, a, "kept", func(i Info) bool { return i.Pending == 2 })
	if inf, err := old.Describe(context.Background()); err != nil || inf.Pending != 2 {
		t.Fatalf("describe through the stale handle: %+v %v", inf, err)
	}
	old = stale()
	ds, err := old.Fetch(context.Background(), 1, time.Second)
	if err != nil || len(ds) != 1 {
		t.Fatalf("fetch through the stale handle: %v %v", ds, err)
	}
	if err := ns[0].e.Delete("w"); err != nil {
		t.Fatal(err)
	}
	a = redisOpen(t, ns[0], "w", cfg)
	redisPublish(t, ns[0].b, "jobs", 3, 3)
	waitInfo(t, a, "kept", func(i Info) bool { return i.Pending == 1 })
	d := fetchAll(t, a, 1, 1)[0]
	// An ack or nack through the stale handle is refused: its ids may be
	// the old consumer's, and the same id of the new one is a delivery
	// another client holds (d is "1.1" of the new consumer, as the old
	// one's first delivery was).
	if n, err := old.Ack([]string{d.ID}); !errors.Is(err, ErrNotFound) || n != 0 {
		t.Fatalf("ack through the stale handle: %d %v; want not found", n, err)
	}
	waitInfo(t, a, "still held", func(i Info) bool { return i.Pending == 1 && i.Inflight == 1 })
	if n, err := a.Ack([]string{d.ID}); err != nil || n != 1 {
		t.Fatalf("ack through the new consumer's handle: %d %v", n, err)
	}
	// Made again reading another channel: not served through a handle
	// whose filter the caller's grant was checked for.
	old = stale()
	if err := ns[0].e.Delete("w"); err != nil {
		t.Fatal(err)
	}
	a = redisOpen(t, ns[0], "w", Config{Filter: "secret", AckWait: time.Hour})
	redisPublish(t, ns[0].b, "secret", 1, 1)
	waitInfo(t, a, "kept", func(i Info) bool { return i.Pending == 1 })
	if ds, err := old.Fetch(context.Background(), 1, 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("fetch through a handle of another filter: %v %v", ds, err)
	}
	// Deleted for good: not found.
	if err := ns[0].e.Delete("w"); err != nil {
		t.Fatal(err)
	}
	if _, err := stale().Fetch(context.Background(), 1, 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("fetch of a deleted consumer: %v", err)
	}
}

// TestRedisStartNewDespiteClockSkew: a consumer that starts with new
// messages gets every message published after it was created, also
// through a node whose clock is behind Redis's (its messages' times are
// that node's, the creation's Redis's): on a channel with history, from
// the channel's position when it was created (what was there before is
// not delivered), and on a channel that did not exist, from its first
// message. The start used to be the creation's time only: the skewed
// node's messages fell before it and were skipped, silently.
func TestRedisStartNewDespiteClockSkew(t *testing.T) {
	forEachRedis(t, func(t *testing.T, url string) {
		nodes := redisNodesOpts(t, url, fmt.Sprintf("ct%d:", testPrefixes.Add(1)), 2, func(i int, o *redislog.Options) {
			if i == 1 {
				o.Now = func() time.Time { return time.Now().Add(-3 * time.Second) }
			}
		})
		a, b := nodes[0], nodes[1]
		if _, _, err := b.b.Publish(context.Background(), &broker.Message{Channel: "skew.old", Data: []byte("before")}); err != nil {
			t.Fatal(err)
		}
		for _, ch := range []string{"skew.old", "skew.new"} {
			c := redisOpen(t, a, "c-"+strings.TrimPrefix(ch, "skew."), Config{Filter: ch})
			if _, _, err := b.b.Publish(context.Background(), &broker.Message{Channel: ch, Data: []byte("after")}); err != nil {
				t.Fatal(err)
			}
			ds := fetchAll(t, c, 1, 10)
			if ds[0].Msg == nil || string(ds[0].Msg.Data) != "after" {
				t.Fatalf("%s: first delivery %+v, want the message published after the consumer was made", ch, ds[0])
			}
			if more, err := c.Fetch(context.Background(), 10, 0); err != nil || len(more) != 0 {
				t.Fatalf("%s: more deliveries %v, %v", ch, more, err)
			}
		}
	})
}

// TestRedisStaleHandleGivesBack: a WebSocket consume holds a handle for
// as long as it lives; after its consumer was deleted and made again
// through another node, its fetches serve the new consumer, and what it
// gives back (the client went away before the deliveries were sent) goes
// back to the consumer that gave it: ready at once for another client,
// not held until the ack wait. Deliveries of a consumer since deleted are
// given back to nobody (the new consumer's entries of the same ids are
// not touched). The give-back used to fail with NOCONSUMER and be logged.
func TestRedisStaleHandleGivesBack(t *testing.T) {
	ns := redisNodes(t, redistest.Start(t, redistest.Options{}).URL(), 2)
	cfg := Config{Filter: "jobs", AckWait: time.Hour}
	redisOpen(t, ns[0], "w", cfg)
	h, err := ns[1].e.Open("w", Config{}, false)
	if err != nil {
		t.Fatal(err)
	}
	held := h.(*redisConsumer)
	if err := ns[0].e.Delete("w"); err != nil {
		t.Fatal(err)
	}
	a := redisOpen(t, ns[0], "w", cfg)
	redisPublish(t, ns[0].b, "jobs", 1, 2)
	waitInfo(t, a, "kept", func(i Info) bool { return i.Pending == 2 })
	ds, err := held.Fetch(context.Background(), 2, time.Second)
	if err != nil || len(ds) != 2 {
		t.Fatalf("fetch through the held handle: %v %v", ds, err)
	}
	held.Giveback(ds)
	if inf, err := a.Describe(context.Background()); err != nil || inf.Inflight != 0 {
		t.Fatalf("after the give-back through the held handle: %+v %v; want nothing in flight", inf, err)
	}
	again := fetchAll(t, a, 2, 2)
	// Deliveries of a consumer deleted since are given back to nobody.
	if err := ns[0].e.Delete("w"); err != nil {
		t.Fatal(err)
	}
	a = redisOpen(t, ns[0], "w", cfg)
	redisPublish(t, ns[0].b, "jobs", 3, 4)
	waitInfo(t, a, "kept", func(i Info) bool { return i.Pending == 2 })
	fetchAll(t, a, 2, 2) // same ids as again's
	a.Giveback(again)
	if inf, err := a.Describe(context.Background()); err != nil || inf.Inflight != 2 {
		t.Fatalf("a give-back of the deleted consumer's deliveries: %+v %v; want both of the new one's still in flight", inf, err)
	}
}

// While Redis refuses commands for a passing reason (here a script running
// long: BUSY; LOADING after a restart and MASTERDOWN take the same path),
// every operation on consumers fails with broker.ErrUnavailable (answered
// 503 broker_unavailable, and tried again by a WebSocket consuming), not
// with a plain error (500 internal_error, ending the consuming); nothing
// is lost: once Redis answers, the message kept before is fetched once
// (the failed fetch took nothing) and acknowledged.
func TestRedisConsumerRefusedIsUnavailable(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	n := redisNodes(t, srv.URL(), 1)[0]
	c := redisOpen(t, n, "w", Config{Filter: "jobs"})
	redisPublish(t, n.b, "jobs", 1, 1)
	waitInfo(t, c, "kept", func(inf Info) bool { return inf.Pending == 1 })

	stop := srv.Busy()
	ctx := context.Background()
	ops := map[string]func() error{
		"fetch": func() error { _, err := c.Fetch(ctx, 1, 0); return err },
		"ack":   func() error { _, err := c.Ack([]string{"1.1"}); return err },
		"nack":  func() error { _, _, err := c.Nack("1.1", 0); return err },
		"describe": func() error {
			_, err := c.Describe(ctx)
			return err
		},
		"list":   func() error { _, err := n.e.List(ctx); return err },
		"create": func() error { _, err := n.e.Open("other", Config{Filter: "x"}, true); return err },
		"delete": func() error { return n.e.Delete("nosuch") },
	}
	for name, op := range ops {
		if err := op(); !errors.Is(err, broker.ErrUnavailable) || !strings.Contains(err.Error(), "BUSY") {
			t.Errorf("%s while redis is busy: %v, not broker.ErrUnavailable", name, err)
		}
	}
	stop()

	ds := fetchAll(t, c, 1, 10)
	if ds[0].Count != 1 || string(ds[0].Msg.Data) != "1" {
		t.Fatalf("after busy: %+v", ds[0])
	}
	if k, err := c.Ack([]string{ds[0].ID}); err != nil || k != 1 {
		t.Fatalf("ack: %d %v", k, err)
	}
}
