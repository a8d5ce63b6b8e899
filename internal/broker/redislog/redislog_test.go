package redislog_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/broker/brokertest"
	"github.com/pushctl/pushctl/internal/broker/redislog"
	"github.com/pushctl/pushctl/internal/redistest"
)

var prefixes atomic.Int64

// open makes a broker node on url with its own key prefix per test (nodes
// of one test share prefix).
func open(t testing.TB, url, prefix string, o brokertest.Options) *broker.Core {
	t.Helper()
	hub := broker.NewHub()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, err := redislog.Open(ctx, redislog.Options{URL: url, Prefix: prefix,
		Retention: broker.Retention{HistorySize: o.HistorySize, HistoryAge: o.HistoryAge}, RetentionFor: o.RetentionFor, Now: o.Now}, hub)
	if err != nil {
		t.Fatal(err)
	}
	b := broker.New(hub, l, broker.CoreOptions{QueueSize: o.QueueSize})
	t.Cleanup(func() { b.Close() })
	return b
}

func newPrefix() string { return fmt.Sprintf("t%d:", prefixes.Add(1)) }

func TestRedisConformance(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	brokertest.Run(t, func(t *testing.T, o brokertest.Options) broker.Broker {
		return open(t, srv.URL(), newPrefix(), o)
	})
}

