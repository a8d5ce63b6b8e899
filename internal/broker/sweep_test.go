package broker

import (
	"context"
	"testing"
	"time"
)

// TestWaitSubscribersSurvivesSweep: a channel that only a waiter created
// is idle and may be swept; the waiter must still see the subscriber that
// comes later (it used to wait on the swept channel forever).
func TestWaitSubscribersSurvivesSweep(t *testing.T) {
	b := NewMemory(MemoryOptions{})
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- b.WaitSubscribers(ctx, "late", 1) }()
	// Wait until the waiter has made the channel, then sweep it away.
	for {
		if ch, _ := b.channel("late", false); ch != nil {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("the waiter never made the channel")
		case <-time.After(time.Millisecond):
		}
	}
	b.sweep()
	if ch, _ := b.channel("late", false); ch != nil {
		t.Fatal("the idle channel was not swept; the test proves nothing")
	}
	s, err := b.Subscribe(ctx, SubscribeOptions{Channels: []string{"late"}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := <-done; err != nil {
		t.Fatalf("WaitSubscribers after a sweep: %v", err)
	}
}
