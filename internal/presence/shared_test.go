package presence_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/broker/redislog"
	"github.com/pushctl/pushctl/internal/presence"
	"github.com/pushctl/pushctl/internal/redistest"
)

// node is one pushctl node's broker and presence registry on a shared
// Redis.
type node struct {
	name string
	b    *broker.Core
	reg  *presence.Registry
}

// changes records the registries' Changed calls, by node.
type changes struct {
	mu      sync.Mutex
	all     []string
	changed chan struct{} // closed and replaced on each change
}

func newChanges() *changes { return &changes{changed: make(chan struct{})} }

func (c *changes) add(s string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.all = append(c.all, s)
	close(c.changed)
	c.changed = make(chan struct{})
}

// waitFor waits until the changes are want: Changed is called once the
// node's script returned, which can be after the event reached a
// subscriber.
func (c *changes) waitFor(t *testing.T, want string) {
	t.Helper()
	c.waitUntil(t, want, func(got string) bool { return got == want })
}

func (c *changes) waitUntil(t *testing.T, want string, ok func(string) bool) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		c.mu.Lock()
		got, changed := strings.Join(c.all, " "), c.changed
		c.mu.Unlock()
		if ok(got) {
			return
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("changes: %s, want %s", got, want)
		}
	}
}

func openNode(t *testing.T, name, url, prefix string, o redislog.Options, ch *changes) *node {
	t.Helper()
	hub := broker.NewHub()
	o.URL, o.Prefix = url, prefix
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, err := redislog.Open(ctx, o, hub)
	if err != nil {
		t.Fatal(err)
	}
	b := broker.New(hub, l, broker.CoreOptions{})
	reg := presence.New(func(ctx context.Context, m *broker.Message) (*broker.Message, error) {
		rm, _, err := b.Publish(ctx, m)
		return rm, err
	}, time.Hour)
	reg.Share(l)
	reg.Changed = func(channel, event, id string) { ch.add(name + ":" + event + ":" + id) }
	t.Cleanup(func() {
		reg.Close()
		b.Close()
	})
	return &node{name: name, b: b, reg: reg}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// expect reads s's next message: its event and data.
func expect(t *testing.T, s *broker.Subscription, want string) {
	t.Helper()
	evs, err := s.Next(ctxT(t), nil)
	if err != nil {
		t.Fatalf("waiting for %s: %v", want, err)
	}
	if len(evs) == 0 || evs[0].Msg == nil {
		t.Fatalf("waiting for %s: got %+v", want, evs)
	}
	if got := evs[0].Msg.Event + " " + string(evs[0].Msg.Data); got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
	for _, e := range evs[1:] { // Next may return several: put them back in line
		t.Fatalf("got %s %s together with %s (the test expects one at a time)", e.Msg.Event, e.Msg.Data, want)
	}
}

// nothingBefore publishes a marker through b and checks it is the next
// message s gets: no presence event came before it.
func nothingBefore(t *testing.T, b broker.Broker, s *broker.Subscription, why string) {
	t.Helper()
	if _, _, err := b.Publish(ctxT(t), &broker.Message{Channel: "room", Data: []byte(why)}); err != nil {
		t.Fatal(err)
	}
	expect(t, s, "message "+why)
}

func members(t *testing.T, n *node) string {
	t.Helper()
	list, _, err := n.reg.Members(ctxT(t), "room")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range list {
		out = append(out, fmt.Sprintf("%s%s/%d", m.ID, m.Info, m.Nodes))
	}
	return strings.Join(out, " ")
}

// membersOnceReachable is members(n), asked again while n cannot reach
// Redis yet (up to 20 s).
func membersOnceReachable(t *testing.T, n *node) string {
	t.Helper()
	deadline := time.After(20 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		_, _, err := n.reg.Members(ctxT(t), "room")
		if !errors.Is(err, broker.ErrUnavailable) {
			return members(t, n)
		}
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("%s cannot reach Redis 20 s after it is back: %v", n.name, err)
		}
	}
}

func TestSharedPresence(t *testing.T) {
	sharedPresence(t, redistest.Start(t, redistest.Options{}).URL())
}

// The same on a three-shard Redis Cluster: a channel's presence lives in
// its slot, each node's list of held channels in pushctl's own.
func TestSharedPresenceOnRedisCluster(t *testing.T) {
	sharedPresence(t, redistest.StartCluster(t, 3).URL())
}

