package redislog_test

import (
	_ "embed"
	"fmt"
	"math/rand"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/broker/redislog"
	"github.com/pushctl/pushctl/internal/redistest"
)

// testClock is a clock tests move by hand.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *testClock { return &testClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *testClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }

func (c *testClock) Add(d time.Duration) { c.mu.Lock(); c.now = c.now.Add(d); c.mu.Unlock() }

// openRetention makes a node on url keeping r, with the clock now (nil:
// the real one) and no heartbeats while a test runs.
func openRetention(t *testing.T, url, prefix string, r broker.Retention, now func() time.Time) *broker.Core {
	t.Helper()
	hub := broker.NewHub()
	l, err := redislog.Open(bg(t), redislog.Options{URL: url, Prefix: prefix, Retention: r, Now: now, Heartbeat: time.Hour}, hub)
	if err != nil {
		t.Fatal(err)
	}
	b := broker.New(hub, l, broker.CoreOptions{})
	t.Cleanup(func() { b.Close() })
	return b
}

// publishBatch publishes datas to ch together (queued before any is
// acknowledged, so that the node sends them in as few script calls as it
// can) and waits for them all.
func publishBatch(t *testing.T, b broker.Broker, ch string, datas []string) {
	t.Helper()
	var waits []func() (*broker.Message, int, error)
	for _, d := range datas {
		w, err := broker.StartPublish(bg(t), b, &broker.Message{Channel: ch, Data: []byte(d)})
		if err != nil {
			t.Fatal(err)
		}
		waits = append(waits, w)
	}
	for _, w := range waits {
		if _, _, err := w(); err != nil {
			t.Fatal(err)
		}
	}
}

// retained checks what ch retains: the channel's info (messages, bytes)
// and a replay of its whole history give exactly want, in order.
func retained(t *testing.T, b broker.Broker, ch string, want []string) {
	t.Helper()
	info, err := b.Channel(bg(t), ch)
	if err != nil {
		t.Fatal(err)
	}
	bytes := 0
	for _, w := range want {
		bytes += len(w)
	}
	if info.Messages != len(want) || info.Bytes != int64(bytes) {
		t.Fatalf("%s: info says %d messages, %d bytes; want %d, %d (%q)", ch, info.Messages, info.Bytes, len(want), bytes, want)
	}
	s := subscribe(t, b, broker.SubscribeOptions{Channels: []string{ch}, Last: -1})
	defer s.Close()
	var got []string
	var last *broker.Message
	if len(want) > 0 {
		msgs, _ := events(t, s, len(want))
		for _, m := range msgs {
			got = append(got, string(m.Data))
		}
		last = msgs[len(msgs)-1]
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("%s: replay %q, want %q", ch, got, want)
	}
	if last != nil && last.Seq != info.LastSeq {
		t.Fatalf("%s: replay ends at seq %d, the channel at %d", ch, last.Seq, info.LastSeq)
	}
}

// hasSizes reports whether ch has a sizes list in Redis.
func hasSizes(t *testing.T, rdb redis.Cmdable, prefix, ch string) bool {
	t.Helper()
	n, err := rdb.Exists(bg(t), prefix+"{"+ch+"}:z").Result()
	if err != nil {
		t.Fatal(err)
	}
	return n == 1
}

