package consumer

import (
	"math/rand/v2"
	"testing"
)

// TestTableIsAMap drives the table and a map with the same puts and
// deletes (in order, out of order, and with entries held back while many
// after them come and go) and compares them after every step, and checks
// that the window stays proportional to what it holds.
func TestTableIsAMap(t *testing.T) {
	for _, mode := range []string{"in order", "shuffled", "stragglers"} {
		t.Run(mode, func(t *testing.T) {
			r := rand.New(rand.NewPCG(1, uint64(len(mode))))
			var tb table
			model := map[uint64]*entry{}
			next := uint64(1)
			var live []uint64
			check := func() {
				t.Helper()
				if tb.len() != len(model) {
					t.Fatalf("len %d, want %d", tb.len(), len(model))
				}
				for seq, e := range model {
					if tb.get(seq) != e {
						t.Fatalf("get(%d) is not what was put", seq)
					}
				}
				n := 0
				tb.each(func(e *entry) {
					n++
					if model[e.seq] != e {
						t.Fatalf("each gave %d, not held", e.seq)
					}
				})
				if n != len(model) {
					t.Fatalf("each gave %d entries, want %d", n, len(model))
				}
				if w := len(tb.slots) - tb.head; w > 4*(tb.n-len(tb.old))+4096+1 {
					t.Fatalf("window of %d slots for %d entries", w, tb.n-len(tb.old))
				}
			}
			for step := 0; step < 60000; step++ {
				if len(live) < 50 || r.IntN(2) == 0 {
					e := &entry{seq: next}
					next++
					tb.put(e)
					model[e.seq] = e
					live = append(live, e.seq)
				} else {
					var i int
					switch mode {
					case "in order":
						i = 0
					case "shuffled":
						i = r.IntN(len(live))
					case "stragglers":
						// Every tenth seq is kept a long time.
						i = r.IntN(len(live))
						if live[i]%10 == 0 && r.IntN(200) != 0 {
							i = len(live) - 1
						}
					}
					seq := live[i]
					live = append(live[:i], live[i+1:]...)
					tb.del(seq)
					delete(model, seq)
					if tb.get(seq) != nil {
						t.Fatalf("get(%d) after del", seq)
					}
				}
				if step%997 == 0 {
					check()
				}
			}
			check()
			// Gets of seqs never stored, far before and after.
			if tb.get(0) != nil || tb.get(next) != nil || tb.get(next+1<<40) != nil {
				t.Fatal("get of a seq never stored")
			}
			for _, seq := range live {
				tb.del(seq)
			}
			if tb.len() != 0 || len(tb.old) != 0 {
				t.Fatalf("%d left after deleting all", tb.len())
			}
		})
	}
}

// TestTableLoadsInAnyOrder: a store gives entries back in seq order, but
// a table must hold them whatever the order.
func TestTableLoadsInAnyOrder(t *testing.T) {
	var tb table
	seqs := []uint64{500, 3, 9000, 4, 501, 1}
	for _, s := range seqs {
		tb.put(&entry{seq: s})
	}
	for _, s := range seqs {
		if e := tb.get(s); e == nil || e.seq != s {
			t.Fatalf("get(%d) = %v", s, e)
		}
	}
	if tb.len() != len(seqs) || tb.get(2) != nil || tb.get(502) != nil {
		t.Fatalf("len %d", tb.len())
	}

	// Entries far apart (a long run acknowledged between them) do not
	// make the window span the distance.
	far := uint64(1) << 40
	tb.put(&entry{seq: far})
	tb.put(&entry{seq: far + 2})
	if cap(tb.slots) > 1<<16 {
		t.Fatalf("%d slots for %d entries", cap(tb.slots), tb.len())
	}
	for _, s := range append(seqs, far, far+2) {
		if e := tb.get(s); e == nil || e.seq != s {
			t.Fatalf("get(%d) = %v after a far put", s, e)
		}
	}
}

// TestTableGivesBackABurstsMemory: once a burst of entries is gone, the
// window's memory is too.
func TestTableGivesBackABurstsMemory(t *testing.T) {
	var tb table
	for s := uint64(1); s <= 200000; s++ {
		tb.put(&entry{seq: s})
	}
	for s := uint64(1); s < 200000; s++ {
		if s != 150000 {
			tb.del(s)
		}
	}
	if c := cap(tb.slots); c > 1<<14 || tb.len() != 2 {
		t.Fatalf("%d slots kept for %d entries", c, tb.len())
	}
	tb.del(150000)
	tb.del(200000)
	tb.put(&entry{seq: 200001})
	if c := cap(tb.slots); c > 1<<14 || tb.len() != 1 || tb.get(200001) == nil {
		t.Fatalf("%d slots, %d entries after the burst", c, tb.len())
	}
}
