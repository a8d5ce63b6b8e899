package redislog_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/broker/brokertest"
	"github.com/pushctl/pushctl/internal/broker/redislog"
	"github.com/pushctl/pushctl/internal/redistest"
)

// Faults while publishing: Redis connections killed (CLIENT KILL TYPE
// normal, six times, 0.4 s apart), Redis stopped with SIGSTOP for 6 s, and
// Redis busy in DEBUG SLEEP 6, each during streams of pipelined publishes
// (as an NDJSON stream or `pub --lines` makes them) on several channels.
// Whatever the replies say, every acknowledged message is stored exactly
// once at the position its acknowledgement gave, no message is stored
// twice, the stored messages keep their publish order, and no message
// whose reply said nothing was published is stored.

type outcome int

const (
	pending outcome = iota
	acked
	refused // the reply said nothing was published
	unknown // the reply said the outcome is not known
)

type pubRecord struct {
	data string
	out  outcome
	seq  uint64
	err  error
	dup  bool // acknowledged as a duplicate: never right here, each key is used once
}

// streamPublish publishes "0", "1", … on ch with up to window publishes
// awaiting their replies, until stop is closed and then until `after`
// more were acknowledged (or a minute passed). warm is called once 500
// were acknowledged.
func streamPublish(t *testing.T, b broker.Broker, ch string, window int, warm func(), stop <-chan struct{}, after int) []*pubRecord {
	return streamPublishKeyed(t, b, ch, window, warm, stop, after, false)
}

// streamPublishKeyed is streamPublish with, when keyed, an idempotency
// key on every message (its own): a resent batch must not take its own
// messages for duplicates.
func streamPublishKeyed(t *testing.T, b broker.Broker, ch string, window int, warm func(), stop <-chan struct{}, after int, keyed bool) []*pubRecord {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	type inflight struct {
		rec  *pubRecord
		wait func() (*broker.Message, int, error)
	}
	q := make(chan inflight, window)
	var recs []*pubRecord
	var mu sync.Mutex
	ackedAfter, ackedAll := 0, 0
	stopped := false
	var finish <-chan time.Time
	done := make(chan struct{})
	go func() {
		defer close(done)
		for f := range q {
			if f.wait == nil {
				continue
			}
			m, _, err := f.wait()
			mu.Lock()
			classify(f.rec, m, err)
			if f.rec.out == acked {
				if ackedAll++; ackedAll == 500 {
					warm()
				}
				if stopped {
					ackedAfter++
				}
			}
			mu.Unlock()
		}
	}()
	for i := 0; ; i++ {
		mu.Lock()
		if !stopped {
			select {
			case <-stop:
				stopped = true
				finish = time.After(time.Minute)
			default:
			}
		}
		enough := stopped && ackedAfter >= after
		mu.Unlock()
		if enough {
			break
		}
		select {
		case <-finish:
			t.Errorf("%s: fewer than %d publishes acknowledged within a minute after the faults ended", ch, after)
			close(q)
			<-done
			return recs
		default:
		}
		rec := &pubRecord{data: strconv.Itoa(i)}
		recs = append(recs, rec)
		m := &broker.Message{Channel: ch, Data: []byte(rec.data)}
		if keyed {
			m.Key = "k" + rec.data
		}
		wait, err := broker.StartPublish(ctx, b, m)
		if err != nil {
			mu.Lock()
			classify(rec, nil, err)
			mu.Unlock()
		}
		q <- inflight{rec, wait}
	}
	close(q)
	<-done
	return recs
}

func classify(rec *pubRecord, m *broker.Message, err error) {
	switch {
	case err == nil && m.Duplicate:
		rec.out, rec.err = unknown, fmt.Errorf("its own key taken for a duplicate (seq %d)", m.Seq)
		rec.dup = true
	case err == nil:
		rec.out, rec.seq = acked, m.Seq
	case errors.Is(err, broker.ErrUnavailable):
		rec.out, rec.err = refused, err
	default:
		rec.out, rec.err = unknown, err
	}
}