// firstRetained is the channel hash's first retained sequence.
func firstRetained(t *testing.T, rdb *redis.Client, prefix, ch string) uint64 {
	t.Helper()
	w, err := rdb.HGet(bg(t), prefix+"{"+ch+"}:m", "w").Result() // "<epoch> <t> <f> …"
	if err != nil {
		t.Fatal(err)
	}
	f, err := strconv.ParseUint(strings.Fields(w)[2], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// Without a bytes bound a channel keeps no sizes list: messages leave by
// age all the same, while the count does not bind. The channel's info
// counts only what is retained, its first retained sequence moves, and a
// resume from before it gets a gap to it.
func TestHistoryAgeWithoutSizesList(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := redisClient(t, srv)
	p := newPrefix()
	clock := newClock()
	b := openRetention(t, srv.URL(), p, broker.Retention{HistorySize: 100, HistoryAge: time.Minute}, clock.Now)
	publishBatch(t, b, "aged", []string{"a1", "a2", "a3"})
	clock.Add(30 * time.Second)
	publish(t, b, "aged", "b1")
	publish(t, b, "aged", "b22")
	retained(t, b, "aged", []string{"a1", "a2", "a3", "b1", "b22"})
	clock.Add(40 * time.Second) // a1-a3 are 70 s old, b1 and b22 40 s
	m, _ := publish(t, b, "aged", "c1")
	retained(t, b, "aged", []string{"b1", "b22", "c1"})
	if f := firstRetained(t, rdb, p, "aged"); f != 4 {
		t.Fatalf("first retained seq %d, want 4 (b1)", f)
	}
	s := subscribe(t, b, broker.SubscribeOptions{Channels: []string{"aged"}, From: broker.Cursor{"aged": {Epoch: m.Epoch, Seq: 1}}})
	got, gaps := events(t, s, 3)
	if len(gaps) != 1 || gaps[0].To.Seq != 3 || got[0].Seq != 4 || string(got[0].Data) != "b1" {
		t.Fatalf("resume from 1: gaps %v, first %d %q; want a gap to 3, then 4 b1", gaps, got[0].Seq, got[0].Data)
	}
	since := subscribe(t, b, broker.SubscribeOptions{Channels: []string{"aged"}, Since: clock.Now().Add(-time.Hour)})
	if got, _ := events(t, since, 3); string(got[0].Data) != "b1" || string(got[2].Data) != "c1" {
		t.Fatalf("since an hour ago: %q..%q, want b1..c1", got[0].Data, got[2].Data)
	}
	clock.Add(25 * time.Second) // b1 and b22 65 s old
	publish(t, b, "aged", "d1")
	retained(t, b, "aged", []string{"c1", "d1"})
	if f := firstRetained(t, rdb, p, "aged"); f != 6 {
		t.Fatalf("first retained seq %d, want 6 (c1)", f)
	}
	clock.Add(2 * time.Minute) // everything older than the age: only the new one stays
	publish(t, b, "aged", "e1")
	retained(t, b, "aged", []string{"e1"})
	if hasSizes(t, rdb, p, "aged") {
		t.Fatal("a channel without a bytes bound has a sizes list")
	}
}

// A bytes bound given to a channel published without one holds at once
// (its sizes list is made from the stream), and a channel published with
// one and then without drops the list and keeps its byte count exact; on
// one Redis and on Redis Cluster (where the script finds the list's key
// from the channel's meta key, in the same slot).
func TestBytesBoundTurnedOnAndOff(t *testing.T) {
	t.Run("single", func(t *testing.T) {
		srv := redistest.Start(t, redistest.Options{})
		testBytesBoundTurnedOnAndOff(t, srv.URL(), redisClient(t, srv))
	})
	t.Run("cluster", func(t *testing.T) {
		c := redistest.StartCluster(t, 3)
		rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{c.Servers[0].Addr()}})
		t.Cleanup(func() { rdb.Close() })
		testBytesBoundTurnedOnAndOff(t, c.URL(), rdb)
	})
}

func testBytesBoundTurnedOnAndOff(t *testing.T, url string, rdb redis.Cmdable) {
	p := newPrefix()
	plain := openRetention(t, url, p, broker.Retention{HistorySize: 100}, nil)
	bounded := openRetention(t, url, p, broker.Retention{HistorySize: 100, HistoryBytes: 20}, nil)
	var all []string
	for i := 1; i <= 10; i++ {
		all = append(all, fmt.Sprintf("m%02d", i))
		publish(t, plain, "sw", all[len(all)-1])
	}
	retained(t, plain, "sw", all)
	if hasSizes(t, rdb, p, "sw") {
		t.Fatal("a sizes list without a bytes bound")
	}
	publish(t, bounded, "sw", "x01")
	retained(t, bounded, "sw", []string{"m06", "m07", "m08", "m09", "m10", "x01"}) // 18 bytes
	if !hasSizes(t, rdb, p, "sw") {
		t.Fatal("no sizes list with a bytes bound")
	}
	publish(t, bounded, "sw", "x2")
	retained(t, bounded, "sw", []string{"m06", "m07", "m08", "m09", "m10", "x01", "x2"}) // 20 bytes: all fit
	publish(t, plain, "sw", "y01")
	publish(t, plain, "sw", "y02")
	retained(t, plain, "sw", []string{"m06", "m07", "m08", "m09", "m10", "x01", "x2", "y01", "y02"}) // 26 bytes
	if hasSizes(t, rdb, p, "sw") {
		t.Fatal("the sizes list is kept without a bytes bound")
	}
	publish(t, bounded, "sw", "z01")
	retained(t, bounded, "sw", []string{"m09", "m10", "x01", "x2", "y01", "y02", "z01"}) // 20 bytes
	// Then a batch over the bound: only its newest stay.
	publishBatch(t, bounded, "sw", []string{"n0000001", "n0000002", "n0000003"})
	retained(t, bounded, "sw", []string{"n0000002", "n0000003"})
	publishBatch(t, plain, "sw", []string{"p1", "p2"})
	retained(t, plain, "sw", []string{"n0000002", "n0000003", "p1", "p2"})
}

