package redislog

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

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
	node := func() *Log {
		hub := broker.NewHub()
		l, err := Open(ctx, Options{URL: srv.URL(), Prefix: "life:"}, hub)
		if err != nil {
			t.Fatal(err)
		}
		c := broker.New(hub, l, broker.CoreOptions{})
		t.Cleanup(func() { c.Close() })
		return l
	}
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
	if err := a.reapLifecycle(ctx, b.node); err != nil {
		t.Fatal(err)
	}
	// B dies for good: the next reap ends what it did after coming back.
	told = nil
	if err := a.reapLifecycle(ctx, b.node); err != nil {
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
		hub := broker.NewHub()
		o.URL, o.Prefix = srv.URL(), "beat:"
		l, err := Open(ctx, o, hub)
		if err != nil {
			t.Fatal(err)
		}
		c := broker.New(hub, l, broker.CoreOptions{})
		t.Cleanup(func() { c.Close() })
		return l
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
