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
	"slices"
	"strconv"
	"strings"
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
	// ReapedBy is the node that told the event for Node, found dead
	// (the events of its connections, subscriptions and channels).
	ReapedBy string `json:"reaped_by,omitempty"`
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

// Publisher starts publishing an event's message (through the door, as
// the system; pipelined where the broker can) and returns what waits for
// it, stored with its position.
type Publisher func(ctx context.Context, m *broker.Message) (wait func() (*broker.Message, error), err error)

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
	// Shared, when nodes share the log (Redis), decides occupancy for the
	// cluster and keeps what the other nodes need to tell this node's
	// events should it die.
	Shared broker.LifecycleLog
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
	sinks atomic.Pointer[[]Sink]
	st    [stripes]stripe
	wg    sync.WaitGroup

	published, dropped, failed atomic.Uint64
	closed                     atomic.Bool
	ids                        atomic.Uint64
	queued                     atomic.Int64 // items queued in every stripe
}

type stripe struct {
	mu     sync.Mutex
	q      []item
	wake   chan struct{}
	closed bool
	occ    map[string]int // subscriptions per channel on this node
	// holding: shared, the channels whose hold is queued and not yet
	// recorded, closed once it is (see Held).
	holding map[string]chan struct{}
	// live: shared, this node's subscriptions and connections (of the
	// stripe's event channels) as recorded for the others, by kind and
	// key, recorded again when the node comes back from being taken for
	// dead.
	live map[string]item
	// retry: shared, this node's ends and holds that failed (Redis
	// down, or too slow), tried again after backoff, in order, with the
	// releases of their channels' holds put off until they are done (so
	// that a channel stays listed for a reaper while a record of it is
	// left).
	// Only the stripe's goroutine uses them.
	retry   []item
	backoff time.Duration
	retryAt time.Time
	// pub is held while an event is published and handed to the sinks,
	// so that they see the stripe's events in the order of their
	// sequences, the dead nodes' (told by lost) included.
	pub sync.Mutex
}

// What a queued item does.
const (
	opPublish = iota // publish ev
	opHold           // shared: hold the channel, ev (occupied) if first
	opRelease        // shared: release it, ev (vacated) if last
	opRecord         // shared: record kind/key/info and publish ev, one step
	opEnd            // shared: end kind/key and publish ev, one step
)

type item struct {
	op              int
	ev              Event
	kind, key, info string
	done            chan struct{} // opHold: closed once recorded
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
		s.holding = map[string]chan struct{}{}
		s.live = map[string]item{}
		e.wg.Add(1)
		go e.run(s)
	}
	if cfg.Shared != nil {
		cfg.Shared.WatchLifecycle(e.lost, e.rejoin)
	}
	return e
}

// AddSink adds a consumer of the published events.
func (e *Emitter) AddSink(s Sink) {
	for {
		old := e.sinks.Load()
		var next []Sink
		if old != nil {
			next = append(next, *old...)
		}
		next = append(next, s)
		if e.sinks.CompareAndSwap(old, &next) {
			return
		}
	}
}

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
func (e *Emitter) enqueueLocked(s *stripe, ev Event) { e.queueLocked(s, item{op: opPublish, ev: ev}) }

// queueLocked queues it on s, whose lock is held, and reports whether it
// did.
func (e *Emitter) queueLocked(s *stripe, it item) bool {
	if s.closed {
		return false
	}
	ev := &it.ev
	ev.Node = e.cfg.Node
	if ev.TimeMs == 0 {
		ev.TimeMs = e.cfg.Now().UnixMilli()
	}
	// Over the bound, publishes and records (with their events) are
	// dropped; not ends, which would leave records behind (a record
	// dropped makes its end find nothing: neither event is told).
	if e.queued.Load() >= int64(e.cfg.QueueSize) && (it.op == opPublish || it.op == opRecord) {
		if n := e.dropped.Add(1); n&(n-1) == 0 { // logged at 1, 2, 4, 8, …
			e.cfg.Logger.Warn("lifecycle events dropped: the broker does not take them as fast as they come", "dropped", n, "event", ev.Name)
		}
		if it.op == opRecord {
			delete(s.live, it.kind+":"+it.key)
		}
		return false
	}
	s.q = append(s.q, it)
	e.queued.Add(1)
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return true
}