// checkStored compares what a channel's stream holds with the replies.
func checkStored(t *testing.T, rdb redis.Cmdable, prefix, ch string, recs []*pubRecord) {
	t.Helper()
	entries, err := rdb.XRange(context.Background(), prefix+"{"+ch+"}:s", "-", "+").Result()
	if err != nil {
		t.Fatalf("%s: XRANGE: %v", ch, err)
	}
	at := map[string][]uint64{} // data -> seqs holding it
	last := -1
	disorder := ""
	for _, e := range entries {
		seq, _ := strconv.ParseUint(strings.TrimSuffix(e.ID, "-1"), 10, 64)
		d := fmt.Sprint(e.Values["d"])
		at[d] = append(at[d], seq)
		n, _ := strconv.Atoi(d)
		if n <= last && disorder == "" {
			disorder = fmt.Sprintf("%q at seq %d after %d", d, seq, last)
		}
		last = max(last, n)
	}
	count := map[outcome]int{}
	var twice []string
	for d, seqs := range at {
		if len(seqs) > 1 {
			twice = append(twice, fmt.Sprintf("%s at %v", d, seqs))
		}
	}
	var wrong []string
	for _, r := range recs {
		count[r.out]++
		seqs := at[r.data]
		switch r.out {
		case acked:
			if len(seqs) != 1 || seqs[0] != r.seq {
				wrong = append(wrong, fmt.Sprintf("message %s acknowledged at seq %d is stored at %v", r.data, r.seq, seqs))
			}
		case refused:
			if len(seqs) > 0 {
				wrong = append(wrong, fmt.Sprintf("message %s was refused (%v) but is stored at %v", r.data, r.err, seqs))
			}
		case pending:
			wrong = append(wrong, fmt.Sprintf("message %s got no reply", r.data))
		}
		if r.dup {
			wrong = append(wrong, fmt.Sprintf("message %s: %v", r.data, r.err))
		}
	}
	if len(wrong) > 0 {
		t.Errorf("%s: %d replies disagree with what is stored, e.g.\n%s", ch, len(wrong), strings.Join(wrong[:min(5, len(wrong))], "\n"))
	}
	t.Logf("%s: %d published: %d acknowledged, %d refused, %d outcome unknown; %d stored", ch, len(recs),
		count[acked], count[refused], count[unknown], len(entries))
	if len(twice) > 0 {
		t.Errorf("%s: %d messages stored twice or more, e.g. %v", ch, len(twice), twice[:min(5, len(twice))])
	}
	if disorder != "" {
		t.Errorf("%s: stored out of publish order: %s", ch, disorder)
	}
}

// faultRun publishes on three channels through a node while inject runs,
// then checks every channel.
func faultRun(t *testing.T, url string, rdb redis.Cmdable, inject func()) {
	faultRunKeyed(t, url, rdb, inject, false)
}

func faultRunKeyed(t *testing.T, url string, rdb redis.Cmdable, inject func(), keyed bool) {
	p := newPrefix()
	b := open(t, url, p, brokertest.Options{HistorySize: 1 << 20})
	stop := make(chan struct{})
	chans := []string{"f.a", "f.b", "f.c"}
	results := make([][]*pubRecord, len(chans))
	var wg, warm sync.WaitGroup
	for i, ch := range chans {
		wg.Add(1)
		warm.Add(1)
		go func() {
			defer wg.Done()
			results[i] = streamPublishKeyed(t, b, ch, 256, warm.Done, stop, 300, keyed)
		}()
	}
	// Publishing is under way before the faults begin.
	warm.Wait()
	inject()
	close(stop)
	wg.Wait()
	for i, ch := range chans {
		checkStored(t, rdb, p, ch, results[i])
	}
}

// killConnections runs CLIENT KILL TYPE normal on each server six times,
// 0.4 s apart: every command connection a node has breaks, often with
// publishes written and not yet answered.
func killConnections(t *testing.T, servers ...*redistest.Server) func() {
	return func() {
		tick := time.NewTicker(400 * time.Millisecond)
		defer tick.Stop()
		for i := 0; i < 6; i++ {
			<-tick.C
			for _, s := range servers {
				n, err := redisClient(t, s).ClientKillByFilter(context.Background(), "TYPE", "normal").Result()
				if err != nil {
					t.Errorf("CLIENT KILL: %v", err)
				}
				t.Logf("CLIENT KILL TYPE normal on %s: %d connections", s.Addr(), n)
			}
		}
	}
}

