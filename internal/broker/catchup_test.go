package broker_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
)

// sharedLog plays a log shared by nodes (it follows, as Redis does) on
// top of the memory log: the messages it commits reach the hub through
// relay, which can leave some out, as a node that did not hear them
// would; reads can be held or made to fail.
type sharedLog struct {
	broker.Log
	reads atomic.Int32
	mu    sync.Mutex
	gate  chan struct{} // reads wait for it when set
	fail  bool
	hide  map[string]bool // channels List leaves out
}

func (l *sharedLog) List(ctx context.Context) ([]broker.ChannelInfo, error) {
	all, err := l.Log.List(ctx)
	out := all[:0]
	for _, ci := range all {
		if !l.hide[ci.Name] {
			out = append(out, ci)
		}
	}
	return out, err
}

func (l *sharedLog) Follow(context.Context, string) error  { return nil }
func (l *sharedLog) Count(context.Context, []string) error { return nil }
func (l *sharedLog) Unfollow(string, bool)                 {}
func (l *sharedLog) holdReads() (release func())           { return l.setGate(make(chan struct{})) }
func (l *sharedLog) failReads()                            { l.mu.Lock(); l.fail = true; l.mu.Unlock() }
func (l *sharedLog) setGate(g chan struct{}) (release func()) {
	l.mu.Lock()
	l.gate = g
	l.mu.Unlock()
	return func() { close(g) }
}

func (l *sharedLog) Read(ctx context.Context, name string, req broker.ReadRequest) (broker.ReadResult, error) {
	l.reads.Add(1)
	l.mu.Lock()
	gate, fail := l.gate, l.fail
	l.mu.Unlock()
	if gate != nil {
		<-gate
	}
	if fail {
		return broker.ReadResult{}, fmt.Errorf("%w: test", broker.ErrUnavailable)
	}
	return l.Log.Read(ctx, name, req)
}

type relay struct {
	*broker.Hub
	mu   sync.Mutex
	deaf map[string]bool // "channel seq" not heard
}

func (r *relay) Deliver(m *broker.Message) int {
	r.mu.Lock()
	deaf := r.deaf[fmt.Sprintf("%s %d", m.Channel, m.Seq)]
	r.mu.Unlock()
	if deaf {
		return 0
	}
	return r.Hub.Deliver(m)
}

func (r *relay) miss(ch string, seq uint64) {
	r.mu.Lock()
	r.deaf[fmt.Sprintf("%s %d", ch, seq)] = true
	r.mu.Unlock()
}

func newShared(t *testing.T) (*broker.Core, *sharedLog, *relay) {
	return newSharedWith(t, broker.MemoryOptions{})
}

func pub(t *testing.T, b broker.Broker, ch, data string) {
	t.Helper()
	if _, _, err := b.Publish(context.Background(), &broker.Message{Channel: ch, Data: []byte(data)}); err != nil {
		t.Fatal(err)
	}
}

// drain returns what s holds now, as "data" for messages and
// "gap:<from>-<to>" for gap notices.
func drain(t *testing.T, s *broker.Subscription) []string {
	t.Helper()
	evs, err := s.TryNext(nil)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range evs {
		if e.Gap != nil {
			out = append(out, fmt.Sprintf("gap:%d-%d", e.Gap.From.Seq, e.Gap.To.Seq))
		} else {
			out = append(out, string(e.Msg.Data))
		}
	}
	return out
}