// bounded is what a history keeps of msgs (oldest first), the model the
// next test checks Redis against: the newest messages within the count,
// none older than cutoff (the zero time: no age bound), and within the
// bytes (0: no bound) though never less than the newest.
type modelMsg struct {
	data string
	at   time.Time
}

func bounded(msgs []modelMsg, size int, cutoff time.Time, maxBytes int) []string {
	from, bytes := len(msgs), 0
	for from > 0 {
		m := msgs[from-1]
		if len(msgs)-from+1 > size || m.at.Before(cutoff) || from < len(msgs) && maxBytes > 0 && bytes+len(m.data) > maxBytes {
			break
		}
		bytes += len(m.data)
		from--
	}
	var out []string
	for _, m := range msgs[from:] {
		out = append(out, m.data)
	}
	return out
}

// Batches under all three bounds at once (count, age, bytes), and under
// count and age without a bytes bound: after each batch the history is
// exactly the newest messages the bounds allow, whichever bound binds.
func TestBatchesUnderAllBounds(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	for _, maxBytes := range []int{40, 0} {
		t.Run("bytes="+strconv.Itoa(maxBytes), func(t *testing.T) {
			clock := newClock()
			const size, age = 6, time.Minute
			b := openRetention(t, srv.URL(), newPrefix(), broker.Retention{HistorySize: size, HistoryAge: age, HistoryBytes: int64(maxBytes)}, clock.Now)
			rng := rand.New(rand.NewSource(int64(maxBytes) + 1))
			var sent []modelMsg
			for round := 0; round < 40; round++ {
				clock.Add(time.Duration(rng.Intn(40)) * time.Second)
				var datas []string
				for i := rng.Intn(9); i >= 0; i-- {
					d := fmt.Sprintf("%d.%d.", round, len(datas)) + strings.Repeat("x", rng.Intn(12))
					datas = append(datas, d)
					sent = append(sent, modelMsg{d, clock.Now()})
				}
				publishBatch(t, b, "mix", datas)
				retained(t, b, "mix", bounded(sent, size, clock.Now().Add(-age), maxBytes))
			}
		})
	}
}

// oldPublish is the publish script of the release before (commit
// 02aaaf8), to write channels as it did.
//
//go:embed testdata/publish-02aaaf8.lua
var oldPublish string

// publishAsBefore appends datas to ch in one call of the previous
// release's script, with its arguments.
func publishAsBefore(t *testing.T, rdb *redis.Client, prefix, ch string, r broker.Retention, call int, datas ...string) {
	t.Helper()
	now := time.Now()
	cutoff := int64(0)
	if r.HistoryAge > 0 {
		cutoff = now.Add(-r.HistoryAge).UnixMicro()
	}
	keys := []string{prefix + "{" + ch + "}:m", prefix + "{" + ch + "}:s", prefix + "{" + ch + "}:z", prefix + "{=}:channels"}
	args := []any{strconv.FormatInt(now.UnixNano(), 36), now.UnixMicro(), r.HistorySize, cutoff, (2 * time.Hour).Milliseconds(),
		ch, prefix + "{" + ch + "}", r.HistoryBytes, "P", "before", call, len(datas)}
	for _, d := range datas {
		args = append(args, broker.DefaultEvent, 0, d, "- "+strconv.Itoa(len(broker.DefaultEvent)))
	}
	if err := redis.NewScript(oldPublish).Run(bg(t), rdb, keys, args...).Err(); err != nil {
		t.Fatalf("the previous release's script: %v", err)
	}
}

