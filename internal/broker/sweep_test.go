package broker

import (
	"context"
	"testing"
	"time"
)

// TestWaitSubscribersSurvivesSweep: a channel nobody published to is idle
// and may be swept from the log while someone waits for its subscribers;
// the waiter must still see the subscriber that comes later (it used to
// wait on the swept channel forever).
func TestWaitSubscribersSurvivesSweep(t *testing.T) {
	b := NewMemory(MemoryOptions{})
	ml := b.log.(*memLog)
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- b.WaitSubscribers(ctx, "late", 1) }()
	// Wait until the waiter is registered, then sweep the channel away.
	for {
		b.hub.mu.RLock()
		_, waiting := b.hub.chans["late"]
		b.hub.mu.RUnlock()
		if waiting {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("the waiter never made the channel")
		case <-time.After(time.Millisecond):
		}
	}
	if _, err := ml.channel("late", true); err != nil {
		t.Fatal(err)
	}
	ml.sweep()
	if ch, _ := ml.channel("late", false); ch != nil {
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
