// Package events defines the broker's lifecycle events (connections,
// subscriptions, presence, occupancy, optionally publishes) and the
// Emitter that decides them and publishes each once on its event channel:
// "$events.channel.<channel>" for what happens on a channel and
// "$events.connections" for connections. The event channel's log gives
// every event its sequence, so the events of one channel are numbered in
// order and a reader notices one it missed; readers (pushctl sub, the
// webhooks) take them from there or, on the deciding node, from the
// Emitter's sinks.
package events

import (
	"context"
	"encoding/json"
	"hash/maphash"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
)

// Names of the events.
const (
	ConnectionOpened = "connection_opened"
	ConnectionClosed = "connection_closed"
	Subscribed       = "subscribed"
	Unsubscribed     = "unsubscribed"
	MemberAdded      = "member_added"
	MemberRemoved    = "member_removed"
	ChannelOccupied  = "channel_occupied"
	ChannelVacated   = "channel_vacated"
	Published        = "published"
)

// Event channels. They begin with broker.ReservedPrefix: no client
// channel has such a name, only the broker publishes on them, and only a
// pattern naming "$events" reaches them.
const (
	// Root is the first segment of every event channel.
	Root = broker.ReservedPrefix + "events"
	// ChannelPrefix + a channel's name carries that channel's events.
	ChannelPrefix = Root + ".channel."
	// Connections carries connection_opened and connection_closed.
	Connections = Root + ".connections"
)

// ChannelOf is the event channel of a channel's events.
func ChannelOf(channel string) string { return ChannelPrefix + channel }

// Event is one lifecycle event, as event channels carry it (the message
// data) and webhooks send it (with Seq and Epoch, the event's position in
// its event channel).
type Event struct {
	Name string `json:"name"`
	// Channel is the channel the event is about ("" for connection events).
	Channel string `json:"channel,omitempty"`
	// UserID is who: the token's presence id or subject, the connect
	// hook's user, or a presence member's id.
	UserID string `json:"user_id,omitempty"`
	// ConnectionID names a connection on its node (connection events).
	ConnectionID string `json:"connection_id,omitempty"`
	// Transport is the connection's (websocket, sse, ndjson, raw, pusher).
	Transport string `json:"transport,omitempty"`
	// Reason is why a connection closed (the stable codes of
	// pushctl_disconnects_total: client_closed, slow_consumer, …).
	Reason string `json:"reason,omitempty"`
	// Event and MessageSeq describe a published message (published).
	Event      string `json:"event,omitempty"`
	MessageSeq uint64 `json:"message_seq,omitempty"`
	// Node is the node that decided the event.
	Node string `json:"node,omitempty"`
	// TimeMs is when it was decided (Unix milliseconds).
	TimeMs int64 `json:"time_ms"`
	// Seq and Epoch are the event's position in its event channel: one
	// more per event of that channel while the epoch stays.
	Seq   uint64 `json:"seq,omitempty"`
	Epoch string `json:"epoch,omitempty"`
}

// EventChannel is the event channel that carries ev.
func (ev *Event) EventChannel() string {
	if ev.Channel == "" {
		return Connections
	}
	return ChannelOf(ev.Channel)
}

// Message is ev as the message published on its event channel.
func (ev *Event) Message() *broker.Message {
	e := *ev
	e.Seq, e.Epoch = 0, ""
	data, _ := json.Marshal(&e)
	return &broker.Message{Channel: ev.EventChannel(), Event: ev.Name, Kind: broker.KindJSON, Data: data}
}

// FromMessage reads an event from its event channel's message.
func FromMessage(m *broker.Message) (Event, error) {
	var ev Event
	if err := json.Unmarshal(m.Data, &ev); err != nil {
		return ev, err
	}
	ev.Seq, ev.Epoch = m.Seq, m.Epoch
	return ev, nil
}

// Publisher publishes an event's message (through the door, as the
// system) and returns it stored, with its position.
type Publisher func(ctx context.Context, m *broker.Message) (*broker.Message, error)

