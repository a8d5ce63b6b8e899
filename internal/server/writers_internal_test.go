package server

import "testing"

// TestWriterQueueStaysFIFOAndBounded: sessions leave the writers' queue in
// the order they joined, and a queue that is never empty does not grow
// without bound.
func TestWriterQueueStaysFIFOAndBounded(t *testing.T) {
	p := newWriterPool(1)
	all := make([]*session, 100000)
	for i := range all {
		all[i] = &session{id: uint64(i)}
	}
	in, out := 0, 0
	for i := 0; i < 10; i++ { // a backlog that never drains
		p.queue = append(p.queue, all[in])
		in++
	}
	for in < len(all) {
		p.queue = append(p.queue, all[in], all[in+1])
		in += 2
		for range 2 {
			if ss := p.popLocked(); ss != all[out] {
				t.Fatalf("popped session %d, want %d", ss.id, out)
			}
			out++
		}
		if len(p.queue) > 4096 {
			t.Fatalf("queue slice of %d for %d waiting sessions", len(p.queue), in-out)
		}
	}
	for out < in {
		if ss := p.popLocked(); ss != all[out] {
			t.Fatalf("popped session %d, want %d", ss.id, out)
		}
		out++
	}
	if len(p.queue) != 0 || p.head != 0 {
		t.Fatalf("drained queue: len %d, head %d", len(p.queue), p.head)
	}
}
