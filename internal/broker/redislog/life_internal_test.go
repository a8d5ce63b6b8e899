package redislog

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/redistest"
)

// TestReapKeepsListsOfANodeComingBack: a node (B) that comes back while a
// survivor (A) is still reaping it lists its new hold (and its
// subscription's channel) again; A's reap must not forget that list, or
// when B then dies for good nobody finds that subscription (its record,
// its hold and the channel's count stayed in Redis forever, with no
// unsubscribed and no channel_vacated). It used to DEL life:o:B at the
// end of the reap.
func TestReapKeepsListsOfANodeComingBack(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	node := func() *Log { return openNode(t, ctx, Options{URL: srv.URL(), Prefix: "life:"}) }
	a, b := node(), node()
	evCh := func(ch string) string { return broker.ReservedPrefix + "events.channel." + ch }
	msg := func(ch, name string) *broker.Message {
		return &broker.Message{Channel: evCh(ch), Event: name, Kind: broker.KindJSON, Data: []byte(`{}`)}
	}
	subscribe := func(ch, id string) {
		t.Helper()
		if _, err := b.Occupy(ctx, "", evCh(ch), true, msg(ch, "channel_occupied")); err != nil {
			t.Fatal(err)
		}
		wait, err := b.StartRecord(ctx, "", "s", id, `{"channel":"`+ch+`"}`, true, msg(ch, "subscribed"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := wait(); err != nil {
			t.Fatal(err)
		}
	}
	subscribe("room", "1")
	var told []string
	back := false
	a.WatchLifecycle(func(node, kind, key, info string) error {
		if !back {
			// B comes back in the middle of A's reap and subscribes
			// to another channel.
			back = true
			subscribe("hall", "2")
		}
		told = append(told, kind+" "+key)
		switch kind {
		case "s":
			wait, err := a.StartRecord(ctx, node, "s", key, "", false, msg(map[string]string{"1": "room", "2": "hall"}[key], "unsubscribed"))
			if err != nil {
				return err
			}
			_, err = wait()
			return err
		case "o":
			m := msg("", "channel_vacated")
			m.Channel = key
			_, err := a.Occupy(ctx, node, key, false, m)
			return err
		}
		return nil
	}, nil)
	if err := a.reapLifecycle(ctx, b.node, nil); err != nil {
		t.Fatal(err)
	}
	// B dies for good: the next reap ends what it did after coming back.
	told = nil
	if err := a.reapLifecycle(ctx, b.node, nil); err != nil {
		t.Fatal(err)
	}
	// (room, listed still, has nothing left to end: its release
	// changes nothing.)
	if !slices.Contains(told, "s 2") || !slices.Contains(told, "o "+evCh("hall")) || slices.Contains(told, "s 1") {
		t.Fatalf("the second reap ended %v, want s 2 and the hold of hall: B's subscription and hold taken after it came back are lost", told)
	}
	if ttl, err := a.rdb.TTL(ctx, a.lifeKey(b.node, "o")).Result(); err != nil || ttl <= 0 {
		t.Fatalf("a reaped node's list does not expire (ttl %v, %v)", ttl, err)
	}
	b.keepLifeLists(ctx)
	if ttl, err := a.rdb.TTL(ctx, a.lifeKey(b.node, "o")).Result(); err != nil || ttl != -1 {
		t.Fatalf("a node back from the dead does not keep its list (ttl %v, %v)", ttl, err)
	}
}

// TestReapDoesNotStopTheHeartbeat: while a node reaps a dead one (a round
// trip per record: long with tens of thousands), it keeps beating. The
// reap used to run in the heartbeat goroutine: a long one kept the
// reaper from beating, and the others took it for dead too. The reap
// here is held in its first end until this node has beaten again.
func TestReapDoesNotStopTheHeartbeat(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	node := func(o Options) *Log {
		o.URL, o.Prefix = srv.URL(), "beat:"
		return openNode(t, ctx, o)
	}
	// B beats only when its counts change: it falls silent.
	b := node(Options{Heartbeat: time.Hour, NodeTimeout: time.Hour})
	wait, err := b.StartRecord(ctx, "", "c", "c1", `{}`, true,
		&broker.Message{Channel: connectionsEvents, Event: "connection_opened", Kind: broker.KindJSON, Data: []byte(`{}`)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := wait(); err != nil {
		t.Fatal(err)
	}
	entered, release := make(chan struct{}), make(chan struct{})
	defer close(release)
	a := node(Options{Heartbeat: 50 * time.Millisecond, NodeTimeout: 500 * time.Millisecond})
	var once sync.Once
	a.WatchLifecycle(func(node, kind, key, info string) error {
		once.Do(func() { close(entered) })
		select {
		case <-release:
		case <-ctx.Done():
		}
		return nil
	}, nil)
	select {
	case <-entered:
	case <-ctx.Done():
		t.Fatal("B was not reaped")
	}
	beat := func() float64 {
		s, err := a.rdb.ZScore(ctx, a.key("nodes"), a.node).Result()
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	then := beat()
	deadline := time.After(5 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for beat() <= then {
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatal("the reaper stopped beating while it reaped")
		}
	}
}

// TestComingBackMidReapKeepsWhatTheNodeHolds: a node (B) taken for dead
// that beats again while a survivor (A) is still reaping it must end up
// with everything it holds recorded: its presence member, its
// subscriptions, its channel hold and its connection. B used to rejoin
// (adding and recording again what it holds) as soon as it beat, while A
// went on ending B's member, records and hold with node_lost and deleted
// B's list of presence channels: B kept serving a member and
// subscriptions that the cluster had told gone, and that nobody would
// end should B then die for good. B now waits for the reap to finish
// before it rejoins.
func TestComingBackMidReapKeepsWhatTheNodeHolds(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	node := func() *Log {
		// Beats only when the test says so.
		return openNode(t, ctx, Options{URL: srv.URL(), Prefix: "back:", Heartbeat: time.Hour, NodeTimeout: time.Second})
	}
	a, b := node(), node()
	const room = "room"
	evRoom := broker.ReservedPrefix + "events.channel." + room
	ev := func(ch, name string) *broker.Message {
		return &broker.Message{Channel: ch, Event: name, Kind: broker.KindJSON, Data: []byte(`{}`)}
	}
	subs := []string{"s1", "s2", "s3"}
	// What B holds, made (and made again at its rejoin) as the events
	// and the presence registry do.
	hold := func() error {
		if _, err := b.PresenceAdd(ctx, room, "u1", []byte(`{}`), 100, ev(room, "member_added")); err != nil {
			return err
		}
		if _, err := b.Occupy(ctx, "", evRoom, true, ev(evRoom, "channel_occupied")); err != nil {
			return err
		}
		for _, s := range subs {
			if err := record(ctx, b, "", "s", s, evRoom, "subscribed", true); err != nil {
				return err
			}
		}
		return record(ctx, b, "", "c", "c1", connectionsEvents, "connection_opened", true)
	}
	if err := hold(); err != nil {
		t.Fatal(err)
	}
	b.WatchPresence(nil, func() {
		if _, err := b.PresenceAdd(ctx, room, "u1", []byte(`{}`), 100, ev(room, "member_added")); err != nil {
			t.Error(err)
		}
	})
	b.WatchLifecycle(nil, func() {
		if err := hold(); err != nil {
			t.Error(err)
		}
	})
	// A reaps B; its first end waits until B has beaten again.
	entered, resume := make(chan struct{}), make(chan struct{})
	var once sync.Once
	gate := func() {
		once.Do(func() { close(entered) })
		select {
		case <-resume:
		case <-ctx.Done():
		}
	}
	a.WatchPresence(func(node, channel, id string) error {
		gate()
		_, err := a.PresenceRemove(ctx, node, channel, id, ev(channel, "member_removed"))
		return err
	}, nil)
	a.WatchLifecycle(func(node, kind, key, info string) error {
		gate()
		switch kind {
		case "s":
			return record(ctx, a, node, kind, key, evRoom, "unsubscribed", false)
		case "c":
			return record(ctx, a, node, kind, key, connectionsEvents, "connection_closed", false)
		case "o":
			_, err := a.Occupy(ctx, node, key, false, ev(key, "channel_vacated"))
			return err
		}
		return nil
	}, nil)
	// B falls silent.
	if err := a.rdb.ZAdd(ctx, a.key("nodes"), redis.Z{Score: float64(time.Now().Add(-time.Hour).UnixMilli()), Member: b.node}).Err(); err != nil {
		t.Fatal(err)
	}
	reaped := make(chan struct{})
	go func() {
		defer close(reaped)
		a.reapNode(ctx, b.node, time.Now().Add(-time.Second).UnixMilli())
	}()
	select {
	case <-entered:
	case <-ctx.Done():
		t.Fatal("A did not reap B")
	}
	// Another survivor finds B silent too: one reap at a time.
	c := node()
	var second atomic.Int32
	c.WatchPresence(func(string, string, string) error { second.Add(1); return nil }, nil)
	c.WatchLifecycle(func(string, string, string, string) error { second.Add(1); return nil }, nil)
	c.reapNode(ctx, b.node, time.Now().Add(-time.Second).UnixMilli())
	if n := second.Load(); n > 0 {
		t.Fatalf("a second survivor ended %d of B's holds while A was reaping B", n)
	}
	b.beatOnce(true, 1) // B is back, mid-reap
	close(resume)
	select {
	case <-reaped:
	case <-ctx.Done():
		t.Fatal("the reap did not end")
	}
	b.beatOnce(true, 2)
	// What B holds is all there.
	var missing []string
	p, err := a.rdb.HGetAll(ctx, a.presenceKey(evRoom)).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range subs {
		if _, ok := p["r:"+b.node+":s:"+s]; !ok {
			missing = append(missing, "subscription "+s)
		}
	}
	if _, ok := p["h:"+b.node]; !ok {
		missing = append(missing, "hold of "+room)
	}
	if c, err := a.rdb.HExists(ctx, a.presenceKey(connectionsEvents), "r:"+b.node+":c:c1").Result(); err != nil || !c {
		missing = append(missing, "connection c1")
	}
	members, _, err := a.PresenceList(ctx, room)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(members, func(m broker.PresenceMember) bool { return m.ID == "u1" }) {
		missing = append(missing, "member u1")
	}
	if ok, err := a.rdb.SIsMember(ctx, a.heldKey(b.node), room).Result(); err != nil || !ok {
		missing = append(missing, "B's list of presence channels")
	}
	if len(missing) > 0 {
		t.Fatalf("B came back while A reaped it and holds them, but the cluster lost: %v", missing)
	}
}

// record records (open) or ends a connection or subscription of node
// ("" this one) in evCh's hash, with its event name, and waits for it.
func record(ctx context.Context, l *Log, node, kind, key, evCh, name string, open bool) error {
	wait, err := l.StartRecord(ctx, node, kind, key, "{}", open,
		&broker.Message{Channel: evCh, Event: name, Kind: broker.KindJSON, Data: []byte(`{}`)})
	if err != nil {
		return err
	}
	_, err = wait()
	return err
}

// openNode opens a node's log with a broker core on it, closed with t.
func openNode(t *testing.T, ctx context.Context, o Options) *Log {
	t.Helper()
	_, l := openCore(t, ctx, o)
	return l
}
