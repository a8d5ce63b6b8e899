package redislog

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/redistest"
)

func newRedisClient(t *testing.T, addr string) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { c.Close() })
	return c
}

// expectNext waits up to 10 s for s's next event: the message want.
func expectNext(t *testing.T, ctx context.Context, s *broker.Subscription, want string) {
	t.Helper()
	wait, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	evs, err := s.Next(wait, nil)
	if err != nil {
		t.Fatalf("waiting for %s: %v", want, err)
	}
	if e := evs[0]; e.Msg == nil || string(e.Msg.Data) != want {
		t.Fatalf("got %+v, want message %s", e, want)
	}
}

// openCore opens a node: its broker and its log.
func openCore(t testing.TB, ctx context.Context, o Options) (*broker.Core, *Log) {
	t.Helper()
	hub := broker.NewHub()
	l, err := Open(ctx, o, hub)
	if err != nil {
		t.Fatal(err)
	}
	c := broker.New(hub, l, broker.CoreOptions{})
	t.Cleanup(func() { c.Close() })
	return c, l
}

// What a node hears on its Pub/Sub connection after it broke, before its
// resync compared the channel with Redis, is not delivered as the next
// messages. Redis restarts from a snapshot older than what B delivered
// (1-5; the snapshot has 1-3), A publishes n1 and n2 at the positions 4
// and 5 given again while B cannot reconnect (its ACL user went with the
// restart), then B reconnects and, before it asks for its resync, hears
// n3 at 6: the position after its own. B's subscriber must get a gap
// notice, then n1, n2 and n3 in the new epoch. (Delivered at once, n3
// was taken for the message after 5: n1 and n2 never came, and no gap
// notice said so.)
func TestHeardBeforeResyncNotDelivered(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	heardBeforeResync(t, []*redistest.Server{srv}, srv, srv.Addr(), "classic")
}

// The same on Redis Cluster, where B hears the channel on its shard's
// connection to the master that restarts.
func TestHeardBeforeResyncNotDeliveredCluster(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	owner := c.Owner(t, c.Slot(t, "held:{back}:m"))
	heardBeforeResync(t, c.Servers, owner, c.Servers[0].Addr(), "shard")
}

// heardBeforeResync runs the test: servers are where B's ACL user is
// made, owner the server of the channel that restarts from its snapshot,
// addr the one the nodes are given, conn the connection that carries
// the channel (beforeResync's name for it).
func heardBeforeResync(t *testing.T, servers []*redistest.Server, owner *redistest.Server, addr, conn string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	userB := func(servers ...*redistest.Server) {
		for _, s := range servers {
			if err := newRedisClient(t, s.Addr()).Do(ctx, "ACL", "SETUSER", "nodeb", "on", ">pw", "~*", "&*", "+@all").Err(); err != nil {
				t.Fatal(err)
			}
		}
	}
	userB(servers...)
	reconnected := make(chan struct{}, 1)
	gate := make(chan struct{})
	a, _ := openCore(t, ctx, Options{URL: "redis://" + addr + "/0", Prefix: "held:"})
	bc, b := openCore(t, ctx, Options{URL: "redis://nodeb:pw@" + addr + "/0", Prefix: "held:",
		beforeResync: func(c string) {
			if c == conn {
				select {
				case reconnected <- struct{}{}:
				default:
				}
			}
			<-gate
		}})
	live, err := bc.Subscribe(ctx, broker.SubscribeOptions{Channels: []string{"back"}})
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	publish := func(d string) *broker.Message {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			m, _, err := a.Publish(ctx, &broker.Message{Channel: "back", Data: []byte(d)})
			if err == nil {
				return m
			}
			if time.Now().After(deadline) {
				t.Fatalf("publish %s: %v", d, err)
			}
			<-time.After(20 * time.Millisecond) // Redis restarting
		}
	}
	var events []broker.Event
	take := func(n int) {
		t.Helper()
		wait, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		for len(events) < n {
			evs, err := live.Next(wait, nil)
			if err != nil {
				var got []string
				for _, e := range events {
					if e.Gap != nil {
						got = append(got, "gap "+e.Gap.From.String()+" -> "+e.Gap.To.String())
					} else {
						got = append(got, string(e.Msg.Data)+" at "+e.Msg.Position().String())
					}
				}
				t.Fatalf("%d events of %d: %v (%v)", len(events), n, got, err)
			}
			events = append(events, evs...)
		}
	}
	for _, d := range []string{"1", "2", "3"} {
		publish(d)
	}
	if err := newRedisClient(t, owner.Addr()).Save(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	publish("4")
	old := publish("5")
	take(5)
	events = events[:0]

	owner.Restart() // back from the snapshot, without nodeb
	for i, d := range []string{"n1", "n2"} {
		if m := publish(d); m.Seq != uint64(4+i) || m.Epoch != old.Epoch {
			t.Fatalf("%s published at %s; want %s-%d (Redis went back)", d, m.Position(), old.Epoch, 4+i)
		}
	}
	userB(owner)
	select {
	case <-reconnected:
	case <-ctx.Done():
		t.Fatal("B did not reconnect")
	}
	if m := publish("n3"); m.Seq != 6 {
		t.Fatalf("n3 at %s, want 6", m.Position())
	}
	// B's connection has dispatched n3 once this PING's answer is back.
	ps := b.ps
	if b.cluster != nil {
		b.mu.Lock()
		ps = b.refs["back"].shard.pubsub()
		b.mu.Unlock()
	}
	if err := b.ping(ctx, ps); err != nil {
		t.Fatal(err)
	}
	close(gate)
	take(4)
	g := events[0].Gap
	if g == nil {
		t.Fatalf("first event after the restart: %q at %s; want a gap notice", events[0].Msg.Data, events[0].Msg.Position())
	}
	for i, want := range []string{"n1", "n2", "n3"} {
		m := events[1+i].Msg
		if m == nil || string(m.Data) != want || m.Epoch == old.Epoch || m.Epoch != g.To.Epoch {
			t.Fatalf("event %d after the gap %s -> %s: %+v; want %s in the new epoch", 1+i, g.From, g.To, events[1+i], want)
		}
	}
}