// Config configures an Emitter.
type Config struct {
	// Node names this node in the events.
	Node string
	// Publish publishes on the event channels.
	Publish Publisher
	// Enabled says whether a channel's events are emitted (nil: all).
	Enabled func(channel string) bool
	// Connections says whether connection events are emitted.
	Connections bool
	// QueueSize bounds the events waiting to be published (default 65536);
	// more are dropped, counted and logged.
	QueueSize int
	Logger    *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Sink is told each event once it is published (with its position), in
// the order of its event channel, on the node that decided it.
type Sink func(ev Event)

// stripes order the events: those of one event channel go through one
// stripe, one at a time.
const stripes = 16

// Emitter decides events and publishes them, in order per event channel.
// On one node it decides occupancy itself; presence events come from the
// presence registry, which decides them cluster-wide.
type Emitter struct {
	cfg   Config
	seed  maphash.Seed
	sinks []Sink
	st    [stripes]stripe
	wg    sync.WaitGroup

	published, dropped, failed atomic.Uint64
	closed                     atomic.Bool
}

type stripe struct {
	mu      sync.Mutex
	q       []Event
	wake    chan struct{}
	closed  bool
	occ     map[string]int // subscriptions per channel on this node
	pending int
}

// New starts an Emitter.
func New(cfg Config) *Emitter {
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = 65536
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	e := &Emitter{cfg: cfg, seed: maphash.MakeSeed()}
	for i := range e.st {
		s := &e.st[i]
		s.wake = make(chan struct{}, 1)
		s.occ = map[string]int{}
		e.wg.Add(1)
		go e.run(s)
	}
	return e
}

// AddSink adds a consumer of the published events. Call it before use.
func (e *Emitter) AddSink(s Sink) { e.sinks = append(e.sinks, s) }

// Node is the node named in the events.
func (e *Emitter) Node() string { return e.cfg.Node }

// On reports whether channel's events are emitted.
func (e *Emitter) On(channel string) bool {
	return e != nil && (e.cfg.Enabled == nil || e.cfg.Enabled(channel))
}

// ConnectionsOn reports whether connection events are emitted.
func (e *Emitter) ConnectionsOn() bool { return e != nil && e.cfg.Connections }

func (e *Emitter) stripe(evChannel string) *stripe {
	return &e.st[maphash.String(e.seed, evChannel)%stripes]
}

// Emit queues ev (its Node and time filled in) for publishing.
func (e *Emitter) Emit(ev Event) {
	if ev.Channel == "" && !e.ConnectionsOn() || ev.Channel != "" && !e.On(ev.Channel) {
		return
	}
	s := e.stripe(ev.EventChannel())
	s.mu.Lock()
	e.enqueueLocked(s, ev)
	s.mu.Unlock()
}

// enqueueLocked queues ev on s, whose lock is held.
func (e *Emitter) enqueueLocked(s *stripe, ev Event) {
	if s.closed {
		return
	}
	ev.Node = e.cfg.Node
	if ev.TimeMs == 0 {
		ev.TimeMs = e.cfg.Now().UnixMilli()
	}
	if s.pending >= e.cfg.QueueSize/stripes+1 {
		if n := e.dropped.Add(1); n&(n-1) == 0 { // logged at 1, 2, 4, 8, …
			e.cfg.Logger.Warn("lifecycle events dropped: the broker does not take them as fast as they come", "dropped", n, "event", ev.Name)
		}
		return
	}
	s.q = append(s.q, ev)
	s.pending++
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Subscribe counts a subscription of user to channel on this node:
// subscribed, and channel_occupied when it is the channel's first.
func (e *Emitter) Subscribe(channel, user string) {
	if !e.On(channel) {
		return
	}
	s := e.stripe(ChannelOf(channel))
	s.mu.Lock()
	defer s.mu.Unlock()
	s.occ[channel]++
	if s.occ[channel] == 1 {
		e.enqueueLocked(s, Event{Name: ChannelOccupied, Channel: channel})
	}
	e.enqueueLocked(s, Event{Name: Subscribed, Channel: channel, UserID: user})
}

// Unsubscribe counts a subscription's end: unsubscribed, and
// channel_vacated when it was the channel's last.
func (e *Emitter) Unsubscribe(channel, user string) {
	if !e.On(channel) {
		return
	}
	s := e.stripe(ChannelOf(channel))
	s.mu.Lock()
	defer s.mu.Unlock()
	e.enqueueLocked(s, Event{Name: Unsubscribed, Channel: channel, UserID: user})
	if n := s.occ[channel] - 1; n > 0 {
		s.occ[channel] = n
		return
	}
	delete(s.occ, channel)
	e.enqueueLocked(s, Event{Name: ChannelVacated, Channel: channel})
}

func (e *Emitter) run(s *stripe) {
	defer e.wg.Done()
	for {
		s.mu.Lock()
		batch := s.q
		s.q = nil
		closed := s.closed
		s.mu.Unlock()
		for _, ev := range batch {
			e.publish(ev)
			s.mu.Lock()
			s.pending--
			s.mu.Unlock()
		}
		if len(batch) > 0 {
			continue
		}
		if closed {
			return
		}
		<-s.wake
	}
}

// publish publishes ev on its event channel and hands it to the sinks.
func (e *Emitter) publish(ev Event) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := e.cfg.Publish(ctx, ev.Message())
	if err != nil {
		e.failed.Add(1)
		e.cfg.Logger.Warn("lifecycle event not published", "event", ev.Name, "channel", ev.Channel, "err", err)
		return
	}
	e.published.Add(1)
	e.Published(ev, m)
}

// Published hands an event already published (by whoever decided it: the
// presence registry's scripts) to the sinks, with its position.
func (e *Emitter) Published(ev Event, m *broker.Message) {
	if m != nil {
		ev.Seq, ev.Epoch = m.Seq, m.Epoch
	}
	for _, sink := range e.sinks {
		sink(ev)
	}
}

// Counts are the Emitter's counters: events published, dropped because
// the queue was full, failed to publish.
func (e *Emitter) Counts() (published, dropped, failed uint64) {
	if e == nil {
		return 0, 0, 0
	}
	return e.published.Load(), e.dropped.Load(), e.failed.Load()
}

// Close publishes what is queued and stops.
func (e *Emitter) Close() {
	if e == nil || e.closed.Swap(true) {
		return
	}
	for i := range e.st {
		s := &e.st[i]
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
	e.wg.Wait()
}