func bg(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func subscribe(t *testing.T, b broker.Broker, o broker.SubscribeOptions) *broker.Subscription {
	t.Helper()
	s, err := b.Subscribe(bg(t), o)
	if err != nil {
		t.Fatalf("subscribe %v: %v", o.Channels, err)
	}
	t.Cleanup(s.Close)
	return s
}

// events reads until n messages arrived; gaps are returned too.
func events(t *testing.T, s *broker.Subscription, n int) (msgs []*broker.Message, gaps []*broker.Gap) {
	t.Helper()
	ctx := bg(t)
	for len(msgs) < n {
		evs, err := s.Next(ctx, nil)
		if err != nil {
			t.Fatalf("after %d of %d messages (gaps %v): %v", len(msgs), n, gaps, err)
		}
		for _, e := range evs {
			if e.Gap != nil {
				gaps = append(gaps, e.Gap)
			} else {
				msgs = append(msgs, e.Msg)
			}
		}
	}
	return msgs, gaps
}

func publish(t *testing.T, b broker.Broker, ch, data string) (*broker.Message, int) {
	t.Helper()
	m, n, err := b.Publish(bg(t), &broker.Message{Channel: ch, Data: []byte(data)})
	if err != nil {
		t.Fatalf("publish %s: %v", ch, err)
	}
	return m, n
}

func inOrder(t *testing.T, who string, msgs []*broker.Message, from int) {
	t.Helper()
	for i, m := range msgs {
		if want := fmt.Sprint(from + i); string(m.Data) != want {
			t.Fatalf("%s: message %d is %q, want %q", who, i, m.Data, want)
		}
	}
}

// Three nodes on one Redis: publish on A; subscribers on B (by name) and C
// (by pattern, channel created after subscribing) get everything in
// order; waits and acks count subscribers of every node.
func TestThreeNodes(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	p := newPrefix()
	a, b, c := open(t, srv.URL(), p, brokertest.Options{}), open(t, srv.URL(), p, brokertest.Options{}), open(t, srv.URL(), p, brokertest.Options{})
	waited := make(chan error, 1)
	go func() { waited <- a.WaitSubscribers(bg(t), "orders.eu", 2) }()
	onB := subscribe(t, b, broker.SubscribeOptions{Channels: []string{"orders.eu"}})
	onC := subscribe(t, c, broker.SubscribeOptions{Channels: []string{"orders.*"}})
	if err := <-waited; err != nil {
		t.Fatalf("wait for subscribers on B and C from A: %v", err)
	}
	const n = 2000
	for i := 0; i < n; i++ {
		_, got := publish(t, a, "orders.eu", fmt.Sprint(i))
		if i == 0 && got != 2 {
			t.Fatalf("first publish reached %d subscribers, want 2 (on B and C)", got)
		}
	}
	mb, gb := events(t, onB, n)
	mc, gc := events(t, onC, n)
	if len(gb)+len(gc) > 0 {
		t.Fatalf("gaps: %v %v", gb, gc)
	}
	inOrder(t, "B", mb, 0)
	inOrder(t, "C", mc, 0)
	info, err := c.Channel(bg(t), "orders.eu")
	if err != nil || info.Subscribers != 2 || info.LastSeq != n {
		t.Fatalf("channel seen from C = %+v, %v", info, err)
	}
	// A position from B resumes on C.
	pos := mb[n/2].Position()
	again := subscribe(t, c, broker.SubscribeOptions{Channels: []string{"orders.eu"}, From: broker.Cursor{"orders.eu": pos}})
	rest, gaps := events(t, again, n/2-1)
	if len(gaps) > 0 {
		t.Fatalf("resume on another node: gaps %v", gaps)
	}
	inOrder(t, "resumed on C", rest, n/2+1)
	// DELETE on A ends the named subscription on B.
	if err := a.DeleteChannel(bg(t), "orders.eu"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-onB.Done():
	case <-bg(t).Done():
		t.Fatal("delete on A did not end the subscription on B")
	}
	if _, err := onB.Next(bg(t), nil); err != broker.ErrChannelDeleted {
		t.Fatalf("B ended with %v, want channel deleted", err)
	}
}

// A node receives only what its subscribers follow, and stops when the
// last one leaves.
func TestNodeFollowsOnlyWhatItsSubscribersWant(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	p := newPrefix()
	a, b := open(t, srv.URL(), p, brokertest.Options{}), open(t, srv.URL(), p, brokertest.Options{})
	rdb := redisClient(t, srv)
	numsub := func(ch string) int64 {
		v, err := rdb.PubSubNumSub(bg(t), p+"{"+ch+"}").Result()
		if err != nil {
			t.Fatal(err)
		}
		return v[p+"{"+ch+"}"]
	}
	s := subscribe(t, b, broker.SubscribeOptions{Channels: []string{"only"}})
	if n := numsub("only"); n != 1 {
		t.Fatalf("Redis subscribers of only = %d, want 1 (node B)", n)
	}
	if n := numsub("other"); n != 0 {
		t.Fatalf("Redis subscribers of other = %d, want 0", n)
	}
	publish(t, a, "only", "0")
	events(t, s, 1)
	s.Close()
	deadline := time.Now().Add(10 * time.Second)
	for numsub("only") != 0 {
		if time.Now().After(deadline) {
			t.Fatal("node B still subscribed after its last subscriber left")
		}
		<-time.After(10 * time.Millisecond)
	}
}

// eventually retries f until it returns nil (30s at most).
func eventually(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		<-time.After(20 * time.Millisecond)
	}
}

// outage stops Redis, checks that the nodes say so and refuse publishes
// with ErrUnavailable (no false ack), then starts it again.
func outage(t *testing.T, srv *redistest.Server, pubNode *broker.Core, subNode *broker.Core) {
	t.Helper()
	srv.Kill()
	eventually(t, "node reports Redis down", func() error {
		if subNode.Health() == nil {
			return fmt.Errorf("healthy")
		}
		return nil
	})
	_, _, err := pubNode.Publish(bg(t), &broker.Message{Channel: "r", Data: []byte("during")})
	if !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("publish during the outage = %v, want ErrUnavailable", err)
	}
	srv.Restart()
	eventually(t, "publish after Redis is back", func() error {
		_, _, err := pubNode.Publish(bg(t), &broker.Message{Channel: "probe", Data: []byte("x")})
		return err
	})
	eventually(t, "node reports Redis healthy", func() error { return subNode.Health() })
}