// A channel the node keeps no history of is not held back after its
// connection broke: nothing could refill it, nor compare it. Messages
// heard before the resync are delivered at once, and no gap notice
// follows.
func TestHeardBeforeResyncNoHistoryDelivered(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	reconnected := make(chan struct{}, 1)
	gate := make(chan struct{})
	defer close(gate)
	o := Options{URL: srv.URL(), Prefix: "held:", Retention: broker.Retention{HistorySize: -1}}
	a, _ := openCore(t, ctx, o)
	o.beforeResync = func(string) {
		reconnected <- struct{}{}
		<-gate
	}
	bc, _ := openCore(t, ctx, o)
	live, err := bc.Subscribe(ctx, broker.SubscribeOptions{Channels: []string{"nh"}})
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	if _, _, err := a.Publish(ctx, &broker.Message{Channel: "nh", Data: []byte("1")}); err != nil {
		t.Fatal(err)
	}
	expectNext(t, ctx, live, "1")
	if err := newRedisClient(t, srv.Addr()).ClientKillByFilter(ctx, "TYPE", "pubsub").Err(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-reconnected:
	case <-ctx.Done():
		t.Fatal("B did not reconnect")
	}
	if _, _, err := a.Publish(ctx, &broker.Message{Channel: "nh", Data: []byte("2")}); err != nil {
		t.Fatal(err)
	}
	expectNext(t, ctx, live, "2") // before the resync
}

// A message heard on the classic connection after it broke is not lost
// when the PING asking for the resync cannot be sent: B keeps no
// history of nh, so what it hears is delivered as heard (nothing could
// refill it). B's connection is killed; once it is back, each resync
// PING fails (as when the connection broke again, with messages still
// read before it) and A publishes 2: B's subscriber must get it. (The
// message received with the PING's failure was dropped.)
func TestHeardWhenResyncPingFails(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	o := Options{URL: srv.URL(), Prefix: "ping:", Retention: broker.Retention{HistorySize: -1}}
	a, _ := openCore(t, ctx, o)
	asked := make(chan struct{}, 1)
	var failing atomic.Bool
	failing.Store(true)
	var b atomic.Pointer[Log]
	o.resyncPing = func() error {
		if failing.Load() {
			select {
			case asked <- struct{}{}:
			default:
			}
			return errors.New("injected: no resync PING")
		}
		return b.Load().ps.Ping(ctx, "resync")
	}
	bc, bl := openCore(t, ctx, o)
	b.Store(bl)
	defer failing.Store(false)
	live, err := bc.Subscribe(ctx, broker.SubscribeOptions{Channels: []string{"nh"}})
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	if _, _, err := a.Publish(ctx, &broker.Message{Channel: "nh", Data: []byte("1")}); err != nil {
		t.Fatal(err)
	}
	expectNext(t, ctx, live, "1")
	if err := newRedisClient(t, srv.Addr()).ClientKillByFilter(ctx, "TYPE", "pubsub").Err(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-asked: // B's connection is back (it heard its resubscriptions)
	case <-ctx.Done():
		t.Fatal("B did not reconnect")
	}
	if _, _, err := a.Publish(ctx, &broker.Message{Channel: "nh", Data: []byte("2")}); err != nil {
		t.Fatal(err)
	}
	expectNext(t, ctx, live, "2")
}

// One channel's keys that cannot be read (a foreign key of another type
// under the prefix: WRONGTYPE) do not hold up the others after a Pub/Sub
// connection broke: the node resynchronizes every other channel, is
// healthy again, and delivers what is published next. (The resync failed
// as a whole and was tried again every second for good: /healthz said
// degraded, and every channel's messages waited for it.)
func TestResyncOneUnreadableChannel(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	reconnected := make(chan struct{}, 1)
	o := Options{URL: srv.URL(), Prefix: "unread:"}
	a, _ := openCore(t, ctx, o)
	o.beforeResync = func(string) { reconnected <- struct{}{} }
	bc, b := openCore(t, ctx, o)
	subs := map[string]*broker.Subscription{}
	for _, ch := range []string{"good", "bad"} {
		s, err := bc.Subscribe(ctx, broker.SubscribeOptions{Channels: []string{ch}})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		subs[ch] = s
	}
	for _, ch := range []string{"good", "bad"} {
		if _, _, err := a.Publish(ctx, &broker.Message{Channel: ch, Data: []byte("1")}); err != nil {
			t.Fatal(err)
		}
		expectNext(t, ctx, subs[ch], "1")
	}
	rc := newRedisClient(t, srv.Addr())
	if err := rc.Set(ctx, "unread:{bad}:s", "not a stream", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rc.ClientKillByFilter(ctx, "TYPE", "pubsub").Err(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-reconnected: // B saw its connection break
	case <-ctx.Done():
		t.Fatal("B did not reconnect")
	}
	deadline := time.Now().Add(10 * time.Second)
	for b.Health() != nil {
		if time.Now().After(deadline) {
			t.Fatalf("B still degraded: %v", b.Health())
		}
		<-time.After(20 * time.Millisecond) // polling health
	}
	if _, _, err := a.Publish(ctx, &broker.Message{Channel: "good", Data: []byte("2")}); err != nil {
		t.Fatal(err)
	}
	expectNext(t, ctx, subs["good"], "2")
}