// Three nodes share presence: a member held by two nodes is one member
// (one member_added, one member_removed once both let go), every node
// lists every member, the limit counts members of every node, and the
// members of a node that stops beating are removed by the others (once),
// and added again when the node comes back.
func sharedPresence(t *testing.T, url string) {
	prefix := fmt.Sprintf("p%d:", time.Now().UnixNano())
	ch := newChanges()
	live := redislog.Options{Heartbeat: 100 * time.Millisecond, NodeTimeout: 1500 * time.Millisecond}
	a := openNode(t, "A", url, prefix, live, ch)
	c := openNode(t, "C", url, prefix, live, ch)
	// B beats only when its counts change: it can be made to look dead.
	b := openNode(t, "B", url, prefix, redislog.Options{Heartbeat: time.Hour, NodeTimeout: time.Hour}, ch)

	s, err := c.b.Subscribe(ctxT(t), broker.SubscribeOptions{Channels: []string{"room"}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	lim := presence.Limits{MaxMembers: 2}
	ctx := ctxT(t)

	aliceA, err := a.reg.Join(ctx, "room", "alice", json.RawMessage(`{"n": 1}`), lim)
	if err != nil {
		t.Fatal(err)
	}
	expect(t, s, `member_added {"id":"alice","info":{"n":1}}`)
	aliceB, err := b.reg.Join(ctx, "room", "alice", json.RawMessage(`{"n":1}`), lim)
	if err != nil {
		t.Fatal(err)
	}
	nothingBefore(t, c.b, s, "alice-on-B")
	if _, err := b.reg.Join(ctx, "room", "bob", nil, lim); err != nil {
		t.Fatal(err)
	}
	expect(t, s, `member_added {"id":"bob"}`)
	// The limit counts the members of every node: C has none of its own.
	if _, err := c.reg.Join(ctx, "room", "carol", nil, lim); !errors.Is(err, presence.ErrFull) {
		t.Fatalf("a third member with a limit of 2: %v", err)
	}
	for _, n := range []*node{a, b, c} {
		if got := members(t, n); got != `alice{"n":1}/2 bob/1` {
			t.Fatalf("members on %s: %s", n.name, got)
		}
		if k, err := n.reg.Count(ctx, "room"); err != nil || k != 2 {
			t.Fatalf("count on %s: %d %v", n.name, k, err)
		}
	}
	list, last, err := c.reg.Members(ctx, "room")
	if err != nil || len(list) != 2 || last.Seq != 3 {
		t.Fatalf("the list's position is that of the last presence event (bob, seq 3): %+v %v", last, err)
	}

	// Alice leaves A: B still holds her.
	aliceA.Leave(true)
	nothingBefore(t, c.b, s, "alice-left-A")
	aliceB.Leave(true)
	expect(t, s, `member_removed {"id":"alice"}`)
	if got := members(t, c); got != "bob/1" {
		t.Fatalf("members after alice left both nodes: %s", got)
	}

	// B falls silent: the live nodes take it for dead and remove bob,
	// once. Then B speaks again (a subscription changes its counts),
	// finds out, and adds bob again.
	expect(t, s, `member_removed {"id":"bob"}`)
	if got := members(t, a); got != "" {
		t.Fatalf("members once B is taken for dead: %s", got)
	}
	// bob's removal is told once, by a live node.
	ch.waitUntil(t, "A or C removing bob", func(got string) bool {
		return got == "A:member_added:alice B:member_added:bob B:member_removed:alice A:member_removed:bob" ||
			got == "A:member_added:alice B:member_added:bob B:member_removed:alice C:member_removed:bob"
	})
	sb, err := b.b.Subscribe(ctx, broker.SubscribeOptions{Channels: []string{"elsewhere"}})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Close()
	expect(t, s, `member_added {"id":"bob"}`)
	if got := members(t, a); got != "bob/1" {
		t.Fatalf("members once B is back: %s", got)
	}
	ch.waitUntil(t, "B adding bob again", func(got string) bool {
		return strings.Contains(got, ":member_removed:bob B:member_added:bob")
	})
}

// A member who leaves while Redis is down is not left listed forever: the
// node retries, and once Redis is back (with its data: AOF) the departure
// is published and the list is right on every node.
func TestSharedPresenceLeaveWhileRedisDown(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{AOF: true})
	prefix := fmt.Sprintf("p%d:", time.Now().UnixNano())
	ch := newChanges()
	live := redislog.Options{Heartbeat: 100 * time.Millisecond, NodeTimeout: time.Minute}
	a := openNode(t, "A", srv.URL(), prefix, live, ch)
	c := openNode(t, "C", srv.URL(), prefix, live, ch)
	s, err := c.b.Subscribe(ctxT(t), broker.SubscribeOptions{Channels: []string{"room"}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	alice, err := a.reg.Join(ctxT(t), "room", "alice", nil, presence.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	expect(t, s, `member_added {"id":"alice"}`)

	srv.Kill()
	alice.Leave(true) // cannot reach Redis
	if _, _, err := a.reg.Members(ctxT(t), "room"); !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("listing while Redis is down: %v", err)
	}
	srv.Restart()
	expect(t, s, `member_removed {"id":"alice"}`)
	// C heard the event over Pub/Sub, which reconnects on its own: its
	// other connections may still be finding Redis again (go-redis
	// answers with the last dial error for a moment). Asked once it
	// reaches Redis, it lists no one.
	if got := membersOnceReachable(t, c); got != "" {
		t.Fatalf("members once Redis is back: %s", got)
	}
	ch.waitFor(t, "A:member_added:alice A:member_removed:alice")
}

// TestFailedMemberHoldIsTriedAgain: a member's hold in the lifecycle log
// (its member_added) that fails is tried again while the member is
// there, with a context of its own (not the join's), then released when
// it leaves.
func TestFailedMemberHoldIsTriedAgain(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	prefix := fmt.Sprintf("p%d:", time.Now().UnixNano())
	a := openNode(t, "A", srv.URL(), prefix, redislog.Options{}, newChanges())
	var mu sync.Mutex
	fails := 2
	got := make(chan string, 16)
	a.reg.Hold = func(ctx context.Context, node, channel, id string, hold bool) error {
		mu.Lock()
		fail := hold && fails > 0
		if fail {
			fails--
		}
		mu.Unlock()
		if fail {
			return fmt.Errorf("%w: redis blip (test)", broker.ErrUnavailable)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		got <- fmt.Sprintf("%s %s %v", channel, id, hold)
		return nil
	}
	joinCtx, cancel := context.WithCancel(context.Background())
	alice, err := a.reg.Join(joinCtx, "room", "alice", nil, presence.Limits{})
	cancel() // the join's request is over
	if err != nil {
		t.Fatal(err)
	}
	next := func(want string) {
		t.Helper()
		select {
		case s := <-got:
			if s != want {
				t.Fatalf("hold %q, want %q", s, want)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("no hold %q within 20s", want)
		}
	}
	next("room alice true")
	alice.Leave(true)
	next("room alice false")
}