// waitFor reads s until it has as many events as want, which they must
// be ("data" for a message, "gap:<from seq>-<to seq>" for a gap notice).
func waitFor(t *testing.T, s *broker.Subscription, want ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var got []string
	for len(got) < len(want) {
		evs, err := s.Next(ctx, nil)
		if err != nil {
			t.Fatalf("got %v, want %v: %v", got, want, err)
		}
		for _, e := range evs {
			if e.Gap != nil {
				got = append(got, fmt.Sprintf("gap:%d-%d", e.Gap.From.Seq, e.Gap.To.Seq))
			} else {
				got = append(got, string(e.Msg.Data))
			}
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

// A pattern subscription with Since that first hears a channel past its
// first message (its node did not hear the first: on Redis Cluster, it
// went where patterns are not heard) reads the channel before handing
// out the message heard; what is heard of the channel meanwhile waits,
// so the channel comes whole, in order, once.
func TestPatternSubscriptionCatchesUpAChannelFirstHeardLate(t *testing.T) {
	b, l, r := newShared(t)
	since := time.Now()
	s, err := b.Subscribe(context.Background(), broker.SubscribeOptions{Channels: []string{"n.*"}, Since: since})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	release := l.holdReads()
	r.miss("n.x", 1)
	pub(t, b, "n.x", "1")
	pub(t, b, "n.x", "2") // heard first: the channel is read
	pub(t, b, "n.x", "3") // heard while it is read: waits
	pub(t, b, "n.y", "y1")
	if got := drain(t, s); fmt.Sprint(got) != "[y1]" {
		t.Fatalf("while n.x is read: %v, want only n.y's message", got)
	}
	release()
	waitFor(t, s, "1", "2", "3")
	pub(t, b, "n.x", "4")
	waitFor(t, s, "4")
	if n := l.reads.Load(); n != 1 {
		t.Fatalf("%d reads, want 1 (n.x, once)", n)
	}
}

// A channel the replay read, whose first live message is not the one
// after the replay's head, is read from that head on.
func TestPatternSubscriptionCatchesUpAReplayedChannel(t *testing.T) {
	b, l, r := newShared(t)
	pub(t, b, "n.x", "old")
	s, err := b.Subscribe(context.Background(), broker.SubscribeOptions{Channels: []string{"n.*"}, Last: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	waitFor(t, s, "old")
	r.miss("n.x", 2)
	r.miss("n.x", 3)
	for _, d := range []string{"a", "b", "c", "d"} {
		pub(t, b, "n.x", d)
	}
	waitFor(t, s, "a", "b", "c", "d")
	if n := l.reads.Load(); n != 2 { // at set-up, then from its head
		t.Fatalf("%d reads, want 2", n)
	}
}

// When the channel cannot be read, the subscription is told what it
// misses with a gap notice, then gets what it heard.
func TestPatternCatchUpThatFailsIsAGap(t *testing.T) {
	b, l, r := newShared(t)
	s, err := b.Subscribe(context.Background(), broker.SubscribeOptions{Channels: []string{"n.*"}, Last: 5})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	l.failReads()
	r.miss("n.x", 1)
	r.miss("n.x", 2)
	for i := 1; i <= 4; i++ {
		pub(t, b, "n.x", fmt.Sprint(i))
	}
	waitFor(t, s, "gap:0-2", "3", "4")
}

// A subscription that asked for no history gets no history: what it
// hears is all it gets, and nothing is read.
func TestPatternSubscriptionWithoutReplayDoesNotCatchUp(t *testing.T) {
	b, l, r := newShared(t)
	s, err := b.Subscribe(context.Background(), broker.SubscribeOptions{Channels: []string{"n.*"}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r.miss("n.x", 1)
	pub(t, b, "n.x", "1")
	pub(t, b, "n.x", "2")
	waitFor(t, s, "2")
	if n := l.reads.Load(); n != 0 {
		t.Fatalf("%d reads, want none", n)
	}
}

// The catch-up reads as the subscription's replay would have: what the
// channel held before Since is not handed out. A channel made anew after
// a delete is a new channel, caught up with again.
func TestPatternCatchUpKeepsToSince(t *testing.T) {
	t0 := time.Now()
	var clock atomic.Int64
	clock.Store(t0.UnixNano())
	hub := broker.NewHub()
	r := &relay{Hub: hub, deaf: map[string]bool{}}
	l := &sharedLog{Log: broker.NewMemoryLog(broker.MemoryOptions{Now: func() time.Time { return time.Unix(0, clock.Load()) }}, r),
		hide: map[string]bool{"n.x": true}}
	b := broker.New(hub, l, broker.CoreOptions{})
	defer b.Close()
	pub(t, b, "n.x", "old")
	clock.Store(t0.Add(time.Second).UnixNano())
	// The replay does not list n.x (as a listing that ran before the
	// channel was made would not).
	s, err := b.Subscribe(context.Background(), broker.SubscribeOptions{Channels: []string{"n.*"}, Since: t0.Add(time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r.miss("n.x", 2)
	pub(t, b, "n.x", "a")
	pub(t, b, "n.x", "b")
	waitFor(t, s, "a", "b")
	if err := b.DeleteChannel(context.Background(), "n.x"); err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	r.deaf = map[string]bool{"n.x 1": true} // the new epoch's first
	r.mu.Unlock()
	pub(t, b, "n.x", "new1")
	pub(t, b, "n.x", "new2")
	waitFor(t, s, "new1", "new2")
	if n := l.reads.Load(); n != 2 {
		t.Fatalf("%d reads, want 2 (n.x, then n.x made anew)", n)
	}
}

func newSharedWith(t *testing.T, mo broker.MemoryOptions) (*broker.Core, *sharedLog, *relay) {
	hub := broker.NewHub()
	r := &relay{Hub: hub, deaf: map[string]bool{}}
	l := &sharedLog{Log: broker.NewMemoryLog(mo, r)}
	b := broker.New(hub, l, broker.CoreOptions{})
	t.Cleanup(func() { b.Close() })
	return b, l, r
}

// A channel the replay did not list was made after the subscription
// began: all of it is caught up, by position, whatever the clocks say.
// (With Last only, it was read from the subscribing node's time of
// subscribing: a publisher whose clock was behind lost its messages,
// silently.)
func TestPatternCatchUpOfANewChannelIsByPosition(t *testing.T) {
	b, _, r := newSharedWith(t, broker.MemoryOptions{Now: func() time.Time { return time.Now().Add(-time.Second) }})
	s, err := b.Subscribe(context.Background(), broker.SubscribeOptions{Channels: []string{"n.*"}, Last: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r.miss("n.x", 1)
	r.miss("n.x", 2)
	for _, d := range []string{"1", "2", "3", "4"} {
		pub(t, b, "n.x", d)
	}
	waitFor(t, s, "1", "2", "3", "4")
}

// What the channel's history no longer holds is a gap notice, not
// silence.
func TestPatternCatchUpOfTrimmedHistoryIsAGap(t *testing.T) {
	b, _, r := newSharedWith(t, broker.MemoryOptions{Retention: broker.Retention{HistorySize: 2}})
	s, err := b.Subscribe(context.Background(), broker.SubscribeOptions{Channels: []string{"n.*"}, Since: time.Now().Add(-time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := 1; i <= 4; i++ {
		r.miss("n.x", uint64(i))
	}
	for i := 1; i <= 5; i++ {
		pub(t, b, "n.x", fmt.Sprint(i))
	}
	waitFor(t, s, "gap:0-3", "4", "5")
}

// A channel deleted and made anew while it is caught up: the old one's
// catch-up ends in a gap notice, the new one's hole is caught up in turn
// after it, and what follows is handed out once. (The new channel's
// messages that waited were handed out again at its next message, and
// its own hole went unnoticed.)
func TestPatternCatchUpOfAChannelMadeAnewMeanwhile(t *testing.T) {
	b, l, r := newShared(t)
	s, err := b.Subscribe(context.Background(), broker.SubscribeOptions{Channels: []string{"n.*"}, Since: time.Now().Add(-time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	release := l.holdReads()
	r.miss("n.x", 1)
	pub(t, b, "n.x", "1")
	pub(t, b, "n.x", "2")
	if err := b.DeleteChannel(context.Background(), "n.x"); err != nil {
		t.Fatal(err)
	}
	pub(t, b, "n.x", "new1") // heard: seq 1 of the new channel
	r.mu.Lock()
	r.deaf = map[string]bool{"n.x 2": true}
	r.mu.Unlock()
	pub(t, b, "n.x", "new2")
	pub(t, b, "n.x", "new3")
	release()
	waitFor(t, s, "gap:0-1", "2", "new1", "new2", "new3")
	pub(t, b, "n.x", "new4")
	waitFor(t, s, "new4")
}

// A Late message (one a shared log hands the hub again after it was
// stored: on Redis Cluster, a batch sent again for the pattern
// subscriptions set up as it went out where they do not listen) reaches
// the subscriptions that asked for history, and not those that asked for
// none: they may have begun after it was published.
func TestLateMessageOnlyForHistory(t *testing.T) {
	b, _, r := newShared(t)
	ctx := context.Background()
	live, err := b.Subscribe(ctx, broker.SubscribeOptions{Channels: []string{"late.*"}})
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	hist, err := b.Subscribe(ctx, broker.SubscribeOptions{Channels: []string{"late.*"}, Since: time.Now().Add(-time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	defer hist.Close()
	r.miss("late.x", 1)
	m, _, err := b.Publish(ctx, &broker.Message{Channel: "late.x", Data: []byte("1")})
	if err != nil {
		t.Fatal(err)
	}
	again := &broker.Message{Channel: m.Channel, Epoch: m.Epoch, Seq: m.Seq, Time: m.Time, Data: m.Data, Late: true}
	r.Hub.Deliver(again)
	pub(t, b, "late.x", "2")
	waitFor(t, hist, "1", "2")
	waitFor(t, live, "2")
	if got := drain(t, live); len(got) != 0 {
		t.Fatalf("the subscription without history got %v more", got)
	}
}

// A message of a channel's previous epoch that comes late, after the
// channel made anew was heard, is handed on as it comes and does not
// make the new channel's next message look like a first one after a
// hole (which read the new channel again from its start: its messages
// twice, behind a gap notice).
func TestPatternCatchUpPassesALateMessageOfTheOldChannel(t *testing.T) {
	b, l, r := newShared(t)
	s, err := b.Subscribe(context.Background(), broker.SubscribeOptions{Channels: []string{"n.*"}, Since: time.Now().Add(-time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r.miss("n.x", 2) // the old channel's 2, heard only late
	pub(t, b, "n.x", "old1")
	old2, _, err := b.Publish(context.Background(), &broker.Message{Channel: "n.x", Data: []byte("old2")})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, s, "old1")
	if err := b.DeleteChannel(context.Background(), "n.x"); err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	r.deaf = map[string]bool{}
	r.mu.Unlock()
	pub(t, b, "n.x", "new1")
	r.Hub.Deliver(old2) // late
	pub(t, b, "n.x", "new2")
	waitFor(t, s, "new1", "old2", "new2")
	if got := drain(t, s); len(got) != 0 {
		t.Fatalf("then %v more", got)
	}
	if n := l.reads.Load(); n != 0 {
		t.Fatalf("%d catch-up reads, want none", n)
	}
}
