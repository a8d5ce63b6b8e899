package connrt

import (
	"sync"
	"time"
)

// wheelSlots is how many groups a wheel visits in turn, one per
// interval/wheelSlots.
const wheelSlots = 16

// WheelPos is where a connection is on its wheel; a connection type
// embeds one and returns it from WheelPos.
type WheelPos struct{ slot int }

// Wheeled is a connection a Wheel can hold.
type Wheeled interface {
	comparable
	WheelPos() *WheelPos
}

// Wheel paces the keepalives (and, for WebSockets, the silence check) of
// every asynchronous connection of one kind with one ticker instead of a
// timer each: each connection is visited once per interval. Its goroutine
// runs only while it has connections.
type Wheel[T Wheeled] struct {
	interval time.Duration
	visit    func(c T, now time.Time)

	mu      sync.Mutex
	slots   [wheelSlots]map[T]struct{}
	cur     int // the slot visited next
	n       int
	running bool
	batch   []T
}

// NewWheel returns a wheel that calls visit for each connection once per
// interval.
func NewWheel[T Wheeled](interval time.Duration, visit func(T, time.Time)) *Wheel[T] {
	w := &Wheel[T]{interval: interval, visit: visit}
	for i := range w.slots {
		w.slots[i] = map[T]struct{}{}
	}
	return w
}

// Add puts c in the slot visited last, so its first visit is about one
// interval away.
func (w *Wheel[T]) Add(c T) {
	w.mu.Lock()
	defer w.mu.Unlock()
	pos := c.WheelPos()
	pos.slot = (w.cur + wheelSlots - 1) % wheelSlots
	w.slots[pos.slot][c] = struct{}{}
	w.n++
	if !w.running {
		w.running = true
		go w.run()
	}
}

// Remove takes c off the wheel.
func (w *Wheel[T]) Remove(c T) {
	w.mu.Lock()
	defer w.mu.Unlock()
	slot := c.WheelPos().slot
	if _, ok := w.slots[slot][c]; ok {
		delete(w.slots[slot], c)
		w.n--
	}
}

// Each calls f for every connection on the wheel.
func (w *Wheel[T]) Each(f func(T)) {
	w.mu.Lock()
	var all []T
	for _, slot := range w.slots {
		for c := range slot {
			all = append(all, c)
		}
	}
	w.mu.Unlock()
	for _, c := range all {
		f(c)
	}
}

func (w *Wheel[T]) run() {
	t := time.NewTicker(max(w.interval/wheelSlots, time.Millisecond))
	defer t.Stop()
	var zero T
	for range t.C {
		w.mu.Lock()
		if w.n == 0 {
			w.running = false
			w.mu.Unlock()
			return
		}
		batch := w.batch[:0]
		for c := range w.slots[w.cur] {
			batch = append(batch, c)
		}
		w.cur = (w.cur + 1) % wheelSlots
		w.mu.Unlock()
		now := time.Now()
		for i, c := range batch {
			w.visit(c, now)
			batch[i] = zero
		}
		w.batch = batch[:0]
	}
}
