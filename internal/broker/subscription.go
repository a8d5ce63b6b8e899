package broker

import (
	"context"
	"maps"
	"sync"
	"sync/atomic"
	"time"
)

var subIDs atomic.Uint64

// Subscription is a live subscription. Its queue is bounded: live
// messages beyond the bound end it with ErrSlowConsumer, so a slow
// subscriber never slows publishers or other subscribers.
type Subscription struct {
	id       uint64
	channels []string
	max      int
	maxBytes int64
	internal bool

	mu sync.Mutex
	// Where the subscription starts in each channel: the first channel
	// inline (most subscriptions name one), the others in start.
	start0Name string
	start0     Position
	start      Cursor
	buf        []Event
	// While the subscription is being set up, live events wait in held so
	// that each channel's replay comes first. after drops live messages a
	// replay already covered (or that precede the start), per channel,
	// until the first newer one.
	holding   bool
	held      []Event
	after     map[string]Position
	live      int   // live (not replayed) events in buf, and pending
	liveBytes int64 // their data
	ended     bool
	err       error
	notify    chan struct{}
	onReady   func() // replaces notify when set
	done      chan struct{}

	// Catching up, for a pattern subscription that asked for a replay on
	// a log shared by nodes (see Core.Subscribe). On Redis Cluster a
	// channel's messages published as the subscription was set up can
	// have gone where patterns are not heard, after the replay read the
	// channel or listed the channels: its first live message then comes
	// after a hole. known holds, for each channel replayed and not yet
	// heard, the head the replay read, and for each channel heard its
	// epoch (Seq heardSeq). A channel whose first live message of an
	// epoch is not the next one (the replay's head + 1, or seq 1 for a
	// channel not replayed or made anew) is read with catchUp (after:
	// the head, or the epoch's start), and its live events wait in
	// pending meanwhile (counted as live).
	catchUp      func(channel string, first, after Position, replayed bool)
	known        map[string]Position
	left         map[string]string // a channel made anew: the epoch it left
	pending      map[string][]Event
	pendingLive  int
	pendingBytes int64

	release func(*Subscription)
	onSlow  func(dropped int)
	onEnd   []func() // run once when it ends (see OnEnd)
}

func newSubscription(channels []string, max int, notify chan struct{}, release func(*Subscription), onSlow func(dropped int)) *Subscription {
	return &Subscription{
		id:       subIDs.Add(1),
		channels: channels,
		max:      max,
		notify:   notify,
		done:     make(chan struct{}),
		release:  release,
		onSlow:   onSlow,
	}
}

// Channels returns the names and patterns subscribed to.
func (s *Subscription) Channels() []string { return s.channels }

// Done is closed when the subscription ends (see Err).
func (s *Subscription) Done() <-chan struct{} { return s.done }

// Err says why the subscription ended, or nil while it is live.
func (s *Subscription) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// push queues a live event; it returns false if the subscription has
// ended or just overflowed, or does not take e (a Late message).
func (s *Subscription) push(e Event) bool {
	s.mu.Lock()
	if s.ended || e.Msg != nil && e.Msg.Late && s.catchUp == nil {
		s.mu.Unlock()
		return false
	}
	if s.after != nil && e.Msg != nil && s.covered(e.Msg) {
		s.mu.Unlock()
		return true
	}
	if s.live >= s.max || s.maxBytes > 0 && e.Msg != nil && s.liveBytes+int64(len(e.Msg.Data)) > s.maxBytes && s.live > 0 {
		dropped := len(s.buf) + len(s.held) + s.pendingLive + 1 // what was queued or waiting, and this one
		s.endLocked(ErrSlowConsumer, true)
		s.mu.Unlock()
		if s.onSlow != nil {
			s.onSlow(dropped)
		}
		return false
	}
	queued := false
	switch {
	case s.holding:
		s.held = append(s.held, e)
	case s.divertLocked(e):
	default:
		s.buf = append(s.buf, e)
		queued = true
	}
	s.live++
	if e.Msg != nil {
		s.liveBytes += int64(len(e.Msg.Data))
	}
	s.mu.Unlock()
	if queued {
		s.wake()
	}
	return true
}

// heardSeq in known marks a channel heard in the epoch it names.
const heardSeq = ^uint64(0)

