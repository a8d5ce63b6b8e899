package broker

import (
	"context"
	"sync"
	"sync/atomic"
)

// Hub is a node's local fan-out: the subscriptions of this process, by
// channel and pattern, each with its bounded queue. It knows nothing of
// where history lives; a Log hands it committed messages (Deliver) in
// each channel's sequence order.
type Hub struct {
	mu       sync.RWMutex
	chans    map[string]*hubChannel // channels with subscribers or waiters
	subs     map[*Subscription]*hubSub
	patterns map[*Subscription][]string // subscriptions with patterns
	closed   bool

	delivered     atomic.Uint64
	slowConsumers atomic.Uint64
	dropped       atomic.Uint64
}

// hubSub is the hub's bookkeeping for one subscription; guarded by Hub.mu.
type hubSub struct {
	names    []string
	patterns []string
	attached map[*hubChannel]struct{}
	// counted: the subscription is live and not internal. One being set
	// up receives (held) messages but is not counted yet, so a publisher
	// waiting for subscribers never publishes into its set-up.
	counted bool
}

// hubChannel is one channel's local subscribers: those that named it and
// the pattern subscriptions that match it.
type hubChannel struct {
	name string

	mu        sync.Mutex
	subs      map[*Subscription]struct{}
	uncounted int           // subs not counted: internal, or being set up
	waiters   int           // WaitSubscribers calls keeping the entry
	changed   chan struct{} // closed when subs changes (made for a waiter)
	dead      bool          // removed from Hub.chans; look it up again
}

// NewHub returns an empty hub.
func NewHub() *Hub {
	return &Hub{
		chans:    make(map[string]*hubChannel),
		subs:     make(map[*Subscription]*hubSub),
		patterns: make(map[*Subscription][]string),
	}
}

// entryLocked returns the channel's entry, creating it (with the matching
// pattern subscriptions attached) when create is set. Called with h.mu
// held for writing.
func (h *Hub) entryLocked(name string, create bool) *hubChannel {
	if ch, ok := h.chans[name]; ok || !create {
		return ch
	}
	ch := &hubChannel{name: name, subs: make(map[*Subscription]struct{}, 1)}
	for s, pats := range h.patterns {
		if matchAny(pats, name) {
			hs := h.subs[s]
			ch.add(s, hs.counted)
			hs.attached[ch] = struct{}{}
		}
	}
	h.chans[name] = ch
	return ch
}

func matchAny(pats []string, name string) bool {
	for _, p := range pats {
		if Match(p, name) {
			return true
		}
	}
	return false
}

// add registers s for its names and patterns. Live messages reach it from
// now on (held while it is being set up).
func (h *Hub) add(s *Subscription, names, pats []string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return ErrClosed
	}
	hs := &hubSub{names: names, patterns: pats, attached: make(map[*hubChannel]struct{})}
	h.subs[s] = hs
	for _, name := range names {
		ch := h.entryLocked(name, true)
		ch.mu.Lock()
		ch.add(s, false)
		ch.mu.Unlock()
		hs.attached[ch] = struct{}{}
	}
	if len(pats) > 0 {
		h.patterns[s] = pats
		for name, ch := range h.chans {
			if _, ok := hs.attached[ch]; !ok && matchAny(pats, name) {
				ch.mu.Lock()
				ch.add(s, false)
				ch.mu.Unlock()
				hs.attached[ch] = struct{}{}
			}
		}
	}
	return nil
}

// remove unregisters s from every channel.
func (h *Hub) remove(s *Subscription) {
	h.mu.Lock()
	defer h.mu.Unlock()
	hs, ok := h.subs[s]
	if !ok {
		return
	}
	delete(h.subs, s)
	delete(h.patterns, s)
	for ch := range hs.attached {
		ch.mu.Lock()
		ch.remove(s, hs.counted)
		h.dropIfIdleLocked(ch)
		ch.mu.Unlock()
	}
}