// stall stops the servers with SIGSTOP for d, then lets them go on.
func stall(t *testing.T, d time.Duration, servers ...*redistest.Server) func() {
	return func() {
		for _, s := range servers {
			s.Pause()
		}
		<-time.After(d) // the fault: Redis does not answer for d
		for _, s := range servers {
			s.Resume()
		}
	}
}

// debugSleep makes the server busy for secs seconds (DEBUG SLEEP).
func debugSleep(t *testing.T, secs int, s *redistest.Server) func() {
	return func() {
		c := redis.NewClient(&redis.Options{Addr: s.Addr(), ReadTimeout: time.Duration(secs+30) * time.Second})
		defer c.Close()
		if err := c.Do(context.Background(), "DEBUG", "SLEEP", secs).Err(); err != nil {
			t.Errorf("DEBUG SLEEP: %v", err)
		}
	}
}

func TestFaultsConnectionsKilled(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	faultRun(t, srv.URL(), redisClient(t, srv), killConnections(t, srv))
}

// The same with an idempotency key on every message: batches of keyed
// publishes that are sent again after a connection broke find their own
// keys' records and must answer with their positions, not as duplicates.
func TestFaultsConnectionsKilledKeyed(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	faultRunKeyed(t, srv.URL(), redisClient(t, srv), killConnections(t, srv), true)
}

func TestFaultsRedisStopped(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	faultRun(t, srv.URL(), redisClient(t, srv), stall(t, 6*time.Second, srv))
}

func TestFaultsDebugSleep(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	faultRun(t, srv.URL(), redisClient(t, srv), debugSleep(t, 6, srv))
}

func clusterClient(t *testing.T, c *redistest.Cluster) *redis.ClusterClient {
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{c.Servers[0].Addr()}})
	t.Cleanup(func() { cc.Close() })
	return cc
}

func TestFaultsClusterConnectionsKilled(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	faultRun(t, c.URL(), clusterClient(t, c), killConnections(t, c.Servers...))
}

func TestFaultsClusterStopped(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	faultRun(t, c.URL(), clusterClient(t, c), stall(t, 6*time.Second, c.Servers...))
}

// Redis stopped for longer than the publish timeout: the publishes that
// were sent fail with ErrOutcomeUnknown, never with ErrUnavailable
// ("nothing was published"), and the node reports itself degraded while
// Redis does not answer. Once Redis goes on, each of them is stored at
// most once, and publishing works again.
func TestFaultsLongStallOutcomeUnknown(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	p := newPrefix()
	hub := broker.NewHub()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l, err := redislog.Open(ctx, redislog.Options{URL: srv.URL(), Prefix: p, PublishTimeout: time.Second,
		StallAfter: 300 * time.Millisecond, Retention: broker.Retention{HistorySize: 100000}}, hub)
	if err != nil {
		t.Fatal(err)
	}
	b := broker.New(hub, l, broker.CoreOptions{})
	defer b.Close()
	for i := 0; i < 10; i++ {
		if _, _, err := b.Publish(ctx, &broker.Message{Channel: "long", Data: []byte(strconv.Itoa(i))}); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Health(); err != nil {
		t.Fatalf("health before the stall: %v", err)
	}
	srv.Pause()
	resumed := false
	defer func() {
		if !resumed {
			srv.Resume()
		}
	}()
	var recs []*pubRecord
	var waits []func() (*broker.Message, int, error)
	for i := 10; i < 40; i++ {
		rec := &pubRecord{data: strconv.Itoa(i)}
		recs = append(recs, rec)
		wait, err := broker.StartPublish(ctx, b, &broker.Message{Channel: "long", Data: []byte(rec.data)})
		if err != nil {
			classify(rec, nil, err)
		}
		waits = append(waits, wait)
	}
	// The node says Redis is stalled soon after StallAfter, long before a
	// connection times out (3 s).
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	noticed := time.After(2 * time.Second)
	for b.Health() == nil {
		select {
		case <-tick.C:
		case <-noticed:
			t.Fatal("health still ok 2s into the stall")
		}
	}
	if err := b.Health(); !strings.Contains(err.Error(), "redis stalled") {
		t.Fatalf("health early in the stall: %v", err)
	}
	for i, wait := range waits {
		if wait == nil {
			continue
		}
		m, _, err := wait()
		classify(recs[i], m, err)
		if recs[i].out != unknown {
			t.Fatalf("publish %s while Redis is stopped: %v, want ErrOutcomeUnknown", recs[i].data, err)
		}
	}
	// Still stopped: the node says so, and refuses new publishes knowing
	// it sent nothing.
	if err := b.Health(); err == nil || !strings.Contains(err.Error(), "redis") {
		t.Fatalf("health while Redis is stopped: %v", err)
	}
	if _, _, err := b.Publish(ctx, &broker.Message{Channel: "long", Data: []byte("refused")}); !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("publish while degraded: %v, want ErrUnavailable", err)
	}
	t.Logf("while stopped: %v", b.Health())
	srv.Resume()
	resumed = true
	// Publishing works again once Redis answers (the heartbeat clears the
	// state within a second or two).
	retry := time.NewTicker(50 * time.Millisecond)
	defer retry.Stop()
	deadline := time.After(20 * time.Second)
	for {
		_, _, err := b.Publish(ctx, &broker.Message{Channel: "long", Data: []byte("40")})
		if err == nil {
			break
		}
		if !errors.Is(err, broker.ErrUnavailable) {
			t.Fatalf("publish after the stall: %v", err)
		}
		select {
		case <-retry.C:
		case <-deadline:
			t.Fatalf("publishes still refused 20s after Redis went on: %v", err)
		}
	}
	if err := b.Health(); err != nil {
		t.Fatalf("health after the stall: %v", err)
	}
	checkStored(t, redisClient(t, srv), p, "long", recs)
}