// holdLocked queues the shared hold of ev's channel on s, whose lock is
// held; Held waits for it.
func (e *Emitter) holdLocked(s *stripe, ev Event) {
	if s.closed {
		return
	}
	done := make(chan struct{})
	s.holding[ev.Channel] = done
	e.queueLocked(s, item{op: opHold, ev: ev, done: done})
}

// tracked is what a node keeps of a subscription or connection in the
// shared log, for the others to tell its end.
type tracked struct {
	Channel   string `json:"channel,omitempty"`
	User      string `json:"user_id,omitempty"`
	Transport string `json:"transport,omitempty"`
}

// Subscribe counts a subscription of user to channel on this node:
// subscribed, and channel_occupied when it is the channel's first (on
// this node, or, shared, anywhere). It returns what Unsubscribe takes.
func (e *Emitter) Subscribe(channel, user string) uint64 {
	if !e.On(channel) {
		return 0
	}
	id := e.ids.Add(1)
	s := e.stripe(ChannelOf(channel))
	s.mu.Lock()
	defer s.mu.Unlock()
	s.occ[channel]++
	first := s.occ[channel] == 1
	occupied := Event{Name: ChannelOccupied, Channel: channel}
	switch {
	case first && e.cfg.Shared != nil:
		e.holdLocked(s, occupied)
	case first:
		e.enqueueLocked(s, occupied)
	}
	ev := Event{Name: Subscribed, Channel: channel, UserID: user}
	if e.cfg.Shared != nil {
		info, _ := json.Marshal(tracked{Channel: channel, User: user})
		e.recordLocked(s, "s", strconv.FormatUint(id, 10), string(info), ev)
		return id
	}
	e.enqueueLocked(s, ev)
	return id
}

// Unsubscribe counts a subscription's end: unsubscribed, and
// channel_vacated when it was the channel's last.
func (e *Emitter) Unsubscribe(channel, user string, id uint64) {
	if !e.On(channel) {
		return
	}
	s := e.stripe(ChannelOf(channel))
	s.mu.Lock()
	defer s.mu.Unlock()
	ev := Event{Name: Unsubscribed, Channel: channel, UserID: user}
	if e.cfg.Shared != nil {
		e.endLocked(s, "s", strconv.FormatUint(id, 10), ev)
	} else {
		e.enqueueLocked(s, ev)
	}
	if n := s.occ[channel] - 1; n > 0 {
		s.occ[channel] = n
		return
	}
	delete(s.occ, channel)
	vacated := Event{Name: ChannelVacated, Channel: channel}
	if e.cfg.Shared != nil {
		e.queueLocked(s, item{op: opRelease, ev: vacated})
		return
	}
	e.enqueueLocked(s, vacated)
}

// Connection emits a connection's opened or closed event (and, shared,
// keeps it for the others to close should this node die).
func (e *Emitter) Connection(ev Event) {
	if !e.ConnectionsOn() {
		return
	}
	s := e.stripe(Connections)
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case e.cfg.Shared == nil:
		e.enqueueLocked(s, ev)
	case ev.Name == ConnectionOpened:
		info, _ := json.Marshal(tracked{User: ev.UserID, Transport: ev.Transport})
		e.recordLocked(s, "c", ev.ConnectionID, string(info), ev)
	default:
		e.endLocked(s, "c", ev.ConnectionID, ev)
	}
}

// recordLocked queues the record of kind/key in the shared log with its
// event ev (subscribed, connection_opened), and keeps it in live; s's
// lock held.
func (e *Emitter) recordLocked(s *stripe, kind, key, info string, ev Event) {
	it := item{op: opRecord, ev: ev, kind: kind, key: key, info: info}
	s.live[kind+":"+key] = it
	e.queueLocked(s, it)
}

// endLocked queues the end of kind/key with its event ev (unsubscribed,
// connection_closed); s's lock held.
func (e *Emitter) endLocked(s *stripe, kind, key string, ev Event) {
	delete(s.live, kind+":"+key)
	e.queueLocked(s, item{op: opEnd, ev: ev, kind: kind, key: key})
}

func (e *Emitter) run(s *stripe) {
	defer e.wg.Done()
	for {
		s.mu.Lock()
		batch := s.q
		s.q = nil
		closed := s.closed
		s.mu.Unlock()
		if len(batch) > 0 {
			e.doBatch(s, batch)
			e.queued.Add(-int64(len(batch)))
		}
		if len(s.retry) > 0 && !time.Now().Before(s.retryAt) {
			e.retryFailed(s)
		}
		if len(batch) > 0 {
			continue
		}
		if closed {
			return
		}
		if len(s.retry) == 0 {
			<-s.wake
			continue
		}
		t := time.NewTimer(time.Until(s.retryAt))
		select {
		case <-s.wake:
		case <-t.C:
		}
		t.Stop()
	}
}

