// Package consumer keeps durable consumers: named readers of a channel (or
// a pattern) whose position and unacknowledged deliveries the broker keeps,
// so that a script that restarts misses nothing and a message whose
// handler failed is delivered again.
//
// A consumer takes a copy of every message of its filter into its own
// bounded store (memory, or bbolt with --data-dir) as the broker commits
// it, through a subscription the broker keeps for it. Clients fetch
// deliveries from that store; each delivery is held until it is
// acknowledged, refused (nack, optionally delayed) or its ack wait passes,
// after which it is delivered again; after MaxDeliveries it is published
// to the dead-letter channel DeadLetterPrefix+name. Several clients
// fetching from one consumer share its messages (a work queue).
//
// The promise is at-least-once: a message is removed only by an
// acknowledgement or by dead-lettering; a delivery whose acknowledgement
// was lost (a client or broker crash) is delivered again.
package consumer

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/wire"
)

// DeadLetterPrefix begins the name of every dead-letter channel: the
// messages a consumer gave up on go to DeadLetterPrefix + its name. Only
// the broker publishes to these channels (the door refuses clients).
const DeadLetterPrefix = "_dead."

// Defaults of a consumer's settings.
const (
	DefaultAckWait       = 30 * time.Second
	DefaultMaxDeliveries = 5
	DefaultMaxInflight   = 1000
	DefaultMaxPending    = 100000
	// DefaultMaxPendingBytes bounds the data a consumer keeps: 256 MiB.
	DefaultMaxPendingBytes = 256 << 20
	// MaxMaxPending and MaxMaxPendingBytes are the most a consumer (or a
	// namespace's bound) may ask for.
	MaxMaxPending      = 10_000_000
	MaxMaxPendingBytes = int64(1) << 40
	// MaxFetch bounds how many deliveries one fetch returns.
	MaxFetch = 1000
	// MaxNameLen bounds a consumer's name.
	MaxNameLen = 64
)

// Start values: where a new consumer begins.
const (
	StartNew = "new" // messages published after it was created
	StartAll = "all" // also those its channels still retain
)

// Config is a consumer's settings, fixed when it is created.
type Config struct {
	// Filter is the channel or pattern the consumer reads.
	Filter string `json:"filter"`
	// AckWait is how long a delivery is held for its client before it is
	// delivered again.
	AckWait time.Duration `json:"ack_wait"`
	// MaxDeliveries is how many times a message is delivered before it
	// goes to the dead-letter channel.
	MaxDeliveries int `json:"max_deliveries"`
	// MaxInflight bounds the deliveries held at once by all its clients
	// together; 1 is ordered mode: each message is acknowledged (or dead
	// lettered) before the next is delivered.
	MaxInflight int `json:"max_inflight"`
	// MaxPending bounds the messages kept for the consumer (delivered or
	// not, until acknowledged); past it new messages are not kept and the
	// consumer is told with a gap, which is counted.
	MaxPending int `json:"max_pending"`
	// MaxPendingBytes bounds the data of those messages the same way.
	MaxPendingBytes int64 `json:"max_pending_bytes"`
	// Start is StartNew (default) or StartAll.
	Start string `json:"start,omitempty"`
}

// WithDefaults fills the zero fields.
func (c Config) WithDefaults() Config {
	if c.AckWait <= 0 {
		c.AckWait = DefaultAckWait
	}
	if c.MaxDeliveries <= 0 {
		c.MaxDeliveries = DefaultMaxDeliveries
	}
	if c.MaxInflight <= 0 {
		c.MaxInflight = DefaultMaxInflight
	}
	if c.MaxPending <= 0 {
		c.MaxPending = DefaultMaxPending
	}
	if c.MaxPendingBytes <= 0 {
		c.MaxPendingBytes = DefaultMaxPendingBytes
	}
	if c.Start == "" {
		c.Start = StartNew
	}
	return c
}