// Closing a node while Redis is stopped does not wait out the publish
// timeout (here a minute) for its publishes: Close returns once the
// attempt under way timed out (3 s read and write timeouts) and the
// heartbeat's read gave up (5 s), and the publishes fail: the one sent
// with its outcome unknown, those still queued as not published.
func TestFaultsCloseWhileStopped(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	hub := broker.NewHub()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l, err := redislog.Open(ctx, redislog.Options{URL: srv.URL(), Prefix: newPrefix(), PublishTimeout: time.Minute}, hub)
	if err != nil {
		t.Fatal(err)
	}
	b := broker.New(hub, l, broker.CoreOptions{})
	srv.Pause()
	defer srv.Resume()
	var waits []func() (*broker.Message, int, error)
	for i := 0; i < 10; i++ {
		w, err := broker.StartPublish(ctx, b, &broker.Message{Channel: fmt.Sprintf("c%d", i%3), Data: []byte("x")})
		if err != nil {
			t.Fatal(err)
		}
		waits = append(waits, w)
	}
	start := time.Now()
	b.Close()
	if took := time.Since(start); took > 15*time.Second {
		t.Fatalf("Close took %s with Redis stopped", took)
	}
	sent := 0
	for i, w := range waits {
		_, _, err := w()
		switch {
		case errors.Is(err, broker.ErrOutcomeUnknown):
			sent++
		case !errors.Is(err, broker.ErrUnavailable):
			t.Fatalf("publish %d: %v, want ErrOutcomeUnknown or ErrUnavailable", i, err)
		}
	}
	if sent == 0 {
		t.Fatal("no publish was under way when Close began")
	}
	t.Logf("Close took %s", time.Since(start).Round(time.Millisecond))
}

// warnings is a slog handler that keeps the messages of warnings.
type warnings struct {
	mu   sync.Mutex
	msgs []string
}

func (w *warnings) Enabled(context.Context, slog.Level) bool { return true }
func (w *warnings) Handle(_ context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn {
		w.mu.Lock()
		w.msgs = append(w.msgs, r.Message)
		w.mu.Unlock()
	}
	return nil
}
func (w *warnings) WithAttrs([]slog.Attr) slog.Handler { return w }
func (w *warnings) WithGroup(string) slog.Handler      { return w }