// divertLocked puts a live event of a channel being caught up into
// pending, and starts catching up a channel whose first live message of
// an epoch comes after a hole (see known); it reports whether it took e.
// Called with s.mu held, e counted as live by the caller.
func (s *Subscription) divertLocked(e Event) bool {
	if s.catchUp == nil {
		return false
	}
	ch := e.channel()
	if q, ok := s.pending[ch]; ok {
		s.pending[ch] = append(q, e)
		s.pendingLive++
		if e.Msg != nil {
			s.pendingBytes += int64(len(e.Msg.Data))
		}
		return true
	}
	m := e.Msg
	if m == nil {
		// A gap notice accounts for what it names.
		s.known[ch] = Position{Epoch: e.Gap.To.Epoch, Seq: heardSeq}
		return false
	}
	st, seen := s.known[ch]
	if seen && st.Seq == heardSeq && st.Epoch == m.Epoch {
		return false
	}
	if seen && m.Epoch == s.left[ch] {
		return false // a late message of the channel it was before: as it comes
	}
	if seen && st.Epoch != m.Epoch {
		if s.left == nil {
			s.left = map[string]string{}
		}
		s.left[ch] = st.Epoch // made anew: the old one's late messages pass
	}
	s.known[ch] = Position{Epoch: m.Epoch, Seq: heardSeq}
	// The first message heard of this epoch: the replay's head + 1, or
	// the channel's first, else there was a hole.
	after, replayed := Position{Epoch: m.Epoch}, seen && st.Seq != heardSeq && st.Epoch == m.Epoch
	if replayed {
		after = st
	}
	if m.Seq <= after.Seq+1 {
		return false
	}
	if s.pending == nil {
		s.pending = map[string][]Event{}
	}
	s.pending[ch] = []Event{e}
	s.pendingLive++
	s.pendingBytes += int64(len(m.Data))
	go s.catchUp(ch, m.Position(), after, replayed)
	return true
}

// caughtUp queues what catching channel up found (evs: the messages
// before the first one heard, or a gap notice saying they could not be
// read), then the live events that waited for it, each checked again for
// a hole of its own (the channel made anew meanwhile).
func (s *Subscription) caughtUp(ch string, evs []Event) {
	s.mu.Lock()
	q, ok := s.pending[ch]
	delete(s.pending, ch)
	if !ok || s.ended {
		s.mu.Unlock()
		return
	}
	for _, e := range q {
		s.pendingLive--
		if e.Msg != nil {
			s.pendingBytes -= int64(len(e.Msg.Data))
		}
	}
	s.buf = append(s.buf, evs...)
	for i, e := range q {
		if !s.divertLocked(e) {
			s.buf = append(s.buf, e)
			continue
		}
		// Another catch-up began with e: the rest wait behind it.
		for _, w := range q[i+1:] {
			s.divertLocked(w)
		}
		break
	}
	s.mu.Unlock()
	s.wake()
}

// channel is the channel e is about.
func (e Event) channel() string {
	if e.Msg != nil {
		return e.Msg.Channel
	}
	return e.Gap.Channel
}

// covered reports whether m is at or before the position a replay of its
// channel ended at; the first message past it clears the entry. Called
// with s.mu held.
func (s *Subscription) covered(m *Message) bool {
	h, ok := s.after[m.Channel]
	if !ok {
		return false
	}
	if m.Epoch == h.Epoch && m.Seq <= h.Seq {
		return true
	}
	delete(s.after, m.Channel)
	if len(s.after) == 0 {
		s.after = nil
	}
	return false
}

// goLive ends the set-up: heads holds, for each channel replayed, the
// newest position the replay saw. Held live events that the replay
// covered are dropped, the rest follow the replay.
func (s *Subscription) goLive(heads map[string]Position) {
	s.mu.Lock()
	if s.catchUp != nil {
		s.known = maps.Clone(heads)
		if s.known == nil {
			s.known = map[string]Position{}
		}
	}
	for ch, h := range heads {
		if h.Seq == 0 {
			delete(heads, ch) // nothing to cover: no message has seq 0
		}
	}
	if len(heads) > 0 {
		s.after = heads
	}
	held := s.held
	s.holding, s.held = false, nil
	if !s.ended {
		for _, e := range held {
			if e.Msg != nil && s.after != nil && s.covered(e.Msg) {
				s.live--
				s.liveBytes -= int64(len(e.Msg.Data))
				continue
			}
			if !s.divertLocked(e) {
				s.buf = append(s.buf, e)
			}
		}
	}
	s.mu.Unlock()
	s.wake()
}

