package redislog

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/redistest"
)

// TestDeliveryLease: one holder at a time; only the holder stores
// positions (a node whose lease another took cannot move them); a lease
// given up or expired is taken by another; the start time is set once.
func TestDeliveryLease(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	hub := broker.NewHub()
	l, err := Open(ctx, Options{URL: srv.URL(), Prefix: "lease:", NodeTimeout: 2 * time.Second}, hub)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	must := func(ok bool, err error) bool {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	if !must(l.TakeLease(ctx, "u", "a")) || must(l.TakeLease(ctx, "u", "b")) || !must(l.TakeLease(ctx, "u", "a")) {
		t.Fatal("a takes and renews the lease; b does not get it")
	}
	if left, err := l.LeaseLeft(ctx, "u", "a"); err != nil || left <= time.Second || left > 2*time.Second {
		t.Fatalf("a's lease left: %v %v", left, err)
	}
	if left, _ := l.LeaseLeft(ctx, "u", "b"); left != 0 {
		t.Fatalf("b's lease left: %v", left)
	}
	t0 := time.UnixMicro(time.Now().UnixMicro()).UTC()
	if _, since, err := l.Positions(ctx, "u", t0); err != nil || !since.Equal(t0) {
		t.Fatalf("since %v %v, want %v", since, err, t0)
	}
	// Positions are kept for event channels that exist (see
	// TestPositionsOfGoneChannelsAreDropped).
	core := broker.New(hub, l, broker.CoreOptions{})
	defer core.Close()
	x, _, err := core.Publish(ctx, &broker.Message{Channel: "$events.channel.x", Data: []byte("{}")})
	if err != nil {
		t.Fatal(err)
	}
	pos := broker.Cursor{"$events.channel.x": {Epoch: x.Epoch, Seq: 3}}
	if err := l.SavePositions(ctx, "u", "a", pos); err != nil {
		t.Fatal(err)
	}
	if err := l.SavePositions(ctx, "u", "b", broker.Cursor{"$events.channel.x": {Epoch: "e", Seq: 9}}); !errors.Is(err, broker.ErrLeaseLost) {
		t.Fatalf("b storing positions: %v, want ErrLeaseLost", err)
	}
	if err := l.DropLease(ctx, "u", "b"); err != nil { // not b's: no effect
		t.Fatal(err)
	}
	if err := l.DropLease(ctx, "u", "a"); err != nil {
		t.Fatal(err)
	}
	if !must(l.TakeLease(ctx, "u", "b")) {
		t.Fatal("b does not get the lease a gave up")
	}
	if err := l.SavePositions(ctx, "u", "a", broker.Cursor{"$events.channel.x": {Epoch: "e", Seq: 9}}); !errors.Is(err, broker.ErrLeaseLost) {
		t.Fatalf("a storing positions after losing the lease: %v", err)
	}
	got, since, err := l.Positions(ctx, "u", time.Now())
	if err != nil || !since.Equal(t0) || len(got) != 1 || got["$events.channel.x"] != pos["$events.channel.x"] {
		t.Fatalf("positions %v since %v (%v), want %v since %v", got, since, err, pos, t0)
	}
}

// TestPositionsOfGoneChannelsAreDropped: the stored positions of a URL's
// webhooks hold one per event channel sent; those of event channels that
// no longer exist (expired, deleted) are dropped when a holder reads
// them (taking the lease, resuming), so the hash does not keep one per
// channel ever used, and a new holder's subscription does not start
// from each of them. They used to stay forever.
func TestPositionsOfGoneChannelsAreDropped(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	hub := broker.NewHub()
	l, err := Open(ctx, Options{URL: srv.URL(), Prefix: "prune:"}, hub)
	if err != nil {
		t.Fatal(err)
	}
	core := broker.New(hub, l, broker.CoreOptions{})
	defer core.Close()
	if ok, err := l.TakeLease(ctx, "u", "a"); err != nil || !ok {
		t.Fatal("lease", err)
	}
	since := time.Now()
	if _, _, err := l.Positions(ctx, "u", since); err != nil {
		t.Fatal(err)
	}
	cur := broker.Cursor{}
	for _, ch := range []string{"$events.channel.live", "$events.channel.gone"} {
		m, _, err := core.Publish(ctx, &broker.Message{Channel: ch, Data: []byte("{}")})
		if err != nil {
			t.Fatal(err)
		}
		cur[ch] = broker.Position{Epoch: m.Epoch, Seq: m.Seq}
	}
	cur["$events.channel.never"] = broker.Position{Epoch: "e", Seq: 1}
	if err := l.SavePositions(ctx, "u", "a", cur); err != nil {
		t.Fatal(err)
	}
	if err := core.DeleteChannel(ctx, "$events.channel.gone"); err != nil {
		t.Fatal(err)
	}
	got, _, err := l.Positions(ctx, "u", since)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got["$events.channel.live"] != cur["$events.channel.live"] {
		t.Fatalf("positions %v, want only the live channel's %v", got, cur["$events.channel.live"])
	}
	if fields, err := l.rdb.HKeys(ctx, l.posKey("u")).Result(); err != nil || len(fields) != 2 {
		t.Fatalf("stored fields %v (%v), want the live channel's and the start time", fields, err)
	}
}
