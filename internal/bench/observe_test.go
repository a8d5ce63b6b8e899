package bench

import (
	"testing"
	"time"
)

// TestObserveCountsDuplicates: a message delivered twice counts once, and
// once as duplicated; warm-up messages count for neither.
func TestObserveCountsDuplicates(t *testing.T) {
	s := &subscriber{seen: make([]uint64, 2)}
	now := time.Now()
	for _, n := range []int{1, 2, 2, 64, 1} {
		s.observe(payload(48, now, n, false), now)
	}
	s.observe(payload(48, now, 3, true), now)
	if got, dup := s.received.Load(), s.duplicated.Load(); got != 3 || dup != 2 {
		t.Fatalf("received %d, duplicated %d; want 3 and 2", got, dup)
	}
	if !s.warm.Load() {
		t.Fatal("warm-up not seen")
	}
	s.observe(payload(48, now, 1000, false), now) // beyond the run: ignored, not a crash
}
