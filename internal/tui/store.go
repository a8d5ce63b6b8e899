// Package tui is the terminal UI of `pushctl sub`: a live, filterable list
// of messages with a detail pane and a publish line.
package tui

import (
	"sync"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
)

// Item is one message kept for display.
type Item struct {
	N   uint64 // position in the stream of received messages, from 1
	Msg *broker.Message
	At  time.Time // when it arrived
}

// State is the connection state shown in the header.
type State struct {
	Phase   string // connecting, live, reconnecting, resumed
	Attempt int
	Err     string
	Gap     bool // a gap was signalled since the last (re)connect
}

// Store receives messages from the network goroutine without ever
// blocking it, and keeps a bounded ring of the newest for the UI, which
// reads it at its own frame rate.
type Store struct {
	mu       sync.Mutex
	ring     []Item
	head     int
	count    int
	bytes    int
	maxItems int
	maxBytes int

	total    uint64
	totalB   uint64
	gaps     uint64
	drops    uint64
	state    State
	perSec   [64]uint64 // messages per second, by unix second mod 64
	perSecAt [64]int64
	now      func() time.Time
}

// NewStore keeps at most maxItems messages and maxBytes of their data.
func NewStore(maxItems, maxBytes int, now func() time.Time) *Store {
	if now == nil {
		now = time.Now
	}
	return &Store{ring: make([]Item, maxItems), maxItems: maxItems, maxBytes: maxBytes, now: now, state: State{Phase: "connecting"}}
}

// Add records a message. It never blocks beyond a short lock.
func (s *Store) Add(m *broker.Message) {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.total++
	s.totalB += uint64(len(m.Data))
	sec := now.Unix()
	i := sec & 63
	if s.perSecAt[i] != sec {
		s.perSecAt[i], s.perSec[i] = sec, 0
	}
	s.perSec[i]++
	for s.count > 0 && (s.count == s.maxItems || s.bytes+len(m.Data) > s.maxBytes) {
		old := &s.ring[s.head]
		s.bytes -= len(old.Msg.Data)
		*old = Item{}
		s.head = (s.head + 1) % s.maxItems
		s.count--
	}
	s.ring[(s.head+s.count)%s.maxItems] = Item{N: s.total, Msg: m, At: now}
	s.count++
	s.bytes += len(m.Data)
}

// SetState records a connection change.
func (s *Store) SetState(st State) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st.Phase == "live" || st.Phase == "resumed" {
		st.Gap = s.state.Gap && st.Phase == "resumed"
	}
	s.state = st
}

// Gap records a gap signal.
func (s *Store) Gap() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gaps++
	s.state.Gap = true
}

// Drop records messages known to be lost (ZeroMQ sequence jumps).
func (s *Store) Drop(n uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.drops += n
}

// Snapshot is what one frame shows.
type Snapshot struct {
	Items    []Item // oldest first, only those with N > after
	Oldest   uint64 // N of the oldest retained item (0 if none)
	Total    uint64
	Bytes    uint64
	Gaps     uint64
	Drops    uint64
	State    State
	Rate     float64  // messages per second over the last full second
	Spark    []uint64 // per-second counts, oldest first
	Retained int
}

// Snapshot returns items newer than after, and the counters.
func (s *Store) Snapshot(after uint64, sparkLen int) Snapshot {
	now := s.now().Unix()
	s.mu.Lock()
	defer s.mu.Unlock()
	snap := Snapshot{Total: s.total, Bytes: s.totalB, Gaps: s.gaps, Drops: s.drops, State: s.state, Retained: s.count}
	if s.count > 0 {
		snap.Oldest = s.ring[s.head].N
	}
	for i := 0; i < s.count; i++ {
		it := s.ring[(s.head+i)%s.maxItems]
		if it.N > after {
			snap.Items = append(snap.Items, it)
		}
	}
	perSec := func(sec int64) uint64 {
		if s.perSecAt[sec&63] == sec {
			return s.perSec[sec&63]
		}
		return 0
	}
	snap.Rate = float64(perSec(now - 1))
	for sec := now - int64(sparkLen); sec < now; sec++ {
		snap.Spark = append(snap.Spark, perSec(sec))
	}
	return snap
}
