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
	l, err := Open(ctx, Options{URL: srv.URL(), Prefix: "lease:", NodeTimeout: 2 * time.Second}, broker.NewHub())
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
	pos := broker.Cursor{"$events.channel.x": {Epoch: "e", Seq: 3}}
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