// Backoff between tries of the failed ends.
const (
	retryFirst = 100 * time.Millisecond
	retryMax   = 5 * time.Second
)

// failedLocked keeps it (an end, a hold, or a release behind one) for
// another try; s.pub held.
func (e *Emitter) failedLocked(s *stripe, it item, err error) {
	if len(s.retry) == 0 {
		s.backoff = retryFirst
		s.retryAt = time.Now().Add(s.backoff)
	}
	s.retry = append(s.retry, it)
	if err != nil {
		e.cfg.Logger.Warn("lifecycle: end not recorded, tried again", "event", it.ev.Name, "channel", it.ev.Channel, "err", err)
	}
}

// endPending reports whether an end of channel's subscriptions, or its
// hold, waits for another try; s.pub held.
func endPending(s *stripe, channel string) bool {
	for _, it := range s.retry {
		if (it.op == opEnd && it.kind == "s" || it.op == opHold) && it.ev.Channel == channel {
			return true
		}
	}
	return false
}

// retryFailed tries the failed ends and holds again, in order, and the
// releases put off behind them.
func (e *Emitter) retryFailed(s *stripe) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s.pub.Lock()
	defer s.pub.Unlock()
	items := s.retry
	s.retry = nil
	for _, it := range items {
		switch it.op {
		case opEnd:
			wait, err := e.startRecord(ctx, "", it.kind, it.key, it.info, false, it.ev)
			var m *broker.Message
			if err == nil {
				m, err = wait()
			}
			if err != nil {
				s.retry = append(s.retry, it)
				continue
			}
			if m != nil {
				e.published1(it.ev, m, nil)
			}
		case opHold:
			if err := e.occupyLocked(ctx, "", true, it.ev); err != nil {
				s.retry = append(s.retry, it)
			}
		case opRelease:
			if endPending(s, it.ev.Channel) {
				s.retry = append(s.retry, it)
				continue
			}
			if err := e.occupyLocked(ctx, "", false, it.ev); err != nil {
				s.retry = append(s.retry, it)
			}
		}
	}
	if len(s.retry) > 0 {
		e.cfg.Logger.Warn("lifecycle: ends still not recorded, tried again later", "ends", len(s.retry), "in", s.backoff)
		s.backoff = min(2*s.backoff, retryMax)
		s.retryAt = time.Now().Add(s.backoff)
	}
}

// doBatch does queued items in order: the publishes and the shared
// log's records pipelined (started one after the other, then waited for
// in order), an occupancy change after the items before it.
func (e *Emitter) doBatch(s *stripe, batch []item) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s.pub.Lock()
	defer s.pub.Unlock()
	type started struct {
		it   item
		wait func() (*broker.Message, error)
	}
	var inflight []started
	flush := func() {
		for _, st := range inflight {
			m, err := st.wait()
			if err != nil && st.it.op == opEnd {
				e.failedLocked(s, st.it, err)
				continue
			}
			if err == nil && m == nil {
				continue // an end another node told: nothing appended
			}
			e.published1(st.it.ev, m, err)
		}
		inflight = inflight[:0]
	}
	for _, it := range batch {
		switch it.op {
		case opPublish:
			wait, err := e.cfg.Publish(ctx, it.ev.Message())
			if err != nil {
				e.published1(it.ev, nil, err)
				continue
			}
			inflight = append(inflight, started{it, wait})
		case opRecord, opEnd:
			wait, err := e.startRecord(ctx, "", it.kind, it.key, it.info, it.op == opRecord, it.ev)
			if err != nil && it.op == opEnd {
				e.failedLocked(s, it, err)
				continue
			}
			if err != nil {
				e.published1(it.ev, nil, err)
				continue
			}
			inflight = append(inflight, started{it, wait})
		case opHold, opRelease:
			flush()
			if it.op == opRelease && endPending(s, it.ev.Channel) {
				// Released once the ends of the channel's
				// subscriptions are done.
				e.failedLocked(s, it, nil)
				continue
			}
			if it.op == opHold {
				// Held again: a release put off is no longer one.
				s.retry = slices.DeleteFunc(s.retry, func(r item) bool {
					return r.op == opRelease && r.ev.Channel == it.ev.Channel
				})
			}
			if err := e.occupyLocked(ctx, "", it.op == opHold, it.ev); err != nil {
				// Tried again: a hold (its subscriptions' records,
				// done meanwhile, are listed for a reaper only by it)
				// and a release (else the channel stays held by this
				// node and is never vacated while it lives; a hold
				// coming meanwhile drops it).
				r := it
				r.done = nil
				e.failedLocked(s, r, nil)
			}
			if it.done != nil {
				// Recorded, or failed (counted and logged): either way
				// nothing is left to wait for.
				s.mu.Lock()
				if s.holding[it.ev.Channel] == it.done {
					delete(s.holding, it.ev.Channel)
				}
				s.mu.Unlock()
				close(it.done)
			}
		}
	}
	flush()
}