// Validate checks a configuration (defaults filled).
func (c Config) Validate() error {
	if err := broker.ValidatePattern(c.Filter); err != nil {
		return err
	}
	if c.Start != StartNew && c.Start != StartAll {
		return badParam("start %q: want new or all", c.Start)
	}
	if c.AckWait < 100*time.Millisecond || c.AckWait > 24*time.Hour {
		return badParam("ack_wait %s: want 100ms to 24h", c.AckWait)
	}
	if c.MaxDeliveries > 1000 {
		return badParam("max_deliveries %d: want 1 to 1000", c.MaxDeliveries)
	}
	if c.MaxInflight > 100000 {
		return badParam("max_inflight %d: want 1 to 100000", c.MaxInflight)
	}
	if c.MaxPending > MaxMaxPending {
		return badParam("max_pending %d: want 1 to %d", c.MaxPending, MaxMaxPending)
	}
	if c.MaxPendingBytes > MaxMaxPendingBytes {
		return badParam("max_pending_bytes %d: want 1 to %d", c.MaxPendingBytes, MaxMaxPendingBytes)
	}
	return nil
}

// ValidateName checks a consumer's name: 1 to MaxNameLen of [A-Za-z0-9_-].
func ValidateName(name string) error {
	if name == "" || len(name) > MaxNameLen {
		return wire.Errorf(http.StatusBadRequest, wire.CodeInvalidConsumer, "consumer name must be 1 to %d characters", MaxNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' {
			continue
		}
		return wire.Errorf(http.StatusBadRequest, wire.CodeInvalidConsumer, "consumer name %q: use letters, digits, _ and -", name)
	}
	return nil
}

func badParam(format string, args ...any) error {
	return wire.Errorf(http.StatusBadRequest, wire.CodeInvalidParameter, format, args...)
}

// Errors of consumers, with stable codes.
var (
	// ErrNotFound: no consumer of that name.
	ErrNotFound = errors.New("consumer not found")
	// ErrClosed: the manager is shut down.
	ErrClosed = errors.New("consumers closed")
)

// Delivery is one message handed to a client, or a gap notice (Gap set):
// messages the consumer could not keep. A gap needs no acknowledgement.
type Delivery struct {
	// ID names this delivery for ack and nack: "<consumer seq>.<count>".
	ID string
	// Count is how many times the message has been delivered, this time
	// included.
	Count int
	// Msg is the message (nil for a gap).
	Msg *broker.Message
	// Gap is set for a gap notice; Lost counts the messages in it when
	// known (0: unknown, another epoch).
	Gap  *broker.Gap
	Lost uint64
	// from is the incarnation of the Redis consumer that gave it (its
	// ids are that incarnation's); "" in memory.
	from string
}

// Counters are what a consumer counts over its life.
type Counters struct {
	Delivered    uint64 `json:"delivered"`
	Redelivered  uint64 `json:"redelivered"`
	Acked        uint64 `json:"acked"`
	Nacked       uint64 `json:"nacked"`
	Expired      uint64 `json:"expired"`
	DeadLettered uint64 `json:"dead_lettered"`
	Gaps         uint64 `json:"gaps"`
	Lost         uint64 `json:"lost"`
}

// Info describes a consumer.
type Info struct {
	Name       string    `json:"name"`
	Config     InfoConf  `json:"config"`
	Created    time.Time `json:"created"`
	DeadLetter string    `json:"dead_letter"`
	// Pending counts the messages kept and not yet acknowledged;
	// Inflight those of them held by clients now; Waiting those ready
	// (or delayed) for delivery: the consumer's lag.
	Pending  int `json:"pending"`
	Inflight int `json:"inflight"`
	Waiting  int `json:"waiting"`
	Lag      int `json:"lag"`
	Fetchers int `json:"fetchers"`
	// Cursor is, per channel, the id of the newest message kept.
	Cursor map[string]string `json:"cursor,omitempty"`
	// Feeder is, on Redis, the node copying the consumer's messages (the
	// holder of its lease; empty: none now).
	Feeder string `json:"feeder,omitempty"`
	Counters
}

// InfoConf is Config as shown to people: durations as strings.
type InfoConf struct {
	Filter          string `json:"filter"`
	AckWait         string `json:"ack_wait"`
	MaxDeliveries   int    `json:"max_deliveries"`
	MaxInflight     int    `json:"max_inflight"`
	MaxPending      int    `json:"max_pending"`
	MaxPendingBytes int64  `json:"max_pending_bytes"`
	Start           string `json:"start"`
}

// entry is one message (or gap) kept for the consumer.
type entry struct {
	seq       uint64
	msg       *broker.Message
	gap       *broker.Gap
	lost      uint64
	count     int       // deliveries so far
	deadline  time.Time // in flight until
	notBefore time.Time // delayed until (after a nack with delay)
	state     uint8
}

const (
	stReady uint8 = iota
	stFlying
	stDelayed
	stDying // being published to the dead-letter channel
)

