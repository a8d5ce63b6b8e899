package broker

import (
	"context"
	"sync"
	"sync/atomic"
)

var subIDs atomic.Uint64

// Subscription is a live subscription. Its queue is bounded: live
// messages beyond the bound end it with ErrSlowConsumer, so a slow
// subscriber never slows publishers or other subscribers.
type Subscription struct {
	id       uint64
	channels []string
	max      int

	mu     sync.Mutex
	buf    []Event
	live   int // live (not replayed) events in buf
	ended  bool
	err    error
	notify chan struct{}
	done   chan struct{}

	release func(*Subscription)
	onSlow  func()
}

func newSubscription(channels []string, max int, release func(*Subscription), onSlow func()) *Subscription {
	return &Subscription{
		id:       subIDs.Add(1),
		channels: channels,
		max:      max,
		notify:   make(chan struct{}, 1),
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
// ended or just overflowed.
func (s *Subscription) push(e Event) bool {
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return false
	}
	if s.live >= s.max {
		s.endLocked(ErrSlowConsumer, true)
		s.mu.Unlock()
		if s.onSlow != nil {
			s.onSlow()
		}
		return false
	}
	s.buf = append(s.buf, e)
	s.live++
	s.mu.Unlock()
	select {
	case s.notify <- struct{}{}:
	default:
	}
	return true
}

// replay queues history; it does not count against the live bound.
func (s *Subscription) replay(evs ...Event) {
	s.mu.Lock()
	if !s.ended {
		s.buf = append(s.buf, evs...)
	}
	s.mu.Unlock()
	select {
	case s.notify <- struct{}{}:
	default:
	}
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
		s.live = 0
	}
	close(s.done)
}

// Next waits for queued events and returns all of them, reusing dst's
// storage. It returns the reason once the subscription has ended and its
// queue is drained, or ctx's error.
func (s *Subscription) Next(ctx context.Context, dst []Event) ([]Event, error) {
	for {
		s.mu.Lock()
		if len(s.buf) > 0 {
			out := s.buf
			s.buf = dst[:0]
			s.live = 0
			s.mu.Unlock()
			return out, nil
		}
		if s.ended {
			err := s.err
			s.mu.Unlock()
			return nil, err
		}
		s.mu.Unlock()
		select {
		case <-s.notify:
		case <-s.done:
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