// startRecord starts recording (open) or ending kind/key of node ("":
// this one) in the shared log with ev appended in the same step; wait
// returns ev's message with its place, or nil when nothing was appended
// (ending what another node ended).
func (e *Emitter) startRecord(ctx context.Context, node, kind, key, info string, open bool, ev Event) (func() (*broker.Message, error), error) {
	m := ev.Message()
	wait, err := e.cfg.Shared.StartRecord(ctx, node, kind, key, info, open, m)
	if err != nil {
		return nil, err
	}
	return func() (*broker.Message, error) {
		appended, err := wait()
		if err != nil || !appended {
			return nil, err
		}
		return m, nil
	}, nil
}

// published1 counts a publish's outcome and hands the event to the sinks.
func (e *Emitter) published1(ev Event, m *broker.Message, err error) {
	if err != nil {
		e.failed.Add(1)
		e.cfg.Logger.Warn("lifecycle event not published", "event", ev.Name, "channel", ev.Channel, "err", err)
		return
	}
	e.published.Add(1)
	e.Published(ev, m)
}

// occupy holds or releases a channel in the shared log for node ("":
// this one); the log appends ev when the cluster's count changes.
func (e *Emitter) occupy(ctx context.Context, s *stripe, node string, hold bool, ev Event) error {
	s.pub.Lock()
	defer s.pub.Unlock()
	return e.occupyLocked(ctx, node, hold, ev)
}

// occupyLocked is occupy with the stripe's pub lock held.
func (e *Emitter) occupyLocked(ctx context.Context, node string, hold bool, ev Event) error {
	m := ev.Message()
	appended, err := e.cfg.Shared.Occupy(ctx, node, m.Channel, hold, m)
	if err != nil {
		e.failed.Add(1)
		e.cfg.Logger.Warn("lifecycle: occupancy not recorded", "event", ev.Name, "channel", ev.Channel, "err", err)
		return err
	}
	if appended {
		e.published.Add(1)
		e.Published(ev, m)
	}
	return nil
}

// Member records (hold) or ends node's ("": this node's) hold of the
// presence member id of channel in the shared log, which appends
// member_added when it makes the member held by a node for the cluster,
// member_removed when by none, in the same step as the count, and hands
// the event to the sinks when this call appended it. Without a shared log
// it does nothing (the presence registry decides: Emit). The caller
// waits: a join told to its client has its member_added recorded.
func (e *Emitter) Member(ctx context.Context, node, channel, id string, hold bool) error {
	if e == nil || e.cfg.Shared == nil || !e.On(channel) {
		return nil
	}
	ev := Event{Name: MemberRemoved, Channel: channel, UserID: id, Node: e.cfg.Node, TimeMs: e.cfg.Now().UnixMilli()}
	if hold {
		ev.Name = MemberAdded
	}
	if node != "" && node != e.cfg.Node {
		ev.Node, ev.ReapedBy, ev.Reason = node, e.cfg.Node, "node_lost"
	}
	return e.member(ctx, node, hold, ev)
}

// member is Member's step, ev its event.
func (e *Emitter) member(ctx context.Context, node string, hold bool, ev Event) error {
	s := e.stripe(ev.EventChannel())
	s.pub.Lock()
	defer s.pub.Unlock()
	info, _ := json.Marshal(tracked{Channel: ev.Channel, User: ev.UserID})
	m := ev.Message()
	appended, err := e.cfg.Shared.Member(ctx, node, m.Channel, ev.UserID, string(info), hold, m)
	if err != nil {
		e.failed.Add(1)
		e.cfg.Logger.Warn("lifecycle: presence member not recorded", "event", ev.Name, "channel", ev.Channel, "err", err)
		return err
	}
	if appended {
		e.published.Add(1)
		e.Published(ev, m)
	}
	return nil
}