// Consumer is one durable consumer. Its methods are safe for concurrent use.
type Consumer struct {
	name string
	cfg  Config
	m    *Manager

	mu       sync.Mutex
	created  time.Time
	entries  table
	ready    seqHeap
	flying   map[uint64]*entry
	delayed  map[uint64]*entry
	next     uint64            // the seq the next entry gets
	bytes    int64             // data of the messages kept
	openGaps map[string]*entry // per channel, the newest gap notice not yet delivered
	cursor   broker.Cursor
	counters Counters
	fetchers int
	wake     chan struct{} // closed when deliveries may be ready
	timer    *time.Timer
	armed    time.Time
	deleted  bool

	// What changed since the last save (durable stores only).
	dirty     []uint64 // seqs of entries new or changed (repeats allowed)
	metaDirty bool
	// The store keeps entries in ranges of rangeSpan seqs; ranges holds
	// those with entries kept, dirtyRanges those whose set of removed
	// entries changed since the last save (repeats allowed).
	ranges      map[uint64]*seqRange
	dirtyRanges []uint64

	stop context.CancelFunc
	done chan struct{}
}

func newConsumer(m *Manager, name string, cfg Config, created time.Time) *Consumer {
	return &Consumer{name: name, cfg: cfg, m: m, created: created,
		flying: map[uint64]*entry{}, delayed: map[uint64]*entry{}, next: 1, cursor: broker.Cursor{},
		wake: make(chan struct{}), done: make(chan struct{})}
}

// Name is the consumer's name.
func (c *Consumer) Name() string { return c.name }

// Config is the consumer's configuration.
func (c *Consumer) Config() Config { return c.cfg }

// DeadLetter is the consumer's dead-letter channel.
func (c *Consumer) DeadLetter() string { return DeadLetterPrefix + c.name }

// takes reports whether the consumer keeps messages of channel: those its
// filter matches, except dead-letter channels unless named exactly.
func (c *Consumer) takes(channel string) bool {
	if !broker.Match(c.cfg.Filter, channel) {
		return false
	}
	return !strings.HasPrefix(channel, DeadLetterPrefix) || channel == c.cfg.Filter
}

// subscribeOptions resume the consumer's broker subscription after what
// it has kept.
func (c *Consumer) subscribeOptions() broker.SubscribeOptions {
	c.mu.Lock()
	defer c.mu.Unlock()
	o := broker.SubscribeOptions{Channels: []string{c.cfg.Filter}, Internal: true, From: broker.Cursor{}}
	for ch, p := range c.cursor {
		if broker.Match(c.cfg.Filter, ch) {
			o.From[ch] = p
		}
	}
	// Channels not in the cursor have had nothing kept since the
	// consumer began: replay what they retain from then.
	o.Since = c.created
	if c.cfg.Start == StartAll {
		o.Since = time.Unix(0, 1)
	}
	if !broker.IsPattern(c.cfg.Filter) && len(o.From) == 0 && c.cfg.Start == StartAll {
		o.Last = -1
	}
	return o
}

// run keeps the consumer's broker subscription, resuming it after what was
// kept whenever it ends (slow, channel deleted, store trouble), until ctx
// ends.
func (c *Consumer) run(ctx context.Context) {
	defer close(c.done)
	backoff := 50 * time.Millisecond
	var buf []broker.Event
	for ctx.Err() == nil {
		sub, err := c.m.b.Subscribe(ctx, c.subscribeOptions())
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, broker.ErrClosed) {
				return
			}
			c.m.log.Warn("consumer subscription failed; retrying", "consumer", c.name, "err", err)
			t := time.NewTimer(backoff)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		backoff = 50 * time.Millisecond
		for {
			buf, err = sub.Next(ctx, buf[:0])
			if len(buf) > 0 {
				c.take(buf)
				clear(buf)
			}
			if err != nil {
				break
			}
		}
		sub.Close()
		if errors.Is(err, broker.ErrClosed) {
			return
		}
	}
}

