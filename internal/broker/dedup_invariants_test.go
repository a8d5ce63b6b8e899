package broker

import (
	"math/rand"
	"testing"
	"time"
)

// Invariants of dedup under random adds/lookups, clock jitter (backwards
// too) and the cap: one ref per remembered key, seen and order agree.
func TestDedupInvariants(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	var d dedup
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	check := func(step int) {
		live := d.order[d.head:]
		if len(live) != len(d.seen) {
			t.Fatalf("step %d: %d refs, %d seen", step, len(live), len(d.seen))
		}
		count := map[string]int{}
		for _, ref := range live {
			count[ref.key]++
			h, ok := d.seen[ref.key]
			if !ok || !h.at.Equal(ref.at) {
				t.Fatalf("step %d: ref %q at %v, seen %v %v", step, ref.key, ref.at, h, ok)
			}
		}
		for k, c := range count {
			if c != 1 {
				t.Fatalf("step %d: key %q has %d refs", step, k, c)
			}
		}
	}
	for step := 0; step < 400_000; step++ {
		switch x := r.Intn(100); {
		case x < 2:
			now = now.Add(-time.Duration(r.Intn(60)) * time.Second) // clock steps back
		case x < 10:
			now = now.Add(time.Duration(r.Intn(30)) * time.Second)
		}
		key := string(rune('a' + r.Intn(26)))
		if r.Intn(2) == 0 {
			key += time.Duration(r.Intn(200_000)).String()
		}
		if _, ok := d.lookup(key, now); !ok {
			d.add(key, uint64(step), now)
		}
		if step%50_000 == 0 {
			check(step)
		}
	}
	check(-1)
}