// A channel the previous release wrote (its sizes list, no byte counts
// in its entries) is published to and read after the upgrade: its
// history and byte count go on exactly; without a bytes bound it drops
// its sizes list once the messages stored before the upgrade left, and
// with one the bound holds at once.
func TestChannelOfThePreviousRelease(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := redisClient(t, srv)
	p := newPrefix()
	r := broker.Retention{HistorySize: 5, HistoryAge: time.Hour}
	var all []string
	for i := 1; i <= 7; i++ { // a full history of 5, two gone by count
		all = append(all, strings.Repeat("o", i))
		publishAsBefore(t, rdb, p, "old", r, i, all[i-1])
	}
	publishAsBefore(t, rdb, p, "old", r, 8, "o8", "o9") // and a batch
	all = append(all, "o8", "o9")
	if !hasSizes(t, rdb, p, "old") {
		t.Fatal("the previous release left no sizes list")
	}
	b := openRetention(t, srv.URL(), p, r, nil)
	retained(t, b, "old", all[4:])
	for i := 0; i < 5; i++ {
		all = append(all, "n"+strconv.Itoa(i))
		publish(t, b, "old", all[len(all)-1])
		retained(t, b, "old", all[len(all)-5:])
		// The list stays while messages without a byte count remain.
		if want := i < 4; hasSizes(t, rdb, p, "old") != want {
			t.Fatalf("after %d publishes: sizes list %v, want %v", i+1, !want, want)
		}
	}
	publishBatch(t, b, "old", []string{"b1", "b22"})
	all = append(all, "b1", "b22")
	retained(t, b, "old", all[len(all)-5:])

	// One with a bytes bound now: it holds from the first publish.
	for i := 1; i <= 6; i++ {
		publishAsBefore(t, rdb, p, "oldb", r, i, strings.Repeat("q", i))
	}
	nb := openRetention(t, srv.URL(), p, broker.Retention{HistorySize: 5, HistoryAge: time.Hour, HistoryBytes: 12}, nil)
	publish(t, nb, "oldb", "q7")
	retained(t, nb, "oldb", []string{"qqqqqq", "q7"}) // 8 bytes; 5 q more would be 13
	publish(t, b, "oldb", "r1")
	retained(t, b, "oldb", []string{"qqqqqq", "q7", "r1"})
	if !hasSizes(t, rdb, p, "oldb") {
		t.Fatal("the sizes list went while a message stored before the upgrade remains")
	}
}

// A publish alone to a channel whose history is full runs five Redis
// commands and the node's counts read: the script call, HMGET, XADD, HSET
// and PUBLISH (no sizes list without a bytes bound).
func TestLonePublishCommands(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := redisClient(t, srv)
	b := openRetention(t, srv.URL(), newPrefix(), broker.Retention{HistorySize: 10}, nil)
	for i := 0; i < 20; i++ {
		publish(t, b, "lone", "full")
	}
	if err := rdb.ConfigResetStat(bg(t)).Err(); err != nil {
		t.Fatal(err)
	}
	const n = 50
	for i := 0; i < n; i++ {
		publish(t, b, "lone", strconv.Itoa(i))
	}
	calls := commandCalls(t, []*redis.Client{rdb})
	for _, other := range []string{"info", "config|resetstat", "hello", "client|setinfo", "ping"} {
		delete(calls, other) // the measurement's own, or a new connection's
	}
	want := map[string]int{"evalsha": n, "hmget": 2 * n, "xadd": n, "hset": n, "publish": n}
	if fmt.Sprint(calls) != fmt.Sprint(want) {
		t.Fatalf("%d publishes alone ran %v, want %v", n, calls, want)
	}
}

// A publish that replaces a channel's whole history (here a history of
// one) empties its sizes list, which Redis then deletes; the list made
// anew keeps an expiry like the channel's other keys, so a channel no
// longer published leaves nothing behind.
func TestSizesListKeepsItsExpiry(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := redisClient(t, srv)
	p := newPrefix()
	b := openRetention(t, srv.URL(), p, broker.Retention{HistorySize: 1, HistoryBytes: 100, HistoryAge: time.Hour}, nil)
	for i := 1; i <= 3; i++ {
		publish(t, b, "one", "x")
		for _, kind := range []string{"m", "s", "z"} {
			if d, err := rdb.PTTL(bg(t), p+"{one}:"+kind).Result(); err != nil || d <= 0 {
				t.Fatalf("after publish %d: %s expires in %v (%v), want a time", i, kind, d, err)
			}
		}
	}
}