// Redis forgetting the scripts (SCRIPT FLUSH, or a restart the node did
// not notice) is not an outage: the publish loads them again and goes
// through, and the node never reports Redis unreachable, so a publish
// right after it is not refused.
func TestScriptFlushIsNotAnOutage(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer rdb.Close()
	hub := broker.NewHub()
	var w warnings
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := redislog.Open(ctx, redislog.Options{URL: srv.URL(), Prefix: newPrefix(), Logger: slog.New(&w)}, hub)
	if err != nil {
		t.Fatal(err)
	}
	b := broker.New(hub, l, broker.CoreOptions{})
	defer b.Close()
	for i := 0; i < 3; i++ {
		if err := rdb.ScriptFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		if _, _, err := b.Publish(ctx, &broker.Message{Channel: "c", Data: []byte("x")}); err != nil {
			t.Fatalf("publish after SCRIPT FLUSH: %v", err)
		}
		if err := b.Health(); err != nil {
			t.Fatalf("health right after the publish went through: %v", err)
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.msgs) > 0 {
		t.Fatalf("warnings after SCRIPT FLUSH: %q", w.msgs)
	}
}

// Redis refusing commands for a passing reason (here a script running
// long: BUSY; LOADING after a restart, MASTERDOWN and READONLY during a
// failover alike) is Redis unavailable: reading or deleting a channel
// fails with broker.ErrUnavailable (answered 503 broker_unavailable, not
// 500 internal_error), the node reports itself degraded and a publish
// meanwhile is refused as when Redis is unreachable (nothing stored);
// once Redis answers again, publishing works.
func TestRefusedByRedisIsUnavailable(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	b := open(t, srv.URL(), newPrefix(), brokertest.Options{HistorySize: 10})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, _, err := b.Publish(ctx, &broker.Message{Channel: "c", Data: []byte("1")}); err != nil {
		t.Fatal(err)
	}
	stop := srv.Busy()
	for what, op := range map[string]func() error{
		"channel":  func() error { _, err := b.Channel(ctx, "c"); return err },
		"channels": func() error { _, err := b.Channels(ctx); return err },
		"delete":   func() error { return b.DeleteChannel(ctx, "nosuch") },
	} {
		if err := op(); !errors.Is(err, broker.ErrUnavailable) || !strings.Contains(err.Error(), "BUSY") {
			t.Errorf("%s while redis is busy: %v, not broker.ErrUnavailable", what, err)
		}
	}
	if err := b.Health(); err == nil || !strings.Contains(err.Error(), "BUSY") {
		t.Errorf("health while redis is busy: %v", err)
	}
	if _, _, err := b.Publish(ctx, &broker.Message{Channel: "c", Data: []byte("x")}); !errors.Is(err, broker.ErrUnavailable) {
		t.Errorf("publish while redis is busy: %v, not broker.ErrUnavailable", err)
	}
	stop()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, _, err := b.Publish(ctx, &broker.Message{Channel: "c", Data: []byte("2")})
		if err == nil {
			break
		}
		if !errors.Is(err, broker.ErrUnavailable) || time.Now().After(deadline) {
			t.Fatalf("publish after busy: %v", err)
		}
	}
	inf, err := b.Channel(ctx, "c")
	if err != nil || inf.LastSeq != 2 {
		t.Fatalf("after busy: %+v %v", inf, err)
	}
}

