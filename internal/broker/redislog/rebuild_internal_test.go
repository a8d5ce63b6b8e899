package redislog

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/redistest"
)

// A shard's connection is made again without the node's lock held, so
// channels can be followed and left while it is made: those must end up
// subscribed on the new connection, and those left unsubscribed. B
// follows c.old on master M; its connection to M is killed and, while
// its rebuild is about to make the new one (held there by the test),
// B's subscriber to c.old leaves and a subscriber to c.new (on M too)
// comes. Once the connection is made, the subscribe returns, M has B
// subscribed to c.new and not to c.old, and a message published on
// c.new reaches B's subscriber.
func TestFollowedWhileShardRebuilds(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	const p = "rb:"
	// Two channels on one master.
	slot := func(ch string) int { return c.Slot(t, p+"{"+ch+"}:m") }
	old := "c.old"
	owner := c.Owner(t, slot(old))
	var nw string
	for i := 1; nw == ""; i++ {
		if ch := fmt.Sprintf("c.new%d", i); c.Owner(t, slot(ch)) == owner {
			nw = ch
		}
		if i > 1000 {
			t.Fatal("no channel on the owner of c.old")
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dialing := make(chan struct{})
	gate := make(chan struct{})
	var once atomic.Bool
	a, _ := openCore(t, ctx, Options{URL: c.URL(), Prefix: p})
	bc, b := openCore(t, ctx, Options{URL: c.URL(), Prefix: p,
		beforeDial: func() {
			if once.CompareAndSwap(false, true) {
				close(dialing)
				<-gate
			}
		}})
	subOld, err := bc.Subscribe(ctx, broker.SubscribeOptions{Channels: []string{old}})
	if err != nil {
		t.Fatal(err)
	}
	pub := func(ch, d string) {
		t.Helper()
		if _, _, err := a.Publish(ctx, &broker.Message{Channel: ch, Data: []byte(d)}); err != nil {
			t.Fatal(err)
		}
	}
	pub(old, "m1")
	expectNext(t, ctx, subOld, "m1")

	rc := newRedisClient(t, owner.Addr())
	list, err := rc.ClientList(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	killed := 0
	for _, line := range strings.Split(list, "\n") {
		if strings.Contains(line, " ssub=") && !strings.Contains(line, " ssub=0") {
			for _, f := range strings.Fields(line) {
				if id, ok := strings.CutPrefix(f, "id="); ok {
					if err := rc.Do(ctx, "CLIENT", "KILL", "ID", id).Err(); err != nil {
						t.Fatal(err)
					}
					killed++
				}
			}
		}
	}
	if killed != 1 {
		t.Fatalf("%d sharded connections on %s, want B's one:\n%s", killed, owner.Addr(), list)
	}
	select {
	case <-dialing:
	case <-ctx.Done():
		t.Fatal("B's shard did not rebuild")
	}

	// While the rebuild waits to make its connection.
	b.mu.Lock()
	sh := b.refs[old].shard
	b.mu.Unlock()
	type subscribed struct {
		s   *broker.Subscription
		err error
	}
	newSub := make(chan subscribed, 1)
	go func() {
		s, err := bc.Subscribe(ctx, broker.SubscribeOptions{Channels: []string{nw}})
		newSub <- subscribed{s, err}
	}()
	for !sh.has(b.pubsubChannel(nw)) {
		select {
		case r := <-newSub:
			t.Fatalf("subscribe to %s returned before the rebuild made its connection: %v", nw, r.err)
		case <-ctx.Done():
			t.Fatalf("%s not followed on B's shard", nw)
		case <-time.After(5 * time.Millisecond): // polling Follow's first step
		}
	}
	subOld.Close()
	if sh.has(b.pubsubChannel(old)) {
		t.Fatalf("%s still followed on B's shard after its subscriber left", old)
	}
	close(gate)

	var r subscribed
	select {
	case r = <-newSub:
	case <-time.After(10 * time.Second):
		t.Fatalf("subscribe to %s: no answer 10 s after the rebuild went on", nw)
	}
	if r.err != nil {
		t.Fatalf("subscribe to %s during the rebuild: %v", nw, r.err)
	}
	defer r.s.Close()
	// The subscribe returned once M answered a PING sent after every
	// (un)subscribe: M counts B's subscriptions as they are now.
	counts, err := rc.Do(ctx, "PUBSUB", "SHARDNUMSUB", b.pubsubChannel(old), b.pubsubChannel(nw)).Slice()
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(counts) != fmt.Sprintf("[%s 0 %s 1]", b.pubsubChannel(old), b.pubsubChannel(nw)) {
		t.Fatalf("sharded subscribers on %s: %v; want none for %s (left during the rebuild), one for %s (followed during it)", owner.Addr(), counts, old, nw)
	}
	pub(nw, "n1")
	expectNext(t, ctx, r.s, "n1")
}