// end ends kind/key of a dead node in the shared log with ev appended in
// the same step, and hands ev to the sinks when this call appended it.
// An error leaves the record for the next try (the reaper tries again).
func (e *Emitter) end(ctx context.Context, s *stripe, node, kind, key string, ev Event) error {
	s.pub.Lock()
	defer s.pub.Unlock()
	wait, err := e.startRecord(ctx, node, kind, key, "", false, ev)
	var m *broker.Message
	if err == nil {
		m, err = wait()
	}
	if err == nil && m == nil {
		return nil // another node told it
	}
	e.published1(ev, m, err)
	return err
}

// lost tells, once for the cluster, the end of something a dead node
// tracked (the shared log calls it on one surviving node).
func (e *Emitter) lost(node, kind, key, info string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var t tracked
	if kind != "o" {
		if err := json.Unmarshal([]byte(info), &t); err != nil {
			return nil // not ours to tell
		}
	}
	now := e.cfg.Now().UnixMilli()
	switch kind {
	case "o":
		ch, ok := strings.CutPrefix(key, ChannelPrefix)
		if !ok {
			return nil
		}
		ev := Event{Name: ChannelVacated, Channel: ch, Node: node, ReapedBy: e.cfg.Node, TimeMs: now}
		return e.occupy(ctx, e.stripe(key), node, false, ev)
	case "s":
		ev := Event{Name: Unsubscribed, Channel: t.Channel, UserID: t.User, Reason: "node_lost", Node: node, ReapedBy: e.cfg.Node, TimeMs: now}
		return e.end(ctx, e.stripe(ev.EventChannel()), node, "s", key, ev)
	case "m":
		ev := Event{Name: MemberRemoved, Channel: t.Channel, UserID: key, Reason: "node_lost", Node: node, ReapedBy: e.cfg.Node, TimeMs: now}
		return e.member(ctx, node, false, ev)
	case "c":
		ev := Event{Name: ConnectionClosed, ConnectionID: key, UserID: t.User, Transport: t.Transport, Reason: "node_lost", Node: node, ReapedBy: e.cfg.Node, TimeMs: now}
		return e.end(ctx, e.stripe(Connections), node, "c", key, ev)
	}
	return nil
}

// rejoin holds this node's channels again and records its
// subscriptions and connections again (with their subscribed and
// connection_opened again), after the others took it for dead, told
// their ends and forgot them: should it die later, their ends are told
// again.
func (e *Emitter) rejoin() {
	for i := range e.st {
		s := &e.st[i]
		s.mu.Lock()
		for ch := range s.occ {
			e.holdLocked(s, Event{Name: ChannelOccupied, Channel: ch})
		}
		for _, it := range s.live {
			// Recorded again with its event again (subscribed,
			// connection_opened), after the end the others told. A
			// record still there (one queued or under way when the
			// others ended this node's, or whose reply was late) is
			// not: the script records once.
			it.ev.TimeMs = 0
			e.queueLocked(s, it)
		}
		s.mu.Unlock()
	}
}

// Published hands an event already published (by whoever decided it: the
// presence registry's scripts) to the sinks, with its position.
func (e *Emitter) Published(ev Event, m *broker.Message) {
	if m != nil {
		ev.Seq, ev.Epoch = m.Seq, m.Epoch
	}
	if sinks := e.sinks.Load(); sinks != nil {
		for _, sink := range *sinks {
			sink(ev)
		}
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

// Held returns once the shared log has recorded the hold of channel
// queued by this node's subscriptions so far (at once without a shared
// log, or when none is pending), or ctx's error. A subscription is
// counted by the cluster only then: told to its client any sooner, the
// other nodes' last unsubscribes, recorded first, would vacate the
// channel under it (channel_vacated, then channel_occupied again).
func (e *Emitter) Held(ctx context.Context, channel string) error {
	if e == nil || e.cfg.Shared == nil {
		return nil
	}
	s := e.stripe(ChannelOf(channel))
	s.mu.Lock()
	done := s.holding[channel]
	s.mu.Unlock()
	if done == nil {
		return nil
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