func (s *Subscription) wake() {
	if s.onReady != nil {
		s.onReady()
		return
	}
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// replay records where the subscription starts in channel and queues
// its history; history does not count against the live bound.
func (s *Subscription) replay(channel string, start Position, evs ...Event) {
	s.mu.Lock()
	switch {
	case s.start0Name == "" || s.start0Name == channel:
		s.start0Name, s.start0 = channel, start
	default:
		if s.start == nil {
			s.start = Cursor{}
		}
		s.start[channel] = start
	}
	if !s.ended {
		s.buf = mergeByTime(s.buf, evs)
	}
	s.mu.Unlock()
	if len(evs) > 0 {
		s.wake()
	}
}

// Start returns, for each concrete channel attached so far, the position
// the subscription's stream starts after: a client that has received
// nothing yet resumes from there without loss.
func (s *Subscription) Start() Cursor {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := make(Cursor, len(s.start)+1)
	if s.start0Name != "" {
		c[s.start0Name] = s.start0
	}
	for k, v := range s.start {
		c[k] = v
	}
	return c
}

// end finishes the subscription with err. Queued events are dropped when
// drop is set, otherwise still handed out by Next before err.
func (s *Subscription) end(err error, drop bool) {
	s.mu.Lock()
	s.endLocked(err, drop)
	s.mu.Unlock()
}

func (s *Subscription) endLocked(err error, drop bool) {
	if s.ended {
		return
	}
	s.ended = true
	s.err = err
	if drop {
		s.buf = nil
		s.live, s.liveBytes = 0, 0
	} else {
		s.buf = append(s.buf, s.held...)
	}
	s.holding, s.held = false, nil
	// Live events of a channel still being caught up are not handed
	// out: what precedes them is not known, and a client resuming from
	// them would skip it.
	s.pending, s.pendingLive, s.pendingBytes = nil, 0, 0
	close(s.done)
	s.wake()
	for _, f := range s.onEnd {
		f()
	}
	s.onEnd = nil
}

// OnEnd has f called once the subscription ends, however it ends (at
// once when it has). f must not block, nor use the subscription.
func (s *Subscription) OnEnd(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		f()
		return
	}
	s.onEnd = append(s.onEnd, f)
}

// TryNext returns every queued event without waiting, reusing dst's
// storage (pass the previous batch once done with it). With nothing queued
// it returns nil, and the reason once the subscription has ended.
func (s *Subscription) TryNext(dst []Event) ([]Event, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.buf) > 0 {
		out := s.buf
		s.buf = dst[:0]
		s.live, s.liveBytes = s.pendingLive, s.pendingBytes
		return out, nil
	}
	if s.ended {
		return nil, s.err
	}
	return nil, nil
}

// Ready is signalled when events may be queued or the subscription ended.
// With SubscribeOptions.Notify it is that shared channel; with OnReady it
// is nil.
func (s *Subscription) Ready() <-chan struct{} { return s.notify }

// Next waits for queued events and returns all of them (see TryNext). It
// returns the reason once the subscription has ended and its queue is
// drained, or ctx's error.
func (s *Subscription) Next(ctx context.Context, dst []Event) ([]Event, error) {
	for {
		evs, err := s.TryNext(dst)
		if evs != nil || err != nil {
			return evs, err
		}
		select {
		case <-s.notify:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Close ends the subscription and unregisters it. Safe to call more than
// once and from any goroutine.
func (s *Subscription) Close() {
	s.end(context.Canceled, true)
	if r := s.release; r != nil {
		r(s)
	}
}

// mergeByTime merges a channel's replayed events into what is queued so
// that a subscription to several channels replays them in publish order.
// Each side keeps its own order, so every channel stays in sequence; a
// gap notice sorts with the message after it.
func mergeByTime(buf, evs []Event) []Event {
	if len(buf) == 0 || len(evs) == 0 {
		return append(buf, evs...)
	}
	if !eventTime(evs, 0).Before(eventTime(buf, len(buf)-1)) {
		return append(buf, evs...) // already in order: the common case
	}
	out := make([]Event, 0, len(buf)+len(evs))
	i, j := 0, 0
	for i < len(buf) && j < len(evs) {
		if eventTime(evs, j).Before(eventTime(buf, i)) {
			out = append(out, evs[j])
			j++
		} else {
			out = append(out, buf[i])
			i++
		}
	}
	out = append(out, buf[i:]...)
	return append(out, evs[j:]...)
}

// eventTime is the publish time of evs[i], or for a gap that of the next
// message in evs (the zero time when there is none).
func eventTime(evs []Event, i int) time.Time {
	for ; i < len(evs); i++ {
		if evs[i].Msg != nil {
			return evs[i].Msg.Time
		}
	}
	return time.Time{}
}
