package server

import (
	"sync"
	"time"
)

// wheelSlots is how many groups a wheel visits in turn, one per
// interval/wheelSlots.
const wheelSlots = 16

// wheel paces the keepalives (and, for WebSockets, the silence check) of
// every asynchronous connection of one kind with one ticker instead of a
// timer each: each connection is visited once per interval. Its goroutine
// runs only while it has connections.
type wheel struct {
	interval time.Duration
	visit    func(ss *session, now time.Time)

	mu      sync.Mutex
	slots   [wheelSlots]map[*session]struct{}
	cur     int // the slot visited next
	n       int
	running bool
	batch   []*session
}

func newWheel(interval time.Duration, visit func(*session, time.Time)) *wheel {
	w := &wheel{interval: interval, visit: visit}
	for i := range w.slots {
		w.slots[i] = map[*session]struct{}{}
	}
	return w
}

// add puts ss in the slot visited last, so its first visit is about one
// interval away.
func (w *wheel) add(ss *session) {
	w.mu.Lock()
	defer w.mu.Unlock()
	ss.wheel = w
	ss.slot = (w.cur + wheelSlots - 1) % wheelSlots
	w.slots[ss.slot][ss] = struct{}{}
	w.n++
	if !w.running {
		w.running = true
		go w.run()
	}
}

func (w *wheel) remove(ss *session) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, ok := w.slots[ss.slot][ss]; ok {
		delete(w.slots[ss.slot], ss)
		w.n--
	}
}

// each calls f for every connection on the wheel.
func (w *wheel) each(f func(*session)) {
	w.mu.Lock()
	var all []*session
	for _, slot := range w.slots {
		for ss := range slot {
			all = append(all, ss)
		}
	}
	w.mu.Unlock()
	for _, ss := range all {
		f(ss)
	}
}

func (w *wheel) run() {
	t := time.NewTicker(max(w.interval/wheelSlots, time.Millisecond))
	defer t.Stop()
	for range t.C {
		w.mu.Lock()
		if w.n == 0 {
			w.running = false
			w.mu.Unlock()
			return
		}
		batch := w.batch[:0]
		for ss := range w.slots[w.cur] {
			batch = append(batch, ss)
		}
		w.cur = (w.cur + 1) % wheelSlots
		w.mu.Unlock()
		now := time.Now()
		for i, ss := range batch {
			w.visit(ss, now)
			batch[i] = nil
		}
		w.batch = batch[:0]
	}
}