// Redis refusing writes because it cannot keep more (over maxmemory with
// noeviction, OOM; a failed save, MISCONF) is the store refusing, as a
// full disk is for --data-dir: publishes and deletes fail with
// broker.ErrStore (answered 507 store_failed, not 500 internal_error),
// nothing is stored meanwhile, and once Redis takes writes again the
// channel goes on from where it was. The node reports itself degraded
// meanwhile, naming why (its heartbeat, a write too, is refused).
func TestStoreRefusedIsStoreFailed(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := redisClient(t, srv)
	b := open(t, srv.URL(), newPrefix(), brokertest.Options{HistorySize: 10})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	seq := uint64(0)
	publish := func() error {
		_, _, err := b.Publish(ctx, &broker.Message{Channel: "c", Data: []byte("m")})
		if err == nil {
			seq++
		}
		return err
	}
	if err := publish(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name       string
		code       string
		refuse, ok func()
	}{
		{"over maxmemory", "OOM",
			func() { rdb.ConfigSet(ctx, "maxmemory", "1") },
			func() { rdb.ConfigSet(ctx, "maxmemory", "0") }},
		{"a failed save", "MISCONF", srv.FailSaves, srv.SavesWork},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.refuse()
			var waits []func() (*broker.Message, int, error)
			for i := 0; i < 5; i++ {
				w, err := broker.StartPublish(ctx, b, &broker.Message{Channel: "c", Data: []byte("x")})
				if err != nil {
					t.Fatal(err)
				}
				waits = append(waits, w)
			}
			for i, w := range waits {
				if _, _, err := w(); !errors.Is(err, broker.ErrStore) || errors.Is(err, broker.ErrUnavailable) || !strings.Contains(err.Error(), tc.code) {
					t.Errorf("publish %d: %v, want broker.ErrStore naming %s", i, err, tc.code)
				}
			}
			if tc.code == "MISCONF" {
				if err := b.DeleteChannel(ctx, "c"); !errors.Is(err, broker.ErrStore) {
					t.Errorf("delete: %v, want broker.ErrStore", err)
				}
			}
			if err := b.Health(); err == nil || !strings.Contains(err.Error(), "refuses writes") || !strings.Contains(err.Error(), tc.code) {
				t.Errorf("health: %v, want degraded: refuses writes, %s", err, tc.code)
			}
			tc.ok()
			if err := publish(); err != nil {
				t.Fatalf("publish once Redis takes writes: %v", err)
			}
			inf, err := b.Channel(ctx, "c")
			if err != nil || inf.LastSeq != seq || inf.Messages != int(seq) {
				t.Fatalf("after: %+v %v, want %d messages, the last %d", inf, err, seq, seq)
			}
		})
	}
}

// A node's Pub/Sub connections killed again and again while it publishes
// (CLIENT KILL TYPE pubsub every few milliseconds; Redis drops a Pub/Sub
// client over its output buffer limit the same way). Publishes go over
// the command connections, which nothing broke: each one is taken and
// acknowledged, and the subscribers on the publishing node and on
// another get every message once, in order, with no gap notice (each
// node refills what it missed when it has resubscribed). Before, every
// publish from the kill until the node had resubscribed was refused
// ("broker storage unavailable: redis unreachable: EOF"), though Redis
// was there to store it.
func pubSubKilledWhilePublishing(t *testing.T, url string, servers ...*redistest.Server) {
	p := newPrefix()
	o := brokertest.Options{HistorySize: 1000}
	a := open(t, url, p, o)
	b := open(t, url, p, o)
	subs := map[string]*broker.Subscription{
		"A": subscribe(t, a, broker.SubscribeOptions{Channels: []string{"flap"}}),
		"B": subscribe(t, b, broker.SubscribeOptions{Channels: []string{"flap"}}),
	}
	stop := make(chan struct{})
	killed := make(chan int)
	var rcs []*redis.Client
	for _, s := range servers {
		rcs = append(rcs, redisClient(t, s))
	}
	go func() {
		n := 0
		defer func() { killed <- n }()
		for {
			for _, rc := range rcs {
				k, err := rc.ClientKillByFilter(context.Background(), "TYPE", "pubsub").Result()
				if err != nil {
					t.Errorf("CLIENT KILL: %v", err)
					return
				}
				n += int(k)
			}
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	const n = 300
	for i := 1; i <= n; i++ {
		if _, _, err := a.Publish(bg(t), &broker.Message{Channel: "flap", Data: []byte(strconv.Itoa(i))}); err != nil {
			close(stop)
			t.Fatalf("publish %d with the Pub/Sub connections killed (%d so far): %v", i, <-killed, err)
		}
	}
	close(stop)
	t.Logf("%d Pub/Sub connections killed", <-killed)
	for who, s := range subs {
		got, gaps := events(t, s, n)
		if len(gaps) > 0 {
			t.Errorf("%s: gap notices %v", who, gaps)
		}
		inOrder(t, who, got, 1)
	}
}

func TestPubSubKilledWhilePublishing(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	pubSubKilledWhilePublishing(t, srv.URL(), srv)
}

func TestPubSubKilledWhilePublishingCluster(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	pubSubKilledWhilePublishing(t, c.URL(), c.Servers...)
}
