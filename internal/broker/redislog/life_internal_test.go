package redislog

import (
	"context"
	"slices"
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
