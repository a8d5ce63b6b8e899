package redislog

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/redistest"
)

// TestMemberEventsOnceForTheCluster: two nodes on one Redis hold and
// release a presence member of one channel in its event channel's hash.
// member_added is appended once, by the hold that makes the member held
// anywhere (0→1), member_removed once, by the release that makes it held
// nowhere (1→0), each in the same script as the count; holding again or
// releasing what is not held appends nothing; a call sent again (the
// publisher's retry, same call id) answers its first reply and appends
// nothing more; and a reaper ends a dead node's holds once, however often
// it runs.
func TestMemberEventsOnceForTheCluster(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	node := func() *Log { return openNode(t, ctx, Options{URL: srv.URL(), Prefix: "member:"}) }
	a, b := node(), node()
	const evCh = broker.ReservedPrefix + "events.channel.room"
	appended := func() []string {
		t.Helper()
		entries, err := a.rdb.XRange(ctx, a.chanKey(evCh, "s"), "-", "+").Result()
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range entries {
			for k, v := range e.Values {
				if k == "e" || k == "event" {
					out = append(out, fmt.Sprint(v))
				}
			}
		}
		return out
	}
	n0 := 0
	step := func(l *Log, node, id string, hold bool, want bool) *broker.Message {
		t.Helper()
		name := "member_removed"
		if hold {
			name = "member_added"
		}
		m := &broker.Message{Channel: evCh, Event: name, Kind: broker.KindJSON, Data: []byte(`{}`)}
		got, err := l.Member(ctx, node, evCh, id, `{"channel":"room","user_id":"`+id+`"}`, hold, m)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Fatalf("%s of %s by %s: appended %v, want %v", name, id, l.node, got, want)
		}
		return m
	}
	listed := func(l *Log) bool {
		ok, err := a.rdb.HExists(ctx, a.lifeKey(l.node, "m"), evCh).Result()
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	m := step(a, "", "alice", true, true) // 0→1
	if m.Seq == 0 || !listed(a) {
		t.Fatalf("member_added not placed (seq %d) or the channel not listed for A's reaper (%v)", m.Seq, listed(a))
	}
	step(b, "", "alice", true, false) // 1→2
	step(a, "", "alice", true, false) // held already
	step(a, "", "alice", false, false)
	if listed(a) {
		t.Fatal("A holds no member of the channel any more and still lists it")
	}
	step(a, "", "alice", false, false) // not held
	if m := step(b, "", "alice", false, true); m.Seq != 2 {
		t.Fatalf("member_removed at seq %d, want 2", m.Seq)
	}
	if got := appended(); len(got) != 2 {
		t.Fatalf("appended %v, want one member_added and one member_removed", got)
	}
	n0 = 2

	// A retried call (same call id) answers its first reply, appends once.
	o := &op{m: &broker.Message{Channel: evCh, Event: "member_added", Kind: broker.KindJSON, Data: []byte(`{}`)},
		script: memberScript, args: []any{a.node, "carol", "", 1}}
	calls, _ := a.plan([]*op{o}, nil)
	first, err := calls[0].script.Run(ctx, a.rdb, calls[0].keys, calls[0].args...).Slice()
	if err != nil {
		t.Fatal(err)
	}
	again, err := calls[0].script.Run(ctx, a.rdb, calls[0].keys, calls[0].args...).Slice()
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(first) != fmt.Sprint(again) || first[0] != int64(1) {
		t.Fatalf("a call sent again answered %v, the first %v", again, first)
	}
	if got := appended(); len(got) != n0+1 {
		t.Fatalf("a call sent twice appended %d events, want 1: %v", len(got)-n0, got)
	}

	// A dies holding dave and carol (bob is held by B too): B's reaper
	// ends A's holds, the second run finds nothing.
	step(a, "", "dave", true, true)
	step(a, "", "bob", true, true)
	step(b, "", "bob", true, false)
	var told []string
	b.WatchLifecycle(func(node, kind, key, info string) error {
		if kind != "m" {
			return nil
		}
		m := &broker.Message{Channel: evCh, Event: "member_removed", Kind: broker.KindJSON, Data: []byte(`{}`)}
		ok, err := b.Member(ctx, node, evCh, key, "", false, m)
		if ok {
			told = append(told, key)
		}
		return err
	}, nil)
	for range 2 {
		if err := b.reapLifecycle(ctx, a.node, nil); err != nil {
			t.Fatal(err)
		}
	}
	slices.Sort(told)
	if !slices.Equal(told, []string{"carol", "dave"}) {
		t.Fatalf("the reaper told member_removed of %v, want carol and dave once each (bob is held by B)", told)
	}
	if got := appended(); len(got) != n0+1+2+2 {
		t.Fatalf("events appended: %v", got)
	}
	step(b, "", "bob", false, true)
}