// take keeps what the broker committed.
func (c *Consumer) take(evs []broker.Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.deleted {
		return
	}
	added := false
	for _, ev := range evs {
		switch {
		case ev.Msg != nil:
			m := ev.Msg
			if !c.takes(m.Channel) {
				continue
			}
			if p, ok := c.cursor[m.Channel]; ok && p.Epoch == m.Epoch && p.Seq >= m.Seq {
				continue // kept already (a resumed subscription's overlap)
			}
			c.cursor[m.Channel] = m.Position()
			c.metaDirty = true
			if c.entries.len() >= c.cfg.MaxPending || c.bytes+int64(len(m.Data)) > c.cfg.MaxPendingBytes {
				c.overflow(m)
				added = true
				continue
			}
			c.add(&entry{msg: m})
			added = true
		case ev.Gap != nil:
			g := *ev.Gap
			if !c.takes(g.Channel) {
				continue
			}
			c.cursor[g.Channel] = g.To
			c.metaDirty = true
			var lost uint64
			if g.From.Epoch == g.To.Epoch && g.To.Seq > g.From.Seq {
				lost = g.To.Seq - g.From.Seq
			}
			c.counters.Gaps++
			c.counters.Lost += lost
			c.add(&entry{gap: &g, lost: lost})
			added = true
		}
	}
	if added {
		c.changed()
	}
}

// overflow records that m could not be kept (MaxPending): it joins the
// newest gap notice of its channel when that one is not delivered yet and
// ends just before m (so a full consumer keeps one notice per channel, not
// one per message), or starts a new one.
func (c *Consumer) overflow(m *broker.Message) {
	c.counters.Lost++
	if g := c.openGaps[m.Channel]; g != nil && c.entries.get(g.seq) == g && g.state == stReady &&
		g.gap.To.Epoch == m.Epoch && g.gap.To.Seq+1 == m.Seq {
		g.gap.To = m.Position()
		g.lost++
		c.mark(g.seq)
		return
	}
	c.counters.Gaps++
	from := broker.Position{Epoch: m.Epoch, Seq: m.Seq - 1}
	g := &entry{gap: &broker.Gap{Channel: m.Channel, From: from, To: m.Position()}, lost: 1}
	c.add(g)
	if c.openGaps == nil {
		c.openGaps = map[string]*entry{}
	}
	c.openGaps[m.Channel] = g
}

// add keeps a new entry, ready for delivery.
func (c *Consumer) add(e *entry) {
	e.seq = c.next
	c.next++
	c.entries.put(e)
	c.kept(e.seq)
	if e.msg != nil {
		c.bytes += int64(len(e.msg.Data))
	}
	c.ready.push(e.seq)
	c.mark(e.seq)
	c.metaDirty = true
}

// changed wakes fetchers and asks for a save.
func (c *Consumer) changed() {
	close(c.wake)
	c.wake = make(chan struct{})
	c.m.saveSoon()
}

// takeReady hands up to max ready entries out, now.
func (c *Consumer) takeReady(max int, now time.Time) []Delivery {
	out := make([]Delivery, 0, min(max, c.ready.Len(), c.cfg.MaxInflight+1))
	ordered := c.cfg.MaxInflight == 1
	for len(out) < max && c.ready.Len() > 0 {
		seq := c.ready[0]
		e := c.entries.get(seq)
		if e == nil || e.state != stReady {
			c.ready.pop() // acknowledged or moved since it was queued
			continue
		}
		if e.gap != nil {
			c.ready.pop()
			if c.openGaps[e.gap.Channel] == e {
				delete(c.openGaps, e.gap.Channel)
			}
			c.remove(seq)
			out = append(out, Delivery{ID: deliveryID(seq, 1), Count: 1, Gap: e.gap, Lost: e.lost})
			continue
		}
		if len(c.flying) >= c.cfg.MaxInflight {
			break
		}
		if ordered && c.delayedBefore(seq) {
			break // ordered: an earlier message waits for its delay
		}
		c.ready.pop()
		e.count++
		e.state = stFlying
		e.deadline = now.Add(c.cfg.AckWait)
		c.flying[seq] = e
		// A first delivery is not written to the store on its own: most
		// are acknowledged soon after, and writing each message again
		// between its delivery and its ack was a fifth of a busy
		// consumer's work. Redeliveries are (docs/consumers.md).
		if e.count > 1 {
			c.mark(seq)
		}
		c.counters.Delivered++
		if e.count > 1 {
			c.counters.Redelivered++
		}
		out = append(out, Delivery{ID: deliveryID(seq, e.count), Count: e.count, Msg: e.msg})
	}
	if len(out) > 0 {
		c.metaDirty = true
		c.arm(now.Add(c.cfg.AckWait))
	}
	return out
}