// throughOutage publishes five messages on node A to a subscriber on node
// B, then takes Redis through an outage (see outage).
func throughOutage(t *testing.T, srv *redistest.Server) (a *broker.Core, s *broker.Subscription, before []*broker.Message) {
	t.Helper()
	p := newPrefix()
	a, b := open(t, srv.URL(), p, brokertest.Options{}), open(t, srv.URL(), p, brokertest.Options{})
	s = subscribe(t, b, broker.SubscribeOptions{Channels: []string{"r"}})
	for i := 0; i < 5; i++ {
		publish(t, a, "r", fmt.Sprint(i))
	}
	before, _ = events(t, s, 5)
	outage(t, srv, a, b)
	return a, s, before
}

// Redis restarted without persistence lost every channel: subscribers are
// told of the gap, then get what is published next.
func TestRedisRestartWithoutPersistence(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	a, s, before := throughOutage(t, srv)
	after, _ := publish(t, a, "r", "after")
	if after.Epoch == before[4].Epoch {
		t.Fatalf("epoch kept (%s) though Redis lost the channel", after.Epoch)
	}
	msgs, gaps := events(t, s, 1)
	if len(gaps) != 1 || gaps[0].From != before[4].Position() || gaps[0].To.Epoch != after.Epoch {
		t.Fatalf("gaps = %+v, want one from %v to the new epoch %s", gaps, before[4].Position(), after.Epoch)
	}
	if string(msgs[0].Data) != "after" {
		t.Fatalf("after the gap: %q", msgs[0].Data)
	}
}

// With AOF (appendfsync always) Redis keeps every acknowledged message:
// no gap, the sequence goes on.
func TestRedisRestartWithAOF(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{AOF: true})
	a, s, before := throughOutage(t, srv)
	after, _ := publish(t, a, "r", "5")
	if after.Epoch != before[4].Epoch || after.Seq != 6 {
		t.Fatalf("after restart: %v, want %s-6", after.Position(), before[4].Epoch)
	}
	msgs, gaps := events(t, s, 1)
	if len(gaps) != 0 || msgs[0].Seq != 6 {
		t.Fatalf("after an AOF restart: gaps %v, next %v", gaps, msgs[0].Position())
	}
}