// TestIdleHashesExpire: a channel's presence hash, and its event
// channel's hash of holds, members and records, keep bookkeeping (the
// last position, each node's last call) after the last member left or
// the channel was vacated; they used to stay in Redis forever, one per
// channel ever used. Once nothing is held there they expire (after
// idleHashLife), and a new hold makes them persist again. The hash of
// connection records never expires (it is one for the cluster, and its
// records are the survivors' only way to a dead node's connections).
func TestIdleHashesExpire(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l := openNode(t, ctx, Options{URL: srv.URL(), Prefix: "idle:"})
	const room = "room"
	evRoom := broker.ReservedPrefix + "events.channel." + room
	ev := func(ch, name string) *broker.Message {
		return &broker.Message{Channel: ch, Event: name, Kind: broker.KindJSON, Data: []byte(`{}`)}
	}
	expires := func(key string) bool {
		t.Helper()
		ttl, err := l.rdb.PTTL(ctx, key).Result()
		if err != nil {
			t.Fatal(err)
		}
		if ttl == -2 {
			t.Fatalf("%s is gone", key)
		}
		if ttl > idleHashLife {
			t.Fatalf("%s expires in %v, more than %v", key, ttl, idleHashLife)
		}
		return ttl > 0
	}
	check := func(what, key string, want bool) {
		t.Helper()
		if got := expires(key); got != want {
			t.Fatalf("%s: %s expires %v, want %v", what, key, got, want)
		}
	}
	for round := range 2 {
		if _, err := l.PresenceAdd(ctx, room, "u1", []byte(`{}`), 100, ev(room, "member_added")); err != nil {
			t.Fatal(err)
		}
		check(fmt.Sprint("member joined, round ", round), l.presenceKey(room), false)
		if _, err := l.PresenceRemove(ctx, "", room, "u1", ev(room, "member_removed")); err != nil {
			t.Fatal(err)
		}
		check("member left", l.presenceKey(room), true)
		if n, err := l.PresenceCount(ctx, room); err != nil || n != 0 {
			t.Fatalf("members after the last left: %d %v", n, err)
		}

		if _, err := l.Occupy(ctx, "", evRoom, true, ev(evRoom, "channel_occupied")); err != nil {
			t.Fatal(err)
		}
		if err := record(ctx, l, "", "s", "s1", evRoom, "subscribed", true); err != nil {
			t.Fatal(err)
		}
		check("channel occupied", l.presenceKey(evRoom), false)
		if err := record(ctx, l, "", "s", "s1", evRoom, "unsubscribed", false); err != nil {
			t.Fatal(err)
		}
		if _, err := l.Occupy(ctx, "", evRoom, false, ev(evRoom, "channel_vacated")); err != nil {
			t.Fatal(err)
		}
		check("channel vacated", l.presenceKey(evRoom), true)

		if err := record(ctx, l, "", "c", "c1", connectionsEvents, "connection_opened", true); err != nil {
			t.Fatal(err)
		}
		if err := record(ctx, l, "", "c", "c1", connectionsEvents, "connection_closed", false); err != nil {
			t.Fatal(err)
		}
		check("connection closed", l.presenceKey(connectionsEvents), false)
	}
}

func TestIdleHashLifeInLua(t *testing.T) {
	if idleHashLifeMs != strconv.FormatInt(idleHashLife.Milliseconds(), 10) {
		t.Fatalf("idleHashLifeMs %s, want %d", idleHashLifeMs, idleHashLife.Milliseconds())
	}
}

// TestHashWithRecordsDoesNotExpire: an event channel's hash holding a
// member's or a subscription's record is kept while the record is
// there, also when no node holds the channel (a WebSocket join makes a
// presence member without a subscription): it used to expire 24 h after
// its last change, taking the records (and so the member_removed its
// leave, or a reaper, must tell) with it.
func TestHashWithRecordsDoesNotExpire(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l := openNode(t, ctx, Options{URL: srv.URL(), Prefix: "keep:"})
	evRoom := broker.ReservedPrefix + "events.channel.room"
	ev := func(name string) *broker.Message {
		return &broker.Message{Channel: evRoom, Event: name, Kind: broker.KindJSON, Data: []byte(`{}`)}
	}
	ttl := func(what string) time.Duration {
		d, err := l.rdb.PTTL(ctx, l.presenceKey(evRoom)).Result()
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	if _, err := l.Member(ctx, "", evRoom, "u1", "{}", true, ev("member_added")); err != nil {
		t.Fatal(err)
	}
	if d := ttl("member"); d != -1 {
		t.Fatalf("a member's record in a hash no node holds: it expires in %v", d)
	}
	if err := record(ctx, l, "", "s", "s1", evRoom, "subscribed", true); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Member(ctx, "", evRoom, "u1", "{}", false, ev("member_removed")); err != nil {
		t.Fatal(err)
	}
	if d := ttl("subscription"); d != -1 {
		t.Fatalf("a subscription's record in a hash no node holds: it expires in %v", d)
	}
	if err := record(ctx, l, "", "s", "s1", evRoom, "unsubscribed", false); err != nil {
		t.Fatal(err)
	}
	if d := ttl("nothing"); d <= 0 {
		t.Fatalf("nothing left: the hash does not expire (%v)", d)
	}
}
