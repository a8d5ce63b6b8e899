// Package brokertest is the conformance suite every broker.Broker
// implementation runs: ordering, retention, resume, gaps, patterns and
// concurrency.
package brokertest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
)

// Factory returns a fresh broker for one test. opts carry the retention the
// test needs; implementations map them to their own configuration. The
// factory registers cleanup with t.
type Factory func(t *testing.T, opts Options) broker.Broker

// Options are the retention settings a test asks for.
type Options struct {
	HistorySize int
	HistoryAge  time.Duration
	QueueSize   int
	Now         func() time.Time
	// RetentionFor gives some channels a retention of their own.
	RetentionFor broker.RetentionFor
}

// Run runs the whole suite against brokers made by f.
func Run(t *testing.T, f Factory) {
	tests := []struct {
		name string
		fn   func(*testing.T, Factory)
	}{
		{"PublishAssignsPositions", testPublishAssigns},
		{"OrderingSingleSubscriber", testOrdering},
		{"ReplayLast", testReplayLast},
		{"ResumeFromPosition", testResume},
		{"ResumeAtHeadGetsNothingOld", testResumeAtHead},
		{"GapWhenTrimmed", testGapTrimmed},
		{"GapOnNewEpoch", testGapEpoch},
		{"HistoryAge", testHistoryAge},
		{"Patterns", testPatterns},
		{"MultiChannel", testMultiChannel},
		{"ConcurrentPublishersSubscribers", testConcurrent},
		{"SlowConsumer", testSlowConsumer},
		{"WaitSubscribers", testWaitSubscribers},
		{"DeleteChannel", testDelete},
		{"InvalidNames", testInvalid},
		{"ChannelInfo", testInfo},
		{"CloseEndsSubscriptions", testClose},
		{"StartPositions", testStart},
		{"InternalNotCounted", testInternal},
		{"CountedMeansLive", testCountedMeansLive},
		{"RetentionPerChannel", testRetentionPerChannel},
		{"RetentionPerChannelNoneByDefault", testRetentionPerChannelNoneByDefault},
		{"IdempotencyKeys", testIdempotencyKeys},
		{"IdempotencyKeysPipelined", testIdempotencyKeysPipelined},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, f) })
	}
}