// commandsPerPublish publishes n messages on b and returns how many Redis
// commands (scripts' own calls included, INFO and CONFIG left out) each
// publish cost, from INFO commandstats summed over the servers.
func commandsPerPublish(t *testing.T, servers []*redis.Client, b broker.Broker, n int) float64 {
	t.Helper()
	publish(t, b, "cost", "warm-up") // the stream is not empty
	for _, rdb := range servers {
		if err := rdb.ConfigResetStat(bg(t)).Err(); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < n; i++ {
		publish(t, b, "cost", fmt.Sprint(i))
	}
	total := 0
	for name, c := range commandCalls(t, servers) {
		if name != "info" && name != "config|resetstat" {
			total += c
		}
	}
	return float64(total) / float64(n)
}

// quietNode is a node on url that sends no heartbeats during a
// measurement, and on Redis Cluster does not read the routes when its
// publisher is idle (a read that would come after the measurement's last
// publish, before or after the commands are counted, by chance; the next
// publish's read serves instead: see TestClusterIdlePublisherReadsRoutes).
func quietNode(t *testing.T, url, prefix string) *broker.Core {
	hub := broker.NewHub()
	l, err := redislog.Open(bg(t), redislog.Options{URL: url, Prefix: prefix, Heartbeat: time.Hour}, hub)
	if err != nil {
		t.Fatal(err)
	}
	l.SetSOnlyIdle(time.Hour)
	b := broker.New(hub, l, broker.CoreOptions{})
	t.Cleanup(func() { b.Close() })
	return b
}

// Redis commands per publish do not depend on how many subscribers or
// nodes there are.
func TestCommandsPerPublishIndependentOfSubscribers(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := []*redis.Client{redisClient(t, srv)}
	p := newPrefix()
	a := quietNode(t, srv.URL(), p)
	s := subscribe(t, a, broker.SubscribeOptions{Channels: []string{"cost"}})
	one := commandsPerPublish(t, rdb, a, 200)
	events(t, s, 201)
	nodes := []*broker.Core{a, quietNode(t, srv.URL(), p), quietNode(t, srv.URL(), p)}
	matching := 1 // s
	for i := 0; i < 999; i++ {
		ch := "cost"
		if i%3 == 0 {
			ch = "cost.>"
		}
		if i%5 == 0 {
			ch = ">"
		}
		if ch != "cost.>" { // which does not match "cost"
			matching++
		}
		subscribe(t, nodes[i%3], broker.SubscribeOptions{Channels: []string{ch}})
	}
	if err := a.WaitSubscribers(bg(t), "cost", matching); err != nil {
		t.Fatal(err)
	}
	many := commandsPerPublish(t, rdb, a, 200)
	t.Logf("Redis commands per publish: %.2f with 1 subscriber on 1 node, %.2f with 1000 subscribers on 3 nodes", one, many)
	if one != many {
		t.Fatalf("commands per publish: %.2f with 1 subscriber, %.2f with 1000 on 3 nodes", one, many)
	}
}

// On Redis Cluster too, commands per publish do not depend on how many
// subscribers or nodes there are; a pattern follower anywhere adds the
// one classic PUBLISH that patterns hear, however many there are.
func TestClusterCommandsPerPublishIndependentOfSubscribers(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	var rdb []*redis.Client
	for _, srv := range c.Servers {
		rdb = append(rdb, redisClient(t, srv))
	}
	p := newPrefix()
	nodes := []*broker.Core{quietNode(t, c.URL(), p), quietNode(t, c.URL(), p), quietNode(t, c.URL(), p)}
	a := nodes[0]
	s := subscribe(t, a, broker.SubscribeOptions{Channels: []string{"cost"}})
	one := commandsPerPublish(t, rdb, a, 200)
	events(t, s, 201)
	for i := 0; i < 999; i++ {
		subscribe(t, nodes[i%3], broker.SubscribeOptions{Channels: []string{"cost"}})
	}
	if err := a.WaitSubscribers(bg(t), "cost", 1000); err != nil {
		t.Fatal(err)
	}
	many := commandsPerPublish(t, rdb, a, 200)
	subscribe(t, nodes[1], broker.SubscribeOptions{Channels: []string{"cost.>"}})
	onePattern := commandsPerPublish(t, rdb, a, 200)
	for i := 0; i < 99; i++ {
		subscribe(t, nodes[i%3], broker.SubscribeOptions{Channels: []string{[]string{">", "cost.>", "*"}[i%3]}})
	}
	if err := a.WaitSubscribers(bg(t), "cost", 1000+66); err != nil {
		t.Fatal(err)
	}
	manyPatterns := commandsPerPublish(t, rdb, a, 200)
	t.Logf("Redis Cluster commands per publish: %.2f with 1 subscriber on 1 node, %.2f with 1000 on 3 nodes; "+
		"with pattern followers: %.2f with 1, %.2f with 100", one, many, onePattern, manyPatterns)
	if one != many || onePattern != manyPatterns || onePattern != one+1 {
		t.Fatalf("commands per publish: %.2f with 1 subscriber, %.2f with 1000; %.2f with 1 pattern, %.2f with 100 (want one more than without)",
			one, many, onePattern, manyPatterns)
	}
}

// An idempotency key is a key of its own in the channel's slot that Redis
// expires with the window; a key an earlier epoch of the channel left
// (deleted since) does not make a publish a duplicate.
func TestIdempotencyKeyInRedis(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	prefix := newPrefix()
	b := open(t, srv.URL(), prefix, brokertest.Options{HistorySize: 10})
	rc := redisClient(t, srv)
	ctx := bg(t)
	m, _, err := b.Publish(ctx, &broker.Message{Channel: "idem", Data: []byte("a"), Key: "k-1"})
	if err != nil || m.Duplicate {
		t.Fatalf("publish: %v duplicate=%v", err, m != nil && m.Duplicate)
	}
	ttl, err := rc.PTTL(ctx, prefix+"{idem}:k:k-1").Result()
	if err != nil || ttl <= 0 || ttl > broker.DedupWindow {
		t.Fatalf("the key's expiry is %v (%v), want within %v", ttl, err, broker.DedupWindow)
	}
	if err := b.DeleteChannel(ctx, "idem"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Publish(ctx, &broker.Message{Channel: "idem", Data: []byte("new epoch")}); err != nil {
		t.Fatal(err)
	}
	again, _, err := b.Publish(ctx, &broker.Message{Channel: "idem", Data: []byte("b"), Key: "k-1"})
	if err != nil || again.Duplicate || again.Epoch == m.Epoch {
		t.Fatalf("after a delete: %v %s duplicate=%v (first %s)", err, again.ID(), again.Duplicate, m.ID())
	}
}

// A publish's ack counts the pattern subscribers other nodes have at that
// moment: the publishing node keeps a copy of the patterns' counts and
// reads it again whenever their version in Redis changed, so a pattern
// subscription counted before a publish is never missed by its ack.
func TestAckCountsFollowPatternChanges(t *testing.T) {
	for _, tc := range []struct {
		name string
		url  func(t *testing.T) string
	}{
		{"single", func(t *testing.T) string { return redistest.Start(t, redistest.Options{}).URL() }},
		{"cluster", func(t *testing.T) string { return redistest.StartCluster(t, 3).URL() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			url, p := tc.url(t), newPrefix()
			a, b := open(t, url, p, brokertest.Options{}), open(t, url, p, brokertest.Options{})
			want := 0
			check := func(step string) {
				t.Helper()
				if _, got := publish(t, a, "acks.x", step); got != want {
					t.Fatalf("%s: the ack counts %d subscribers, want %d", step, got, want)
				}
			}
			check("no subscribers")
			for _, pattern := range []string{"acks.*", ">", "other.*", "acks.x.>"} {
				subscribe(t, b, broker.SubscribeOptions{Channels: []string{pattern}})
				if broker.Match(pattern, "acks.x") {
					want++
				}
				check("after subscribing to " + pattern)
			}
			subscribe(t, b, broker.SubscribeOptions{Channels: []string{"acks.x"}})
			want++
			check("after subscribing to acks.x by name")
		})
	}
}

// The history's age bound holds after messages left it by count: the
// script reads the sizes list only when something may be older than the
// cutoff (the last message that left, or the oldest one read, says), and
// then drops every message over the age, whatever its number.
func TestHistoryAgeAfterCountTrims(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	var mu sync.Mutex
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	now := t0
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	b := open(t, srv.URL(), newPrefix(), brokertest.Options{HistorySize: 5, HistoryAge: time.Minute, Now: clock})
	for _, step := range []struct {
		at     time.Duration
		send   []string
		retain []string
	}{
		{0, []string{"a0", "a1", "a2", "a3", "a4"}, []string{"a0", "a1", "a2", "a3", "a4"}},
		{30 * time.Second, []string{"b0", "b1", "b2"}, []string{"a3", "a4", "b0", "b1", "b2"}},
		{70 * time.Second, []string{"c0"}, []string{"b0", "b1", "b2", "c0"}},
		{75 * time.Second, []string{"c1"}, []string{"b0", "b1", "b2", "c0", "c1"}},
		{95 * time.Second, []string{"c2"}, []string{"c0", "c1", "c2"}},
		{200 * time.Second, []string{"d0"}, []string{"d0"}},
	} {
		mu.Lock()
		now = t0.Add(step.at)
		mu.Unlock()
		for _, d := range step.send {
			publish(t, b, "aged", d)
		}
		info, err := b.Channel(bg(t), "aged")
		if err != nil || info.Messages != len(step.retain) || info.Bytes != int64(2*len(step.retain)) {
			t.Fatalf("at +%s: %+v, %v; want %d messages of 2 bytes", step.at, info, err, len(step.retain))
		}
		s := subscribe(t, b, broker.SubscribeOptions{Channels: []string{"aged"}, Last: -1})
		msgs, _ := events(t, s, len(step.retain))
		for i, m := range msgs {
			if string(m.Data) != step.retain[i] {
				t.Fatalf("at +%s: message %d is %s, want %s", step.at, i, m.Data, step.retain[i])
			}
		}
		s.Close()
	}
}

// commandCalls is, per command (INFO commandstats's names without
// "cmdstat_"), how many times the servers ran it.
func commandCalls(t testing.TB, servers []*redis.Client) map[string]int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out := map[string]int{}
	for _, rdb := range servers {
		info, err := rdb.Info(ctx, "commandstats").Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(info, "\n") {
			name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
			if !ok || !strings.HasPrefix(name, "cmdstat_") {
				continue
			}
			calls, _, _ := strings.Cut(strings.TrimPrefix(rest, "calls="), ",")
			c, _ := strconv.Atoi(calls)
			out[strings.TrimPrefix(name, "cmdstat_")] += c
		}
	}
	return out
}

// On Redis Cluster with no pattern followed, a node publishing one batch
// after another reads the routes once per batch, before it (a read that
// also settles the batch before: nothing is sent again), never a second
// time per batch; idle after a batch, it reads them once more, shortly
// after. Nothing goes out on classic Pub/Sub.
func TestClusterIdlePublisherReadsRoutes(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	var rdb []*redis.Client
	for _, srv := range c.Servers {
		rdb = append(rdb, redisClient(t, srv))
	}
	a := open(t, c.URL(), newPrefix(), brokertest.Options{})
	la := a.Log().(*redislog.Log)
	settled := func() {
		eventually(t, "the last batch settled", func() error {
			if n := la.SOnlyPending(); n != 0 {
				return fmt.Errorf("%d calls not settled", n)
			}
			return nil
		})
	}
	reset := func() {
		for _, r := range rdb {
			if err := r.ConfigResetStat(bg(t)).Err(); err != nil {
				t.Fatal(err)
			}
		}
	}
	publish(t, a, "idle", "warm-up")
	settled()

	// Back to back (the idle read put off: a publish that came more than
	// its wait after the one before, by chance, would be one).
	la.SetSOnlyIdle(time.Hour)
	reset()
	const n = 200
	for i := 0; i < n; i++ {
		publish(t, a, "idle", fmt.Sprint(i))
	}
	calls := commandCalls(t, rdb)
	t.Logf("%d publishes one after another: %d script calls, %d reads of the routes, %d PUBLISH", n, calls["evalsha"], calls["hlen"], calls["publish"])
	if calls["evalsha"] != n || calls["hlen"] != n || calls["publish"] != 0 {
		t.Fatalf("%d publishes: %d script calls, %d reads of the routes (want one per batch), %d PUBLISH (want none)",
			n, calls["evalsha"], calls["hlen"], calls["publish"])
	}

	// Then idle: the last batch is settled by one read.
	la.SetSOnlyIdle(0)
	reads := la.SOnlyReads()
	reset()
	publish(t, a, "idle", "alone")
	settled()
	calls = commandCalls(t, rdb)
	if calls["evalsha"] != 1 || calls["hlen"] != 2 || la.SOnlyReads()-reads != 1 || calls["publish"] != 0 {
		t.Fatalf("a publish alone: %d script calls, %d reads of the routes, %d of them when idle (want 1 before it, 1 after), %d PUBLISH (want none)",
			calls["evalsha"], calls["hlen"], la.SOnlyReads()-reads, calls["publish"])
	}
}