// count makes s, now live, count as a subscriber (unless internal).
func (h *Hub) count(s *Subscription) {
	if s.internal {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	hs, ok := h.subs[s]
	if !ok || hs.counted {
		return
	}
	hs.counted = true
	for ch := range hs.attached {
		ch.mu.Lock()
		ch.uncounted--
		ch.notifyChanged()
		ch.mu.Unlock()
	}
}

// dropIfIdleLocked forgets an entry nobody uses. Called with h.mu held
// for writing and ch.mu held.
func (h *Hub) dropIfIdleLocked(ch *hubChannel) {
	if len(ch.subs) == 0 && ch.waiters == 0 && !ch.dead {
		ch.dead = true
		delete(h.chans, ch.name)
		ch.notifyChanged()
	}
}

func (ch *hubChannel) add(s *Subscription, counted bool) {
	ch.subs[s] = struct{}{}
	if !counted {
		ch.uncounted++
	}
	ch.notifyChanged()
}

func (ch *hubChannel) remove(s *Subscription, counted bool) {
	if _, ok := ch.subs[s]; !ok {
		return
	}
	delete(ch.subs, s)
	if !counted {
		ch.uncounted--
	}
	ch.notifyChanged()
}

func (ch *hubChannel) notifyChanged() {
	if ch.changed != nil {
		close(ch.changed)
		ch.changed = nil
	}
}

// subscribers counts the counted subscriptions.
func (ch *hubChannel) subscribers() int { return len(ch.subs) - ch.uncounted }

// lookup finds the live entry for name, creating one when a pattern
// subscription matches it. It returns nil when nobody here wants name.
func (h *Hub) lookup(name string) *hubChannel {
	h.mu.RLock()
	ch, ok := h.chans[name]
	pats := len(h.patterns)
	h.mu.RUnlock()
	if ok || pats == 0 {
		return ch
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if ch, ok := h.chans[name]; ok {
		return ch
	}
	for _, p := range h.patterns {
		if matchAny(p, name) {
			return h.entryLocked(name, true)
		}
	}
	return nil
}

// Deliver hands a committed message to the local subscriptions of its
// channel and returns how many counted subscribers took it. Calls for one
// channel must come in sequence order.
func (h *Hub) Deliver(m *Message) int {
	for {
		ch := h.lookup(m.Channel)
		if ch == nil {
			return 0
		}
		ch.mu.Lock()
		if ch.dead {
			ch.mu.Unlock()
			continue
		}
		n := 0
		for s := range ch.subs {
			if s.push(Event{Msg: m}) && !s.internal {
				n++
			}
		}
		ch.mu.Unlock()
		h.delivered.Add(uint64(n))
		return n
	}
}

// Gap tells the channel's local subscribers that messages after g.From
// are lost.
func (h *Hub) Gap(g Gap) {
	ch := h.lookup(g.Channel)
	if ch == nil {
		return
	}
	ch.mu.Lock()
	defer ch.mu.Unlock()
	for s := range ch.subs {
		s.push(Event{Gap: &g})
	}
}

// Deleted ends the local subscriptions that named channel; pattern
// subscriptions stay and see the channel again if it comes back.
func (h *Hub) Deleted(channel string) {
	h.mu.Lock()
	ch, ok := h.chans[channel]
	if !ok {
		h.mu.Unlock()
		return
	}
	delete(h.chans, channel)
	ch.mu.Lock()
	ch.dead = true
	subs := ch.subs
	ch.subs = map[*Subscription]struct{}{}
	ch.uncounted = 0
	ch.notifyChanged() // waiters look the channel up again
	ch.mu.Unlock()
	var end []*Subscription
	for s := range subs {
		hs := h.subs[s]
		if hs == nil {
			continue
		}
		delete(hs.attached, ch)
		if hasName(hs.names, channel) {
			end = append(end, s)
		}
	}
	h.mu.Unlock()
	for _, s := range end {
		s.end(ErrChannelDeleted, false)
	}
}

func hasName(list []string, name string) bool {
	for _, n := range list {
		if n == name {
			return true
		}
	}
	return false
}

// Subscribers counts the local, counted subscribers of channel (pattern
// subscriptions that match it included).
func (h *Hub) Subscribers(channel string) int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	if ch, ok := h.chans[channel]; ok {
		ch.mu.Lock()
		defer ch.mu.Unlock()
		return ch.subscribers()
	}
	n := 0
	for s, pats := range h.patterns {
		if h.subs[s].counted && matchAny(pats, channel) {
			n++
		}
	}
	return n
}

// watch returns channel's local subscriber count, a channel closed at its
// next change, and a release the caller must call when done waiting.
func (h *Hub) watch(channel string) (count int, changed <-chan struct{}, release func()) {
	h.mu.Lock()
	ch := h.entryLocked(channel, true)
	ch.mu.Lock()
	ch.waiters++
	if ch.changed == nil {
		ch.changed = make(chan struct{})
	}
	count, changed = ch.subscribers(), ch.changed
	ch.mu.Unlock()
	h.mu.Unlock()
	return count, changed, func() {
		h.mu.Lock()
		ch.mu.Lock()
		ch.waiters--
		h.dropIfIdleLocked(ch)
		ch.mu.Unlock()
		h.mu.Unlock()
	}
}

// WaitSubscribers blocks until channel has at least n local counted
// subscribers or ctx ends.
func (h *Hub) WaitSubscribers(ctx context.Context, channel string, n int) error {
	for {
		count, changed, release := h.watch(channel)
		if count >= n {
			release()
			return nil
		}
		select {
		case <-changed:
			release()
		case <-ctx.Done():
			release()
			return ctx.Err()
		}
	}
}

// Total counts the local counted subscriptions.
func (h *Hub) Total() (total int) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	for _, hs := range h.subs {
		if hs.counted {
			total++
		}
	}
	return total
}

// Close ends every subscription with ErrClosed; later ones are refused.
func (h *Hub) Close() {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return
	}
	h.closed = true
	subs := make([]*Subscription, 0, len(h.subs))
	for s := range h.subs {
		subs = append(subs, s)
	}
	h.mu.Unlock()
	for _, s := range subs {
		s.end(ErrClosed, false)
	}
}