// waitDone waits, with a deadline, for s to end.
func waitDone(t *testing.T, s *broker.Subscription) {
	t.Helper()
	select {
	case <-s.Done():
	case <-time.After(20 * time.Second):
		t.Fatalf("subscription to %v did not end", s.Channels())
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return c
}

func pub(t *testing.T, b broker.Broker, ch, data string) *broker.Message {
	t.Helper()
	m, _, err := b.Publish(ctx(t), &broker.Message{Channel: ch, Data: []byte(data)})
	if err != nil {
		t.Fatalf("publish %s: %v", ch, err)
	}
	return m
}

// collect reads events until n messages arrived (gaps are returned too).
func collect(t *testing.T, s *broker.Subscription, n int) (msgs []*broker.Message, gaps []*broker.Gap) {
	t.Helper()
	c := ctx(t)
	var buf []broker.Event
	for len(msgs) < n {
		evs, err := s.Next(c, buf)
		if err != nil {
			t.Fatalf("after %d of %d messages: %v", len(msgs), n, err)
		}
		for _, e := range evs {
			if e.Gap != nil {
				gaps = append(gaps, e.Gap)
			} else {
				msgs = append(msgs, e.Msg)
			}
		}
		buf = evs
	}
	if len(msgs) > n {
		t.Fatalf("got %d messages, want %d", len(msgs), n)
	}
	return msgs, gaps
}

// expectIdle checks that nothing is queued right now: it publishes a
// marker on a probe channel the subscription has too and expects it next.
func expectNext(t *testing.T, s *broker.Subscription, want string) {
	t.Helper()
	msgs, gaps := collect(t, s, 1)
	if len(gaps) > 0 || string(msgs[0].Data) != want {
		t.Fatalf("next = %q (gaps %v), want %q", msgs[0].Data, gaps, want)
	}
}

func sub(t *testing.T, b broker.Broker, o broker.SubscribeOptions) *broker.Subscription {
	t.Helper()
	s, err := b.Subscribe(ctx(t), o)
	if err != nil {
		t.Fatalf("subscribe %v: %v", o.Channels, err)
	}
	t.Cleanup(s.Close)
	return s
}

func testPublishAssigns(t *testing.T, f Factory) {
	b := f(t, Options{})
	m1 := pub(t, b, "a", "one")
	m2 := pub(t, b, "a", "two")
	o := pub(t, b, "b", "other")
	if m1.Seq != 1 || m2.Seq != 2 || o.Seq != 1 {
		t.Fatalf("seqs = %d,%d,%d; want 1,2,1", m1.Seq, m2.Seq, o.Seq)
	}
	if m1.Epoch == "" || m1.Epoch != m2.Epoch {
		t.Fatalf("epochs %q %q", m1.Epoch, m2.Epoch)
	}
	if m1.ID() == m2.ID() || m1.Time.IsZero() || m1.Event != broker.DefaultEvent {
		t.Fatalf("bad message %+v", m1)
	}
	if _, err := broker.ParsePosition(m2.ID()); err != nil {
		t.Fatalf("id %q does not parse: %v", m2.ID(), err)
	}
}

func testOrdering(t *testing.T, f Factory) {
	b := f(t, Options{HistorySize: 10})
	s := sub(t, b, broker.SubscribeOptions{Channels: []string{"ord"}, QueueSize: 10000})
	const n = 5000
	for i := 0; i < n; i++ {
		pub(t, b, "ord", fmt.Sprint(i))
	}
	msgs, _ := collect(t, s, n)
	for i, m := range msgs {
		if string(m.Data) != fmt.Sprint(i) || m.Seq != uint64(i+1) {
			t.Fatalf("message %d = %q seq %d", i, m.Data, m.Seq)
		}
	}
}

func testReplayLast(t *testing.T, f Factory) {
	b := f(t, Options{HistorySize: 5})
	for i := 1; i <= 8; i++ {
		pub(t, b, "r", fmt.Sprint(i))
	}
	s := sub(t, b, broker.SubscribeOptions{Channels: []string{"r"}, Last: 2})
	msgs, _ := collect(t, s, 2)
	if string(msgs[0].Data) != "7" || string(msgs[1].Data) != "8" {
		t.Fatalf("last 2 = %q %q", msgs[0].Data, msgs[1].Data)
	}
	all := sub(t, b, broker.SubscribeOptions{Channels: []string{"r"}, Last: -1})
	msgs, _ = collect(t, all, 5)
	if string(msgs[0].Data) != "4" {
		t.Fatalf("all retained starts at %q, want 4 (history 5)", msgs[0].Data)
	}
	pub(t, b, "r", "9")
	expectNext(t, s, "9")
	expectNext(t, all, "9")
}

func testResume(t *testing.T, f Factory) {
	b := f(t, Options{HistorySize: 100})
	var ms []*broker.Message
	for i := 1; i <= 10; i++ {
		ms = append(ms, pub(t, b, "res", fmt.Sprint(i)))
	}
	s := sub(t, b, broker.SubscribeOptions{Channels: []string{"res"}, From: broker.Cursor{"res": ms[5].Position()}, Last: 100})
	msgs, gaps := collect(t, s, 4)
	if len(gaps) != 0 {
		t.Fatalf("unexpected gap %+v", gaps[0])
	}
	for i, m := range msgs {
		if m.Seq != uint64(7+i) {
			t.Fatalf("resumed message %d has seq %d, want %d", i, m.Seq, 7+i)
		}
	}
	pub(t, b, "res", "11")
	expectNext(t, s, "11")
}

func testResumeAtHead(t *testing.T, f Factory) {
	b := f(t, Options{HistorySize: 100})
	pub(t, b, "h", "1")
	m := pub(t, b, "h", "2")
	s := sub(t, b, broker.SubscribeOptions{Channels: []string{"h"}, From: broker.Cursor{"h": m.Position()}})
	pub(t, b, "h", "3")
	expectNext(t, s, "3")
}

func testGapTrimmed(t *testing.T, f Factory) {
	b := f(t, Options{HistorySize: 3})
	first := pub(t, b, "g", "1")
	for i := 2; i <= 10; i++ {
		pub(t, b, "g", fmt.Sprint(i))
	}
	s := sub(t, b, broker.SubscribeOptions{Channels: []string{"g"}, From: broker.Cursor{"g": first.Position()}})
	msgs, gaps := collect(t, s, 3)
	if len(gaps) != 1 {
		t.Fatalf("gaps = %d, want 1", len(gaps))
	}
	g := gaps[0]
	if g.Channel != "g" || g.From != first.Position() || g.To.Seq != 7 || g.To.Epoch != first.Epoch {
		t.Fatalf("gap = %+v, want from %v to seq 7", g, first.Position())
	}
	if msgs[0].Seq != 8 || msgs[2].Seq != 10 {
		t.Fatalf("after gap got seqs %d..%d, want 8..10", msgs[0].Seq, msgs[2].Seq)
	}
}

func testGapEpoch(t *testing.T, f Factory) {
	b := f(t, Options{HistorySize: 10})
	old := pub(t, b, "e", "old")
	if err := b.DeleteChannel(ctx(t), "e"); err != nil {
		t.Fatal(err)
	}
	n1 := pub(t, b, "e", "new1")
	if n1.Epoch == old.Epoch {
		t.Fatalf("epoch unchanged after delete: %s", n1.Epoch)
	}
	s := sub(t, b, broker.SubscribeOptions{Channels: []string{"e"}, From: broker.Cursor{"e": old.Position()}})
	msgs, gaps := collect(t, s, 1)
	if len(gaps) != 1 || gaps[0].To.Epoch != n1.Epoch || gaps[0].To.Seq != 0 {
		t.Fatalf("gaps = %+v, want one into epoch %s at 0", gaps, n1.Epoch)
	}
	if string(msgs[0].Data) != "new1" {
		t.Fatalf("got %q", msgs[0].Data)
	}
}

func testHistoryAge(t *testing.T, f Factory) {
	var mu sync.Mutex
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	b := f(t, Options{HistorySize: 100, HistoryAge: time.Minute, Now: clock})
	pub(t, b, "age", "old")
	mu.Lock()
	now = now.Add(2 * time.Minute)
	mu.Unlock()
	pub(t, b, "age", "fresh")
	s := sub(t, b, broker.SubscribeOptions{Channels: []string{"age"}, Last: -1})
	expectNext(t, s, "fresh")
	info, err := b.Channel(ctx(t), "age")
	if err != nil || info.Messages != 1 {
		t.Fatalf("info = %+v, %v; want 1 retained", info, err)
	}
	// Since: only messages after a time.
	pub(t, b, "age", "later")
	s2 := sub(t, b, broker.SubscribeOptions{Channels: []string{"age"}, Since: now.Add(-time.Second)})
	msgs, _ := collect(t, s2, 2)
	if string(msgs[0].Data) != "fresh" || string(msgs[1].Data) != "later" {
		t.Fatalf("since replay = %q,%q", msgs[0].Data, msgs[1].Data)
	}
}

func testPatterns(t *testing.T, f Factory) {
	b := f(t, Options{HistorySize: 10})
	pub(t, b, "news.old", "before")
	star := sub(t, b, broker.SubscribeOptions{Channels: []string{"news.*"}, Last: -1})
	tail := sub(t, b, broker.SubscribeOptions{Channels: []string{"news.>"}})
	expectNext(t, star, "before")
	pub(t, b, "news", "bare")         // neither: '*' and '>' need a segment
	pub(t, b, "news.a.b", "deep")     // only '>'
	pub(t, b, "newsroom.x", "prefix") // neither
	pub(t, b, "news.sport", "sport")  // both, on a channel created after subscribing
	expectNext(t, star, "sport")
	msgs, _ := collect(t, tail, 2)
	if string(msgs[0].Data) != "deep" || string(msgs[1].Data) != "sport" {
		t.Fatalf("news.> got %q, %q", msgs[0].Data, msgs[1].Data)
	}
	if msgs[1].Channel != "news.sport" {
		t.Fatalf("channel = %q", msgs[1].Channel)
	}
	n, err := b.Channel(ctx(t), "news.sport")
	if err != nil || n.Subscribers != 2 {
		t.Fatalf("news.sport info = %+v, %v; want 2 subscribers", n, err)
	}
}

func testMultiChannel(t *testing.T, f Factory) {
	b := f(t, Options{HistorySize: 10})
	s := sub(t, b, broker.SubscribeOptions{Channels: []string{"x", "y", "x.*"}})
	pub(t, b, "x", "1")
	pub(t, b, "y", "2")
	pub(t, b, "x.z", "3")
	msgs, _ := collect(t, s, 3)
	// Each channel's order is promised, not the order across channels:
	// on Redis Cluster x, y and x.z live on different shards, whose
	// messages come over different connections.
	var got []string
	for _, m := range msgs {
		got = append(got, fmt.Sprintf("%s:%s", m.Channel, m.Data))
	}
	slices.Sort(got)
	if strings.Join(got, " ") != "x.z:3 x:1 y:2" {
		t.Fatalf("got %v", got)
	}
}

func testConcurrent(t *testing.T, f Factory) {
	b := f(t, Options{HistorySize: 100, QueueSize: 1 << 20})
	const pubs, per, subs = 8, 500, 8
	var ss []*broker.Subscription
	for i := 0; i < subs; i++ {
		ss = append(ss, sub(t, b, broker.SubscribeOptions{Channels: []string{"c.>"}}))
	}
	var wg sync.WaitGroup
	for p := 0; p < pubs; p++ {
		wg.Add(1)
		go func(p int) {
			defer wg.Done()
			for i := 0; i < per; i++ {
				if _, _, err := b.Publish(context.Background(), &broker.Message{Channel: fmt.Sprintf("c.%d", p%4), Data: []byte(fmt.Sprint(p, i))}); err != nil {
					t.Error(err)
					return
				}
			}
		}(p)
	}
	errs := make(chan error, subs)
	for _, s := range ss {
		go func(s *broker.Subscription) {
			last := map[string]uint64{}
			got := 0
			var buf []broker.Event
			c := ctx(t)
			for got < pubs*per {
				evs, err := s.Next(c, buf)
				if err != nil {
					errs <- fmt.Errorf("after %d: %w", got, err)
					return
				}
				for _, e := range evs {
					m := e.Msg
					if m.Seq != last[m.Channel]+1 {
						errs <- fmt.Errorf("channel %s: seq %d after %d", m.Channel, m.Seq, last[m.Channel])
						return
					}
					last[m.Channel] = m.Seq
					got++
				}
				buf = evs
			}
			errs <- nil
		}(s)
	}
	wg.Wait()
	for range ss {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

func testSlowConsumer(t *testing.T, f Factory) {
	b := f(t, Options{HistorySize: 10, QueueSize: 4})
	slow := sub(t, b, broker.SubscribeOptions{Channels: []string{"slow"}})
	fast := sub(t, b, broker.SubscribeOptions{Channels: []string{"slow"}, QueueSize: 100})
	for i := 0; i < 10; i++ {
		pub(t, b, "slow", fmt.Sprint(i))
	}
	select {
	case <-slow.Done():
	case <-ctx(t).Done():
		t.Fatal("slow subscriber not ended")
	}
	if !errors.Is(slow.Err(), broker.ErrSlowConsumer) {
		t.Fatalf("slow err = %v", slow.Err())
	}
	if _, err := slow.Next(ctx(t), nil); !errors.Is(err, broker.ErrSlowConsumer) {
		t.Fatalf("Next on slow = %v", err)
	}
	msgs, _ := collect(t, fast, 10)
	if string(msgs[9].Data) != "9" {
		t.Fatal("fast subscriber lost messages")
	}
	if st := b.Stats(); st.SlowConsumers < 1 {
		t.Fatalf("slow consumer not counted: %+v", st)
	}
	// The bound in bytes works the same way.
	heavy := sub(t, b, broker.SubscribeOptions{Channels: []string{"heavy"}, QueueSize: 1000, QueueBytes: 100})
	for i := 0; i < 3; i++ {
		pub(t, b, "heavy", strings.Repeat("x", 40))
	}
	waitDone(t, heavy)
	if !errors.Is(heavy.Err(), broker.ErrSlowConsumer) {
		t.Fatalf("byte-bounded subscriber: %v", heavy.Err())
	}
}

func testWaitSubscribers(t *testing.T, f Factory) {
	b := f(t, Options{})
	done := make(chan error, 1)
	go func() { done <- b.WaitSubscribers(ctx(t), "w", 2) }()
	sub(t, b, broker.SubscribeOptions{Channels: []string{"w"}})
	select {
	case err := <-done:
		t.Fatalf("returned with one subscriber: %v", err)
	default:
	}
	sub(t, b, broker.SubscribeOptions{Channels: []string{"w.>", "w"}})
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	c, cancel := context.WithCancel(context.Background())
	cancel()
	if err := b.WaitSubscribers(c, "w", 3); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled wait = %v", err)
	}
}

func testDelete(t *testing.T, f Factory) {
	b := f(t, Options{HistorySize: 10})
	pub(t, b, "d", "x")
	named := sub(t, b, broker.SubscribeOptions{Channels: []string{"d"}})
	pat := sub(t, b, broker.SubscribeOptions{Channels: []string{"*"}})
	if err := b.DeleteChannel(ctx(t), "d"); err != nil {
		t.Fatal(err)
	}
	waitDone(t, named)
	if !errors.Is(named.Err(), broker.ErrChannelDeleted) {
		t.Fatalf("err = %v", named.Err())
	}
	if _, err := b.Channel(ctx(t), "d"); !errors.Is(err, broker.ErrNotFound) {
		t.Fatalf("deleted channel info err = %v", err)
	}
	if err := b.DeleteChannel(ctx(t), "d"); !errors.Is(err, broker.ErrNotFound) {
		t.Fatalf("second delete = %v", err)
	}
	pub(t, b, "d", "again")
	expectNext(t, pat, "again")
}

func testInvalid(t *testing.T, f Factory) {
	b := f(t, Options{})
	for _, name := range []string{"", "a b", "a..b", "news.*", "x>", "a,b", "é"} {
		if _, _, err := b.Publish(ctx(t), &broker.Message{Channel: name}); !errors.Is(err, broker.ErrInvalidChannel) {
			t.Errorf("publish %q: err = %v", name, err)
		}
	}
	if _, err := b.Subscribe(ctx(t), broker.SubscribeOptions{Channels: []string{"a.>.b"}}); !errors.Is(err, broker.ErrInvalidChannel) {
		t.Errorf("subscribe a.>.b: %v", err)
	}
}

func testInfo(t *testing.T, f Factory) {
	b := f(t, Options{HistorySize: 2})
	pub(t, b, "i", "12345")
	pub(t, b, "i", "1")
	last := pub(t, b, "i", "12")
	sub(t, b, broker.SubscribeOptions{Channels: []string{"i"}})
	info, err := b.Channel(ctx(t), "i")
	if err != nil {
		t.Fatal(err)
	}
	if info.Messages != 2 || info.Bytes != 3 || info.Subscribers != 1 || info.Published != 3 || info.LastID != last.ID() {
		t.Fatalf("info = %+v", info)
	}
	list, err := b.Channels(ctx(t))
	if err != nil || len(list) != 1 || list[0].Name != "i" {
		t.Fatalf("channels = %+v, %v", list, err)
	}
}

func testClose(t *testing.T, f Factory) {
	b := f(t, Options{})
	s := sub(t, b, broker.SubscribeOptions{Channels: []string{"p.*"}})
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	waitDone(t, s)
	if !errors.Is(s.Err(), broker.ErrClosed) {
		t.Fatalf("err = %v", s.Err())
	}
	if _, _, err := b.Publish(ctx(t), &broker.Message{Channel: "x"}); !errors.Is(err, broker.ErrClosed) {
		t.Fatalf("publish after close = %v", err)
	}
}

func testStart(t *testing.T, f Factory) {
	b := f(t, Options{HistorySize: 10})
	pub(t, b, "st", "1")
	m2 := pub(t, b, "st", "2")
	live := sub(t, b, broker.SubscribeOptions{Channels: []string{"st", "fresh"}})
	if c := live.Start(); c["st"] != m2.Position() || c["fresh"].Seq != 0 || c["fresh"].Epoch == "" {
		t.Fatalf("live start = %v, want st at %v and fresh at 0", c, m2.Position())
	}
	replay := sub(t, b, broker.SubscribeOptions{Channels: []string{"st"}, Last: 1})
	if c := replay.Start(); c["st"].Seq != 1 {
		t.Fatalf("last=1 start = %v, want seq 1", c)
	}
	// Resuming from the start position misses nothing.
	pub(t, b, "st", "3")
	again := sub(t, b, broker.SubscribeOptions{Channels: []string{"st"}, From: live.Start()})
	expectNext(t, again, "3")
}

func testInternal(t *testing.T, f Factory) {
	b := f(t, Options{})
	in := sub(t, b, broker.SubscribeOptions{Channels: []string{">"}, Internal: true})
	_, n, err := b.Publish(ctx(t), &broker.Message{Channel: "i", Data: []byte("x")})
	if err != nil || n != 0 {
		t.Fatalf("publish reached %d (%v), want 0 counted subscribers", n, err)
	}
	expectNext(t, in, "x")
	if info, _ := b.Channel(ctx(t), "i"); info.Subscribers != 0 {
		t.Fatalf("info counts internal subscriber: %+v", info)
	}
	if st := b.Stats(); st.Subscribers != 0 {
		t.Fatalf("stats count internal subscriber: %+v", st)
	}
}

// A subscriber is counted only once it is live: a publisher that waited
// for it (pub --wait-subscribers) and then publishes is never missed, even
// when it publishes while the subscription is still being set up.
func testCountedMeansLive(t *testing.T, f Factory) {
	b := f(t, Options{})
	for i := 0; i < 100; i++ {
		ch := fmt.Sprintf("race%d", i)
		published := make(chan error, 1)
		go func() {
			if err := b.WaitSubscribers(ctx(t), ch, 1); err != nil {
				published <- err
				return
			}
			_, _, err := b.Publish(ctx(t), &broker.Message{Channel: ch, Data: []byte("first")})
			published <- err
		}()
		s := sub(t, b, broker.SubscribeOptions{Channels: []string{ch}})
		if err := <-published; err != nil {
			t.Fatal(err)
		}
		c, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		evs, err := s.Next(c, nil)
		cancel()
		if err != nil || len(evs) == 0 || evs[0].Msg == nil || string(evs[0].Msg.Data) != "first" {
			t.Fatalf("attempt %d: the subscriber the publisher waited for got %v (%v), want the message published after the wait", i, evs, err)
		}
		s.Close()
	}
}

// testRetentionPerChannel: channels that RetentionFor knows keep what it
// says (a count, none at all, a byte bound); the others keep the log's.
func testRetentionPerChannel(t *testing.T, f Factory) {
	b := f(t, Options{HistorySize: 10, RetentionFor: func(ch string) (broker.Retention, bool) {
		switch {
		case strings.HasPrefix(ch, "few."):
			return broker.Retention{HistorySize: 2}, true
		case strings.HasPrefix(ch, "none."):
			return broker.Retention{HistorySize: -1}, true
		case strings.HasPrefix(ch, "bytes."):
			return broker.Retention{HistorySize: 100, HistoryBytes: 8}, true
		}
		return broker.Retention{}, false
	}})
	for _, ch := range []string{"few.a", "none.a", "bytes.a", "other"} {
		for i := 1; i <= 5; i++ {
			pub(t, b, ch, fmt.Sprintf("m%03d", i)) // 4 bytes each
		}
	}
	for ch, want := range map[string]int{"few.a": 2, "none.a": 0, "bytes.a": 2, "other": 5} {
		info, err := b.Channel(ctx(t), ch)
		if err != nil {
			t.Fatalf("%s: %v", ch, err)
		}
		if info.Messages != want || info.LastSeq != 5 {
			t.Errorf("%s retains %d messages (last seq %d), want %d of 5", ch, info.Messages, info.LastSeq, want)
		}
		if want == 0 {
			continue
		}
		// A replay from the start gets what is retained, after a gap.
		s := sub(t, b, broker.SubscribeOptions{Channels: []string{ch}, Last: -1})
		msgs, _ := collect(t, s, want)
		if got := string(msgs[0].Data); got != fmt.Sprintf("m%03d", 5-want+1) {
			t.Errorf("%s replays from %s, want m%03d", ch, got, 5-want+1)
		}
	}
}

// testRetentionPerChannelNoneByDefault: a log keeping no history, with
// rules for some channels: the others keep none, and a rule's channels
// without a size of their own keep none either. (On Redis they kept the
// default 1,000: the log's retention, its defaults already filled in,
// had them filled in again, and 0 became 1,000.)
func testRetentionPerChannelNoneByDefault(t *testing.T, f Factory) {
	b := f(t, Options{HistorySize: -1, RetentionFor: func(ch string) (broker.Retention, bool) {
		switch {
		case strings.HasPrefix(ch, "few."):
			return broker.Retention{HistorySize: 2}, true
		case strings.HasPrefix(ch, "aged."):
			return broker.Retention{HistoryAge: time.Hour}, true
		}
		return broker.Retention{}, false
	}})
	for _, ch := range []string{"few.a", "aged.a", "other"} {
		for i := 1; i <= 5; i++ {
			pub(t, b, ch, fmt.Sprintf("m%03d", i))
		}
	}
	for ch, want := range map[string]int{"few.a": 2, "aged.a": 0, "other": 0} {
		info, err := b.Channel(ctx(t), ch)
		if err != nil {
			t.Fatalf("%s: %v", ch, err)
		}
		if info.Messages != want || info.LastSeq != 5 {
			t.Errorf("%s retains %d messages (last seq %d), want %d of 5", ch, info.Messages, info.LastSeq, want)
		}
	}
}

// keyed publishes data to ch with an idempotency key.
func keyed(t *testing.T, b broker.Broker, ch, key, data string) *broker.Message {
	t.Helper()
	m, _, err := b.Publish(ctx(t), &broker.Message{Channel: ch, Data: []byte(data), Key: key})
	if err != nil {
		t.Fatalf("publish %s with key %s: %v", ch, key, err)
	}
	return m
}

// A key seen on a channel within the window is not stored or delivered
// again: its publish gets the first one's position. Keys are per channel,
// and of publishes racing with one key exactly one is stored.
func testIdempotencyKeys(t *testing.T, f Factory) {
	b := f(t, Options{HistorySize: 100})
	s := sub(t, b, broker.SubscribeOptions{Channels: []string{"idem"}, QueueSize: 1000})
	first := keyed(t, b, "idem", "k1", "a")
	if first.Duplicate {
		t.Fatal("the first publish of a key is a duplicate")
	}
	again := keyed(t, b, "idem", "k1", "b")
	if !again.Duplicate || again.ID() != first.ID() || !again.Time.Equal(first.Time) {
		t.Fatalf("again: %s duplicate=%v time %v; want %s duplicate=true time %v", again.ID(), again.Duplicate, again.Time, first.ID(), first.Time)
	}
	if m := keyed(t, b, "idem", "k2", "c"); m.Duplicate || m.Seq != first.Seq+1 {
		t.Fatalf("another key: seq %d duplicate=%v", m.Seq, m.Duplicate)
	}
	pub(t, b, "idem", "d")
	if m := keyed(t, b, "other", "k1", "x"); m.Duplicate {
		t.Fatal("a key of one channel counted on another")
	}
	const racers = 16
	res := make(chan *broker.Message, racers)
	for i := 0; i < racers; i++ {
		go func() {
			m, _, err := b.Publish(ctx(t), &broker.Message{Channel: "idem", Data: []byte("e"), Key: "k3"})
			if err != nil {
				t.Error(err)
			}
			res <- m
		}()
	}
	stored := 0
	var ids []string
	for i := 0; i < racers; i++ {
		m := <-res
		if m == nil {
			t.FailNow()
		}
		if !m.Duplicate {
			stored++
		}
		ids = append(ids, m.ID())
	}
	for _, id := range ids {
		if id != ids[0] {
			t.Fatalf("racing publishes of one key got positions %v", ids)
		}
	}
	if stored != 1 {
		t.Fatalf("%d of %d racing publishes of one key were stored", stored, racers)
	}
	pub(t, b, "idem", "end")
	msgs, _ := collect(t, s, 5)
	var got []string
	for _, m := range msgs {
		got = append(got, string(m.Data))
	}
	if strings.Join(got, " ") != "a c d e end" {
		t.Fatalf("delivered %q, want a c d e end", got)
	}
	r := sub(t, b, broker.SubscribeOptions{Channels: []string{"idem"}, Last: 100})
	msgs, _ = collect(t, r, 5)
	for i, m := range msgs {
		if string(m.Data) != got[i] || m.Seq != first.Seq+uint64(i) {
			t.Fatalf("history %d: %q seq %d", i, m.Data, m.Seq)
		}
	}
}

// Pipelined publishes (which a log may store as one batch) mixing keys
// seen before, a key repeated within the pipeline, new keys and no key:
// the duplicates get the first messages' positions, the others the next
// positions in publish order.
func testIdempotencyKeysPipelined(t *testing.T, f Factory) {
	b := f(t, Options{HistorySize: 100})
	k1 := keyed(t, b, "pipe", "k1", "one")
	keyed(t, b, "pipe", "k2", "two")
	k3 := keyed(t, b, "pipe", "k3", "three")
	batch := []struct{ key, data string }{
		{"k1", "one again"}, {"", "a"}, {"k6", "b"}, {"k6", "b again"}, {"k3", "three again"}, {"", "c"}, {"k7", "d"},
	}
	waits := make([]func() (*broker.Message, int, error), len(batch))
	for i, p := range batch {
		w, err := broker.StartPublish(ctx(t), b, &broker.Message{Channel: "pipe", Data: []byte(p.data), Key: p.key})
		if err != nil {
			t.Fatal(err)
		}
		waits[i] = w
	}
	var got []string
	for i, w := range waits {
		m, _, err := w()
		if err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
		got = append(got, fmt.Sprintf("%d/%v", m.Seq, m.Duplicate))
	}
	s := k3.Seq
	want := []string{
		fmt.Sprintf("%d/true", k1.Seq), fmt.Sprintf("%d/false", s+1), fmt.Sprintf("%d/false", s+2), fmt.Sprintf("%d/true", s+2),
		fmt.Sprintf("%d/true", k3.Seq), fmt.Sprintf("%d/false", s+3), fmt.Sprintf("%d/false", s+4),
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("seq/duplicate: %v, want %v", got, want)
	}
	r := sub(t, b, broker.SubscribeOptions{Channels: []string{"pipe"}, Last: 100})
	msgs, _ := collect(t, r, 7)
	var data []string
	for _, m := range msgs {
		data = append(data, string(m.Data))
	}
	if strings.Join(data, "|") != "one|two|three|a|b|c|d" {
		t.Fatalf("the channel holds %q", data)
	}
}
