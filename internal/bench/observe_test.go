package bench

import (
	"testing"
	"time"
)

// TestObserveCountsDuplicates: a message delivered twice counts once, and
// once as duplicated; warm-up messages count for neither.
func TestObserveCountsDuplicates(t *testing.T) {
	s := &subscriber{seen: make([]uint64, 2), run: "a1b2c3"}
	now := time.Now()
	for _, n := range []int{1, 2, 2, 64, 1} {
		s.observe(payload(48, s.run, now, n, false), now)
	}
	s.observe(payload(48, s.run, now, 3, true), now)
	if got, dup := s.received.Load(), s.duplicated.Load(); got != 3 || dup != 2 {
		t.Fatalf("received %d, duplicated %d; want 3 and 2", got, dup)
	}
	if !s.warm.Load() {
		t.Fatal("warm-up not seen")
	}
	s.observe(payload(48, s.run, now, 1000, false), now) // beyond the run: ignored, not a crash
}

// TestObserveIgnoresOtherRuns: what another run published (a broker that
// keeps messages replays them to new subscribers) counts neither as
// received, nor as a duplicate, nor as this run's warm-up.
func TestObserveIgnoresOtherRuns(t *testing.T) {
	s := &subscriber{seen: make([]uint64, 2), run: "a1b2c3"}
	old := time.Now().Add(-time.Minute)
	for _, p := range [][]byte{
		payload(48, "ffffff", old, 1, true),
		payload(48, "ffffff", old, 1, false),
		payload(48, "a1b2c", old, 2, false), // a prefix of this run's id
		payload(48, "a1b2c3d", old, 2, false),
		[]byte("a1b2c3"), []byte("W"), {},
	} {
		s.observe(p, time.Now())
	}
	if s.warm.Load() || s.received.Load() != 0 || s.duplicated.Load() != 0 || s.otherRuns.Load() != 7 {
		t.Fatalf("warm %v, received %d, duplicated %d, other runs %d; want false, 0, 0, 7",
			s.warm.Load(), s.received.Load(), s.duplicated.Load(), s.otherRuns.Load())
	}
	now := time.Now()
	s.observe(payload(48, s.run, now, 1, false), now)
	if s.received.Load() != 1 || s.hist.Max() > time.Second {
		t.Fatalf("this run's message 1: received %d, latency %s", s.received.Load(), s.hist.Max())
	}
}