func (c *Consumer) delayedBefore(seq uint64) bool {
	for s := range c.delayed {
		if s < seq {
			return true
		}
	}
	return false
}

// Fetch returns up to max deliveries, waiting up to wait for the first.
// It returns none (and no error) when wait passes with nothing to deliver.
func (c *Consumer) Fetch(ctx context.Context, max int, wait time.Duration) ([]Delivery, error) {
	if max <= 0 {
		max = 1
	}
	max = min(max, MaxFetch)
	var timeout <-chan time.Time
	if wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		timeout = t.C
	}
	c.mu.Lock()
	c.fetchers++
	defer func() {
		c.mu.Lock()
		c.fetchers--
		c.mu.Unlock()
	}()
	for {
		if c.deleted {
			c.mu.Unlock()
			return nil, fmt.Errorf("%w: %s was deleted", ErrNotFound, c.name)
		}
		if c.m.isClosed() {
			c.mu.Unlock()
			return nil, ErrClosed
		}
		out := c.takeReady(max, time.Now())
		wake := c.wake
		// The new delivery counts are saved with the next change that
		// asks for a save (their acknowledgements, usually): a delivery
		// alone costs no commit.
		c.mu.Unlock()
		if len(out) > 0 || wait <= 0 {
			return out, nil
		}
		select {
		case <-wake:
		case <-timeout:
			return nil, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-c.m.closing:
			return nil, ErrClosed
		}
		c.mu.Lock()
	}
}

// Giveback returns deliveries a client took but will not handle (its
// connection ended before they were written): they are ready at once and
// the delivery does not count.
func (c *Consumer) Giveback(ds []Delivery) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, d := range ds {
		seq, count, err := ParseDeliveryID(d.ID)
		if err != nil {
			continue
		}
		e := c.entries.get(seq)
		if e == nil || e.state != stFlying || e.count != count {
			continue
		}
		delete(c.flying, seq)
		e.count--
		c.counters.Delivered--
		if e.count > 0 {
			c.counters.Redelivered--
		}
		c.toReady(e)
	}
	c.changed()
}

// deliveryID names a delivery.
func deliveryID(seq uint64, count int) string {
	var b [41]byte
	id := strconv.AppendUint(b[:0], seq, 10)
	id = append(id, '.')
	return string(strconv.AppendInt(id, int64(count), 10))
}

