package broker

import (
	"context"
	"testing"
	"time"
)

// With --history-age between 1m and 2m the sweeper used to forget an
// idle, emptied channel (and its idempotency keys) before the keys'
// window ended, so a retry inside the window was stored again.
func TestSweeperKeepsKeysForTheirWindow(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	b := NewMemory(MemoryOptions{Now: func() time.Time { return now }, Retention: Retention{HistoryAge: 90 * time.Second}})
	t.Cleanup(func() { b.Close() })
	ctx := context.Background()
	first, _, err := b.Publish(ctx, &Message{Channel: "w", Data: []byte("x"), Key: "k"})
	if err != nil {
		t.Fatal(err)
	}
	now = now.Add(100 * time.Second) // history expired (90s), key still in its window (120s)
	b.log.(*memLog).sweep()
	again, _, err := b.Publish(ctx, &Message{Channel: "w", Data: []byte("x"), Key: "k"})
	if err != nil {
		t.Fatal(err)
	}
	if !again.Duplicate {
		t.Fatalf("retry 100s after the first (window %v) was stored again as %s (first %s)", DedupWindow, again.ID(), first.ID())
	}
}

// Once every key of a burst expired, dedup gives its memory back (a Go
// map never shrinks; order's backing array stayed as large as the burst).
func TestDedupGivesBackABurstsMemory(t *testing.T) {
	var d dedup
	at := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	for i := 0; i < maxDedupKeys; i++ {
		d.add(string(rune('a'+i%26))+time.Duration(i).String(), uint64(i), at)
	}
	d.lookup("zzz", at.Add(10*time.Minute))
	if len(d.seen) != 0 || d.head != 0 || len(d.order) != 0 {
		t.Fatalf("not all expired: seen %d order %d head %d", len(d.seen), len(d.order), d.head)
	}
	if cap(d.order) >= maxDedupKeys {
		t.Errorf("order keeps a backing array of %d refs (%d KiB) with no key remembered", cap(d.order), cap(d.order)*40/1024)
	}
}
