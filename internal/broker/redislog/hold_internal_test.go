package redislog

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/redistest"
)

// A channel on hold that changes connection before the resync: on Redis
// Cluster, followed by name and through a pattern; its shard's
// connection breaks and hears m2 before its resync (on hold: left for
// the resync). The subscriber by name then leaves, so the channel is no
// longer the shard's but the classic connection's, which did not break.
// The pattern subscriber must get m2 once the shard's resync ran. (A
// resync took only the channels of its own connection then: m2 came
// only with the next message.)
func TestHeldChannelChangesConnection(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	owner := c.Owner(t, c.Slot(t, "mv:{c.y}"))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	reconnected := make(chan struct{}, 1)
	gate := make(chan struct{})
	var once atomic.Bool
	a, _ := openCore(t, ctx, Options{URL: c.URL(), Prefix: "mv:"})
	bc, b := openCore(t, ctx, Options{URL: c.URL(), Prefix: "mv:",
		beforeResync: func(string) {
			if !once.CompareAndSwap(false, true) {
				return
			}
			reconnected <- struct{}{}
			<-gate
		}})
	pat, err := bc.Subscribe(ctx, broker.SubscribeOptions{Channels: []string{"c.>"}})
	if err != nil {
		t.Fatal(err)
	}
	defer pat.Close()
	exact, err := bc.Subscribe(ctx, broker.SubscribeOptions{Channels: []string{"c.y"}})
	if err != nil {
		t.Fatal(err)
	}
	pub := func(d string) {
		t.Helper()
		if _, _, err := a.Publish(ctx, &broker.Message{Channel: "c.y", Data: []byte(d)}); err != nil {
			t.Fatal(err)
		}
	}
	pub("m1")
	expectNext(t, ctx, pat, "m1")
	expectNext(t, ctx, exact, "m1")
	// Break B's sharded connection only (the one with sharded subscriptions).
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
	if killed == 0 {
		t.Fatalf("no sharded connection on %s:\n%s", owner.Addr(), list)
	}
	select {
	case <-reconnected:
	case <-ctx.Done():
		t.Fatal("B's shard did not rebuild")
	}
	pub("m2")
	// B's shard connection has dispatched (and held) m2 once this PING is answered.
	b.mu.Lock()
	sh := b.refs["c.y"].shard
	b.mu.Unlock()
	if err := b.ping(ctx, sh.pubsub()); err != nil {
		t.Fatal(err)
	}
	exact.Close() // c.y leaves the shard for the classic connection
	wait, cancelw := context.WithTimeout(ctx, 5*time.Second)
	for b.followedExactly("c.y") {
		if wait.Err() != nil {
			t.Fatal("c.y still followed by name")
		}
		<-time.After(10 * time.Millisecond) // polling the unfollow
	}
	cancelw()
	close(gate)
	wait2, cancel2 := context.WithTimeout(ctx, 2*time.Second)
	defer cancel2()
	if evs, err := pat.Next(wait2, nil); err == nil {
		if e := evs[0]; e.Msg != nil && string(e.Msg.Data) == "m2" {
			return // delivered
		}
		t.Fatalf("got %+v, want m2", evs[0])
	}
	pub("m3")
	evs, err := pat.Next(ctx, nil)
	var got []string
	for _, e := range evs {
		if e.Msg != nil {
			got = append(got, string(e.Msg.Data))
		} else {
			got = append(got, "gap")
		}
	}
	t.Errorf("m2 not delivered within 2 s of B's resync; once m3 was published the pattern subscriber got %v (%v)", got, err)
}