// ParseDeliveryID splits a delivery id into the consumer's seq and the
// delivery count.
func ParseDeliveryID(id string) (seq uint64, count int, err error) {
	s, n, ok := strings.Cut(id, ".")
	if ok {
		seq, err = strconv.ParseUint(s, 10, 64)
		if err == nil {
			count, err = strconv.Atoi(n)
		}
	}
	// Canonical only (no leading zeros, no sign): what deliveryID wrote.
	if !ok || err != nil || seq == 0 || count <= 0 || len(id) > 40 || s[0] < '1' || s[0] > '9' || n[0] < '1' || n[0] > '9' {
		return 0, 0, wire.Errorf(http.StatusBadRequest, wire.CodeInvalidDelivery, "delivery id %q: want <seq>.<count> as the delivery carried it", truncate(id, 48))
	}
	return seq, count, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// Ack acknowledges deliveries by id: their messages are done. An id whose
// message was acknowledged already (or dead-lettered) is not an error:
// acknowledging is idempotent. It returns how many messages this call
// removed.
func (c *Consumer) Ack(ids []string) (int, error) {
	type ackID struct {
		seq   uint64
		count int
	}
	acks := make([]ackID, 0, len(ids))
	for _, id := range ids {
		seq, count, err := ParseDeliveryID(id)
		if err != nil {
			return 0, err
		}
		acks = append(acks, ackID{seq, count})
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.deleted {
		return 0, fmt.Errorf("%w: %s was deleted", ErrNotFound, c.name)
	}
	n := 0
	for _, a := range acks {
		seq := a.seq
		e := c.entries.get(seq)
		if e == nil || e.gap != nil || e.state == stDying || seq >= c.next {
			continue
		}
		// Any delivery of the message may acknowledge it: the work was
		// done, even by a client whose ack wait had passed. But only a
		// delivery there was: an id naming a count the entry never
		// reached (kept from before the consumer was deleted and made
		// again, whose entry numbers start at 1 again) removes nothing.
		if e.count == 0 || e.count < a.count {
			continue
		}
		c.remove(seq)
		delete(c.flying, seq)
		delete(c.delayed, seq)
		c.bytes -= int64(len(e.msg.Data))
		c.counters.Acked++
		n++
	}
	if n > 0 {
		c.metaDirty = true
		c.changed()
	}
	return n, nil
}

// Nack refuses a delivery: its message is delivered again after delay
// (at once when 0), or goes to the dead-letter channel when it has been
// delivered MaxDeliveries times (dead is then true). A nack of a delivery
// that is no longer the current one (its ack wait passed and it went to
// another client) is ignored: ok is false.
func (c *Consumer) Nack(id string, delay time.Duration) (ok, deadLettered bool, err error) {
	seq, count, err := parseNack(id, delay)
	if err != nil {
		return false, false, err
	}
	c.mu.Lock()
	if c.deleted {
		c.mu.Unlock()
		return false, false, fmt.Errorf("%w: %s was deleted", ErrNotFound, c.name)
	}
	e := c.entries.get(seq)
	if e == nil || e.state != stFlying || e.count != count {
		c.mu.Unlock()
		return false, false, nil
	}
	delete(c.flying, seq)
	c.counters.Nacked++
	c.mark(seq)
	c.metaDirty = true
	var dead *entry
	switch {
	case e.count >= c.cfg.MaxDeliveries:
		dead = c.dying(e)
	case delay > 0:
		e.state = stDelayed
		e.notBefore = time.Now().Add(delay)
		c.delayed[seq] = e
		c.arm(e.notBefore)
	default:
		c.toReady(e)
	}
	c.changed()
	c.mu.Unlock()
	if dead != nil {
		c.deadLetter([]*entry{dead})
	}
	return true, dead != nil, nil
}

func (c *Consumer) toReady(e *entry) {
	e.state = stReady
	e.deadline, e.notBefore = time.Time{}, time.Time{}
	c.ready.push(e.seq)
}

// dying takes e out of delivery on its way to the dead-letter channel.
func (c *Consumer) dying(e *entry) *entry {
	e.state = stDying
	return e
}

// arm makes sure the timer fires by at.
func (c *Consumer) arm(at time.Time) {
	if !c.armed.IsZero() && !at.Before(c.armed) {
		return
	}
	c.armed = at
	d := max(time.Until(at), time.Millisecond)
	if c.timer == nil {
		c.timer = time.AfterFunc(d, c.expire)
	} else {
		c.timer.Reset(d)
	}
}

// expire redelivers the deliveries whose ack wait passed and the delayed
// messages that are due, and dead-letters those out of deliveries.
func (c *Consumer) expire() {
	c.mu.Lock()
	if c.deleted {
		c.mu.Unlock()
		return
	}
	now := time.Now()
	c.armed = time.Time{}
	var next time.Time
	var dead []*entry
	changed := false
	for seq, e := range c.flying {
		if e.deadline.After(now) {
			if next.IsZero() || e.deadline.Before(next) {
				next = e.deadline
			}
			continue
		}
		delete(c.flying, seq)
		c.counters.Expired++
		c.mark(seq)
		changed = true
		if e.count >= c.cfg.MaxDeliveries {
			dead = append(dead, c.dying(e))
			continue
		}
		c.toReady(e)
	}
	for seq, e := range c.delayed {
		if e.notBefore.After(now) {
			if next.IsZero() || e.notBefore.Before(next) {
				next = e.notBefore
			}
			continue
		}
		delete(c.delayed, seq)
		c.toReady(e)
		changed = true
	}
	if !next.IsZero() {
		c.arm(next)
	}
	if changed {
		c.metaDirty = true
		c.changed()
	}
	c.mu.Unlock()
	if len(dead) > 0 {
		c.deadLetter(dead)
	}
}

// deadLetter publishes entries to the dead-letter channel, then lets them
// go; one that cannot be published is tried again a second later.
func (c *Consumer) deadLetter(es []*entry) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, e := range es {
		dl := &broker.Message{Channel: c.DeadLetter(), Event: e.msg.Event, Kind: broker.KindJSON,
			Data: wire.AppendDeadLetter(nil, c.name, e.count, e.msg)}
		_, _, err := c.m.b.Publish(ctx, dl)
		c.mu.Lock()
		if c.deleted || c.entries.get(e.seq) != e {
			c.mu.Unlock()
			continue
		}
		if err != nil {
			c.m.log.Warn("dead-letter publish failed; retrying", "consumer", c.name, "err", err)
			e.state = stDelayed
			e.notBefore = time.Now().Add(time.Second)
			c.delayed[e.seq] = e
			c.arm(e.notBefore)
			c.mu.Unlock()
			continue
		}
		c.remove(e.seq)
		c.bytes -= int64(len(e.msg.Data))
		c.counters.DeadLettered++
		c.metaDirty = true
		c.changed()
		c.mu.Unlock()
	}
}

// Info describes the consumer now.
func (c *Consumer) Info() Info {
	c.mu.Lock()
	defer c.mu.Unlock()
	inf := Info{Name: c.name, Created: c.created, DeadLetter: c.DeadLetter(), Counters: c.counters,
		Inflight: len(c.flying), Fetchers: c.fetchers, Cursor: map[string]string{}}
	inf.Config = InfoConf{Filter: c.cfg.Filter, AckWait: c.cfg.AckWait.String(), MaxDeliveries: c.cfg.MaxDeliveries,
		MaxInflight: c.cfg.MaxInflight, MaxPending: c.cfg.MaxPending, MaxPendingBytes: c.cfg.MaxPendingBytes, Start: c.cfg.Start}
	for ch, p := range c.cursor {
		inf.Cursor[ch] = p.String()
	}
	c.entries.each(func(e *entry) {
		if e.gap != nil {
			return
		}
		inf.Pending++
		if e.state == stReady || e.state == stDelayed {
			inf.Waiting++
		}
	})
	inf.Lag = inf.Waiting
	return inf
}

// seqHeap is a min-heap of entry seqs. Its own push and pop (rather than
// container/heap's) keep seqs unboxed: a seq through heap.Push and Pop
// was two allocations per delivery.
type seqHeap []uint64

func (h seqHeap) Len() int { return len(h) }

func (h *seqHeap) push(seq uint64) {
	*h = append(*h, seq)
	a := *h
	for i := len(a) - 1; i > 0; {
		up := (i - 1) / 2
		if a[up] <= a[i] {
			break
		}
		a[up], a[i] = a[i], a[up]
		i = up
	}
}

// pop removes the smallest seq (the heap must not be empty).
func (h *seqHeap) pop() uint64 {
	a := *h
	top := a[0]
	n := len(a) - 1
	a[0] = a[n]
	a = a[:n]
	for i := 0; ; {
		l, small := 2*i+1, i
		if l < n && a[l] < a[small] {
			small = l
		}
		if r := l + 1; r < n && a[r] < a[small] {
			small = r
		}
		if small == i {
			break
		}
		a[i], a[small] = a[small], a[i]
		i = small
	}
	*h = a
	return top
}

// Synced waits until the consumer's changes so far are saved (see
// Manager.Synced).
func (c *Consumer) Synced(ctx context.Context) error { return c.m.Synced(ctx) }

// Wait waits until ok(Info) is true, checking after each change of the
// consumer, or until ctx ends.
func (c *Consumer) Wait(ctx context.Context, ok func(Info) bool) error {
	for {
		c.mu.Lock()
		wake := c.wake
		c.mu.Unlock()
		if ok(c.Info()) {
			return nil
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// kept counts a new entry in its range (durable stores only).
func (c *Consumer) kept(seq uint64) {
	if c.m.store != nil {
		c.rangeOf(seq).live++
	}
}

// remove takes entry seq out for good (acknowledged, dead-lettered, a gap
// delivered): in the store it is marked done in its range, which goes
// once all of its entries are done.
func (c *Consumer) remove(seq uint64) {
	c.entries.del(seq)
	if c.m.store == nil {
		return
	}
	r := c.rangeOf(seq)
	r.live--
	r.done[(seq-rangeStart(seq))/8] |= 1 << ((seq - rangeStart(seq)) % 8)
	c.dirtyRanges = append(c.dirtyRanges, rangeStart(seq))
}

func (c *Consumer) rangeOf(seq uint64) *seqRange {
	start := rangeStart(seq)
	r := c.ranges[start]
	if r == nil {
		if c.ranges == nil {
			c.ranges = map[uint64]*seqRange{}
		}
		r = &seqRange{done: make([]byte, rangeSpan/8)}
		c.ranges[start] = r
	}
	return r
}

// mark notes that entry seq changed since the last save (durable stores
// only: in memory there is nothing to save).
func (c *Consumer) mark(seq uint64) {
	if c.m.store != nil {
		c.dirty = append(c.dirty, seq)
	}
}
