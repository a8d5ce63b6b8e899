package redislog

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/redistest"
)

func newOp(ch, data string) *op {
	return &op{m: &broker.Message{Channel: ch, Data: []byte(data)}, res: make(chan opResult, 1)}
}

// A call sent again near the end of its PublishTimeout (one that waited
// parked while its slot moved) does not cut short the calls sent with
// it: when Redis refuses the pipeline for a moment (BUSY: a long script,
// for 500 ms here), each call gives up at its own PublishTimeout. (With
// one deadline for the batch, the earliest, the fresh publish failed
// after a tenth of a second.)
func TestFreshCallKeepsItsPublishTimeout(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, l := openCore(t, ctx, Options{URL: srv.URL(), Prefix: "pt:", PublishTimeout: 3 * time.Second})
	rc := newRedisClient(t, srv.Addr())
	if err := rc.ConfigSet(ctx, "busy-reply-threshold", "50").Err(); err != nil {
		t.Fatal(err)
	}
	go newRedisClient(t, srv.Addr()).Eval(context.Background(), "while true do end", nil)
	for {
		err := rc.Ping(ctx).Err()
		if err != nil && strings.HasPrefix(err.Error(), "BUSY") {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("Redis never BUSY")
		}
	}
	killer := newRedisClient(t, srv.Addr())
	time.AfterFunc(500*time.Millisecond, func() { killer.ScriptKill(context.Background()) })
	old, fresh := newOp("old", "o"), newOp("fresh", "f")
	calls, _ := l.plan([]*op{old, fresh}, nil)
	calls[0].start = time.Now().Add(-2900 * time.Millisecond) // sent first 2.9 s ago
	l.runBatch(calls)
	if r := <-fresh.res; r.err != nil {
		t.Fatalf("fresh publish: %v", r.err)
	}
	if r := <-old.res; !errors.Is(r.err, broker.ErrUnavailable) {
		t.Fatalf("publish past its PublishTimeout: %v, want broker.ErrUnavailable", r.err)
	}
}

// A pipeline in which one channel's call is refused because its slot is
// moving (TRYAGAIN) and another's because Redis forgot the scripts
// (NOSCRIPT: a shard restarted during the reshard): the first is parked
// on its own, the scripts are loaded again and the second goes through at
// once; the first goes through once the slot moved. (Parked only when
// every call left was refused for a move, both were retried in place and
// neither went through: the scripts were never loaded again.)
func TestMovingCallParkedWhileOthersReloadScripts(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := "mv:"
	core, l := openCore(t, ctx, Options{URL: c.URL(), Prefix: p, PublishTimeout: 2 * time.Second,
		Retention: broker.Retention{HistorySize: 100, HistoryBytes: 1 << 20}})
	key := func(ch, kind string) string { return p + "{" + ch + "}:" + kind }
	slot := c.Slot(t, key("mig", "m"))
	other := "other0"
	for i := 1; c.Slot(t, key(other, "m")) == slot; i++ {
		other = fmt.Sprintf("other%d", i)
	}
	for _, ch := range []string{"mig", other} {
		if _, _, err := core.Publish(ctx, &broker.Message{Channel: ch, Data: []byte("one")}); err != nil {
			t.Fatal(err)
		}
	}
	owner := c.Owner(t, slot)
	var dst *redistest.Server
	for _, s := range c.Servers {
		if s != owner {
			dst = s
			break
		}
	}
	src := c.StartMove(t, slot, dst)
	c.Migrate(t, src, dst, key("mig", "z"))
	// The publisher is held on a batch of its own (the blocker's) until
	// mig's and the other channel's publishes are queued, so that they go
	// in one pipeline; just before it is sent, every master forgets the
	// scripts.
	entered, gate := make(chan struct{}), make(chan struct{})
	hook := func(mode string, names []string) {
		switch {
		case slices.Equal(names, []string{"blocker"}):
			close(entered)
			<-gate
		case slices.Contains(names, "mig"):
			for _, s := range c.Servers {
				if err := newRedisClient(t, s.Addr()).ScriptFlush(ctx).Err(); err != nil {
					t.Error(err)
				}
			}
		}
	}
	l.afterCounts.Store(&hook)
	publishing := func(ch string) chan error {
		done := make(chan error, 1)
		go func() {
			_, _, err := core.Publish(ctx, &broker.Message{Channel: ch, Data: []byte("two")})
			done <- err
		}()
		return done
	}
	blocker := publishing("blocker")
	<-entered
	mig := publishing("mig")
	queued := func(n int) {
		for len(l.queue) < n { // (polling the queue's length)
			select {
			case <-ctx.Done():
				t.Fatalf("%d publishes queued, want %d", len(l.queue), n)
			case <-time.After(time.Millisecond):
			}
		}
	}
	queued(1)
	oth := publishing(other)
	queued(2)
	close(gate)
	for _, done := range []chan error{blocker, oth} {
		if err := <-done; err != nil {
			t.Fatalf("publish with mig's slot moving: %v", err)
		}
	}
	select {
	case err := <-mig:
		t.Fatalf("mig's publish answered (%v) while its keys are split", err)
	default:
	}
	c.Migrate(t, src, dst, key("mig", "m"), key("mig", "s"))
	c.FinishMove(t, slot, src, dst)
	if err := <-mig; err != nil {
		t.Fatalf("mig's publish once its slot moved: %v", err)
	}
	if _, _, err := core.Publish(ctx, &broker.Message{Channel: other, Data: []byte("three")}); err != nil {
		t.Fatal(err)
	}
	for ch, want := range map[string][]string{"mig": {"one", "two"}, other: {"one", "two", "three"}} {
		res, err := l.Read(ctx, ch, broker.ReadRequest{Last: -1})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, e := range res.Events {
			if e.Msg == nil {
				t.Fatalf("%s's history has a gap notice", ch)
			}
			got = append(got, string(e.Msg.Data))
		}
		if strings.Join(got, " ") != strings.Join(want, " ") {
			t.Fatalf("%s's history %v, want %v", ch, got, want)
		}
	}
}
