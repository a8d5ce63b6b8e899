package connrt

import "testing"

type idTask int

func (idTask) Round(*Worker) {}

// TestWriterQueueStaysFIFOAndBounded: tasks leave the writers' queue in
// the order they joined, and a queue that is never empty does not grow
// without bound. (Moved here from internal/server with the pool; the
// sessions it queued are plain tasks now.)
func TestWriterQueueStaysFIFOAndBounded(t *testing.T) {
	p := NewPool(1)
	all := make([]Task, 100000)
	for i := range all {
		all[i] = idTask(i)
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
			if task := p.popLocked(); task != all[out] {
				t.Fatalf("popped task %d, want %d", task, out)
			}
			out++
		}
		if len(p.queue) > 4096 {
			t.Fatalf("queue slice of %d for %d waiting tasks", len(p.queue), in-out)
		}
	}
	for out < in {
		if task := p.popLocked(); task != all[out] {
			t.Fatalf("popped task %d, want %d", task, out)
		}
		out++
	}
	if len(p.queue) != 0 || p.head != 0 {
		t.Fatalf("drained queue: len %d, head %d", len(p.queue), p.head)
	}
}
