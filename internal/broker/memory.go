package broker

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// MemoryOptions configure a Memory broker.
type MemoryOptions struct {
	// HistorySize is how many messages each channel retains (default 1000;
	// negative keeps none).
	HistorySize int
	// HistoryAge drops retained messages older than this (default 1h;
	// negative keeps them until HistorySize pushes them out).
	HistoryAge time.Duration
	// HistoryBytes bounds the retained data of each channel (0: no bound).
	HistoryBytes int64
	// MaxBytes bounds the retained data of all channels together; the
	// oldest messages go first (0: no bound).
	MaxBytes int64
	// QueueSize is the default per-subscriber live queue bound (default 65536).
	QueueSize int
	// QueueBytes bounds the data queued per subscriber (0: no bound).
	QueueBytes int64
	// Now is the clock; tests inject one.
	Now func() time.Time
}

func (o *MemoryOptions) fill() {
	if o.HistorySize == 0 {
		o.HistorySize = 1000
	}
	if o.HistorySize < 0 {
		o.HistorySize = 0
	}
	if o.HistoryAge == 0 {
		o.HistoryAge = time.Hour
	}
	if o.QueueSize <= 0 {
		o.QueueSize = 65536
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// Memory is the in-memory broker: bounded history per channel, lost when
// the process exits.
type Memory struct {
	opts MemoryOptions

	mu       sync.RWMutex
	channels map[string]*memChannel
	subs     map[*Subscription]*memSub
	closed   bool

	lastEpoch atomic.Int64

	published     atomic.Uint64
	delivered     atomic.Uint64
	slowConsumers atomic.Uint64
	dropped       atomic.Uint64
	subscribers   atomic.Int64

	// store, when set, makes the broker durable: it assigns positions,
	// writes them and only then commits them here.
	store *store

	stop chan struct{}
	wg   sync.WaitGroup
}

var _ Broker = (*Memory)(nil)

// memSub is the broker's bookkeeping for one subscription; guarded by Memory.mu.
type memSub struct {
	patterns []string
	attached map[*memChannel]struct{}
}

type memChannel struct {
	name string

	mu        sync.Mutex
	epoch     string
	seq       uint64
	hist      []*Message // ring buffer, oldest at head
	head      int
	n         int
	bytes     int64
	subs      map[*Subscription]struct{}
	internal  int           // internal subscriptions among subs
	changed   chan struct{} // closed when subs changes
	published uint64
	lastPub   time.Time
	deleted   bool
	persisted bool // durable mode: its epoch is on disk
}

// NewMemory returns a running in-memory broker.
func NewMemory(opts MemoryOptions) *Memory {
	b := newMemory(opts)
	b.start()
	return b
}

func newMemory(opts MemoryOptions) *Memory {
	opts.fill()
	return &Memory{
		opts:     opts,
		channels: make(map[string]*memChannel),
		subs:     make(map[*Subscription]*memSub),
		stop:     make(chan struct{}),
	}
}

func (b *Memory) start() {
	b.wg.Add(1)
	go b.sweeper()
}

// newEpoch returns a fresh, strictly increasing epoch (base36 of a
// nanosecond clock), so that epochs survive restarts without repeating.
func (b *Memory) newEpoch() string {
	for {
		now := time.Now().UnixNano()
		last := b.lastEpoch.Load()
		if now <= last {
			now = last + 1
		}
		if b.lastEpoch.CompareAndSwap(last, now) {
			return strconv.FormatInt(now, 36)
		}
	}
}

// channel returns the named channel, creating it (and attaching matching
// pattern subscriptions) when create is set.
func (b *Memory) channel(name string, create bool) (*memChannel, error) {
	b.mu.RLock()
	ch, ok := b.channels[name]
	closed := b.closed
	b.mu.RUnlock()
	if closed {
		return nil, ErrClosed
	}
	if ok || !create {
		return ch, nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, ErrClosed
	}
	if ch, ok := b.channels[name]; ok {
		return ch, nil
	}
	ch = &memChannel{
		name:    name,
		epoch:   b.newEpoch(),
		subs:    make(map[*Subscription]struct{}),
		changed: make(chan struct{}),
	}
	if b.opts.HistorySize > 0 {
		ch.hist = make([]*Message, 0, min(b.opts.HistorySize, 16))
	}
	for s, ms := range b.subs {
		for _, p := range ms.patterns {
			if Match(p, name) {
				ch.add(s)
				ms.attached[ch] = struct{}{}
				break
			}
		}
	}
	b.channels[name] = ch
	return ch, nil
}

// Publish implements Broker.
func (b *Memory) Publish(ctx context.Context, m *Message) (*Message, int, error) {
	if err := ValidateChannel(m.Channel); err != nil {
		return nil, 0, err
	}
	if m.Event == "" {
		m.Event = DefaultEvent
	}
	if b.store != nil {
		return b.store.publish(ctx, m)
	}
	for {
		ch, err := b.channel(m.Channel, true)
		if err != nil {
			return nil, 0, err
		}
		ch.mu.Lock()
		if ch.deleted {
			ch.mu.Unlock()
			continue
		}
		m.Epoch, m.Seq = ch.epoch, ch.seq+1
		m.Time = b.opts.Now().UTC()
		n := b.commitLocked(ch, m)
		ch.mu.Unlock()
		return m, n, nil
	}
}

// StartPublish implements Pipeliner.
func (b *Memory) StartPublish(ctx context.Context, m *Message) (func() (*Message, int, error), error) {
	if b.store == nil {
		rm, n, err := b.Publish(ctx, m)
		if err != nil {
			return nil, err
		}
		return func() (*Message, int, error) { return rm, n, nil }, nil
	}
	if err := ValidateChannel(m.Channel); err != nil {
		return nil, err
	}
	if m.Event == "" {
		m.Event = DefaultEvent
	}
	return b.store.start(ctx, m)
}

// commitLocked makes m, whose position is assigned, part of its channel:
// history, then every subscriber. Called with ch.mu held.
func (b *Memory) commitLocked(ch *memChannel, m *Message) int {
	ch.seq = m.Seq
	ch.published++
	ch.lastPub = m.Time
	b.retain(ch, m)
	n := 0
	for s := range ch.subs {
		if s.push(Event{Msg: m}) && !s.internal {
			n++
		}
	}
	b.published.Add(1)
	b.delivered.Add(uint64(n))
	return n
}

// retain appends m to the channel's ring and trims by count and age.
// Called with ch.mu held.
func (b *Memory) retain(ch *memChannel, m *Message) {
	size := b.opts.HistorySize
	if size == 0 {
		return
	}
	switch {
	case ch.n < len(ch.hist):
		ch.hist[(ch.head+ch.n)%len(ch.hist)] = m
		ch.n++
	case len(ch.hist) < size:
		if ch.head != 0 { // linearize before growing
			lin := make([]*Message, ch.n, min(size, 2*ch.n))
			for i := range lin {
				lin[i] = ch.at(i)
			}
			ch.hist, ch.head = lin, 0
		}
		ch.hist = append(ch.hist, m)
		ch.n++
	default: // full: overwrite the oldest
		old := ch.hist[ch.head]
		ch.bytes -= int64(len(old.Data))
		ch.hist[ch.head] = m
		ch.head = (ch.head + 1) % len(ch.hist)
	}
	ch.bytes += int64(len(m.Data))
	for limit := b.opts.HistoryBytes; limit > 0 && ch.bytes > limit && ch.n > 1; {
		ch.dropOldest()
	}
	b.expire(ch, m.Time)
}

// dropOldest forgets the oldest retained message. Called with ch.mu held.
func (ch *memChannel) dropOldest() {
	old := ch.hist[ch.head]
	ch.hist[ch.head] = nil
	ch.bytes -= int64(len(old.Data))
	ch.head = (ch.head + 1) % len(ch.hist)
	ch.n--
}

// oldestSeq is the sequence of the oldest retained message, or the next
// one when nothing is retained. Called with ch.mu held.
func (ch *memChannel) oldestSeq() uint64 { return ch.seq - uint64(ch.n) + 1 }

// expire drops retained messages older than HistoryAge. Called with ch.mu held.
func (b *Memory) expire(ch *memChannel, now time.Time) {
	if b.opts.HistoryAge < 0 {
		return
	}
	cutoff := now.Add(-b.opts.HistoryAge)
	for ch.n > 0 && ch.hist[ch.head].Time.Before(cutoff) {
		ch.dropOldest()
	}
}

// at returns the i-th retained message, oldest first. Called with ch.mu held.
func (ch *memChannel) at(i int) *Message { return ch.hist[(ch.head+i)%len(ch.hist)] }

// backlog computes what a new subscriber should be replayed, with the gap
// event first when its position is no longer retained, and the position
// the subscriber's stream starts after. Called with ch.mu held.
func (ch *memChannel) backlog(opts *SubscribeOptions) ([]Event, Position, error) {
	var out []Event
	head := Position{Epoch: ch.epoch, Seq: ch.seq}
	start := ch.n // index of the first retained message to replay
	oldest := ch.seq - uint64(ch.n) + 1
	if pos, ok := opts.From[ch.name]; ok {
		switch {
		case pos.Epoch == ch.epoch && pos.Seq > ch.seq:
			return nil, head, fmt.Errorf("%w: %s is beyond the newest message of %s (%s)", ErrInvalidPosition, pos, ch.name, head)
		case pos.Epoch == ch.epoch && pos.Seq == ch.seq:
			return nil, head, nil
		case pos.Epoch == ch.epoch && pos.Seq+1 >= oldest:
			start = int(pos.Seq + 1 - oldest)
		default:
			out = append(out, Event{Gap: &Gap{
				Channel: ch.name,
				From:    pos,
				To:      Position{Epoch: ch.epoch, Seq: oldest - 1},
			}})
			start = 0
		}
		for i := start; i < ch.n; i++ {
			out = append(out, Event{Msg: ch.at(i)})
		}
		return out, pos, nil
	}
	switch {
	case opts.Last < 0:
		start = 0
	case opts.Last > 0:
		start = max(0, ch.n-opts.Last)
	}
	if !opts.Since.IsZero() {
		i := sort.Search(ch.n, func(i int) bool { return ch.at(i).Time.After(opts.Since) })
		start = min(start, i)
	}
	for i := start; i < ch.n; i++ {
		out = append(out, Event{Msg: ch.at(i)})
	}
	return out, Position{Epoch: ch.epoch, Seq: oldest - 1 + uint64(start)}, nil
}

// Subscribe implements Broker.
func (b *Memory) Subscribe(ctx context.Context, opts SubscribeOptions) (*Subscription, error) {
	if len(opts.Channels) == 0 {
		return nil, fmt.Errorf("%w: no channel given", ErrInvalidChannel)
	}
	var names, pats []string
	for _, c := range opts.Channels {
		if err := ValidatePattern(c); err != nil {
			return nil, err
		}
		if IsPattern(c) {
			pats = append(pats, c)
		} else {
			names = append(names, c)
		}
	}
	q := opts.QueueSize
	if q <= 0 {
		q = b.opts.QueueSize
	}
	s := newSubscription(opts.Channels, q, opts.Notify, b.release, func(dropped int) {
		b.slowConsumers.Add(1)
		b.dropped.Add(uint64(dropped))
	})
	s.internal = opts.Internal
	s.maxBytes = opts.QueueBytes
	if s.maxBytes == 0 {
		s.maxBytes = b.opts.QueueBytes
	}
	ms := &memSub{patterns: pats, attached: make(map[*memChannel]struct{})}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil, ErrClosed
	}
	b.subs[s] = ms
	b.mu.Unlock()

	// attach replays ch's backlog and registers s under one hold of ch.mu,
	// so nothing published meanwhile is missed or repeated.
	attach := func(ch *memChannel) (bool, error) {
		ch.mu.Lock()
		defer ch.mu.Unlock()
		if ch.deleted {
			return false, nil
		}
		if _, dup := ch.subs[s]; !dup {
			evs, start, err := ch.backlog(&opts)
			if err != nil {
				return false, err
			}
			s.replay(ch.name, start, evs...)
			ch.add(s)
		}
		return true, nil
	}
	for _, name := range names {
		for {
			ch, err := b.channel(name, true)
			if err != nil {
				s.Close()
				return nil, err
			}
			ok, err := attach(ch)
			if err != nil {
				s.Close()
				return nil, err
			}
			if ok {
				b.mu.Lock()
				ms.attached[ch] = struct{}{}
				b.mu.Unlock()
				b.persistChannel(ch)
				break
			}
		}
	}
	if len(pats) > 0 {
		// Holding b.mu keeps channels from appearing half-attached; new
		// channels attach pattern subscribers as they are created.
		b.mu.Lock()
		var err error
		for name, ch := range b.channels {
			for _, p := range pats {
				if Match(p, name) {
					var ok bool
					if ok, err = attach(ch); ok {
						ms.attached[ch] = struct{}{}
					}
					break
				}
			}
			if err != nil {
				break
			}
		}
		b.mu.Unlock()
		if err != nil {
			s.Close()
			return nil, err
		}
	}
	return s, nil
}

// add and remove keep subs and the internal count in step. Called with ch.mu held.
func (ch *memChannel) add(s *Subscription) {
	ch.subs[s] = struct{}{}
	if s.internal {
		ch.internal++
	}
	ch.notifyChanged()
}

func (ch *memChannel) remove(s *Subscription) {
	if _, ok := ch.subs[s]; !ok {
		return
	}
	delete(ch.subs, s)
	if s.internal {
		ch.internal--
	}
	ch.notifyChanged()
}

// subscribers counts the subscriptions that are not internal.
func (ch *memChannel) subscribers() int { return len(ch.subs) - ch.internal }

// persistChannel makes sure a channel a subscriber created keeps its
// epoch across restarts (durable mode only).
func (b *Memory) persistChannel(ch *memChannel) {
	if b.store == nil {
		return
	}
	ch.mu.Lock()
	done := ch.persisted
	ch.mu.Unlock()
	if !done {
		b.store.created(ch.name)
	}
}

func (ch *memChannel) notifyChanged() {
	close(ch.changed)
	ch.changed = make(chan struct{})
}

// release unregisters s from every channel it is attached to.
func (b *Memory) release(s *Subscription) {
	b.mu.Lock()
	ms, ok := b.subs[s]
	delete(b.subs, s)
	b.mu.Unlock()
	if !ok {
		return
	}
	for ch := range ms.attached {
		ch.mu.Lock()
		ch.remove(s)
		ch.mu.Unlock()
	}
}

// WaitSubscribers implements Broker.
func (b *Memory) WaitSubscribers(ctx context.Context, channel string, n int) error {
	if err := ValidateChannel(channel); err != nil {
		return err
	}
	for {
		ch, err := b.channel(channel, true)
		if err != nil {
			return err
		}
		ch.mu.Lock()
		deleted, count, changed := ch.deleted, ch.subscribers(), ch.changed
		ch.mu.Unlock()
		if deleted {
			continue
		}
		if count >= n {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (ch *memChannel) info() ChannelInfo {
	ci := ChannelInfo{
		Name:        ch.name,
		Epoch:       ch.epoch,
		LastSeq:     ch.seq,
		Messages:    ch.n,
		Bytes:       ch.bytes,
		Subscribers: ch.subscribers(),
		Published:   ch.published,
		LastPublish: ch.lastPub,
	}
	if ch.seq > 0 {
		ci.LastID = Position{Epoch: ch.epoch, Seq: ch.seq}.String()
	}
	return ci
}

func (b *Memory) allChannels() []*memChannel {
	b.mu.RLock()
	defer b.mu.RUnlock()
	chans := make([]*memChannel, 0, len(b.channels))
	for _, ch := range b.channels {
		chans = append(chans, ch)
	}
	return chans
}

// Channels implements Broker.
func (b *Memory) Channels(ctx context.Context) ([]ChannelInfo, error) {
	chans := b.allChannels()
	out := make([]ChannelInfo, 0, len(chans))
	for _, ch := range chans {
		ch.mu.Lock()
		out = append(out, ch.info())
		ch.mu.Unlock()
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Channel implements Broker.
func (b *Memory) Channel(ctx context.Context, name string) (ChannelInfo, error) {
	if err := ValidateChannel(name); err != nil {
		return ChannelInfo{}, err
	}
	ch, err := b.channel(name, false)
	if err != nil {
		return ChannelInfo{}, err
	}
	if ch == nil {
		return ChannelInfo{}, ErrNotFound
	}
	ch.mu.Lock()
	defer ch.mu.Unlock()
	return ch.info(), nil
}

// DeleteChannel implements Broker.
func (b *Memory) DeleteChannel(ctx context.Context, name string) error {
	if err := ValidateChannel(name); err != nil {
		return err
	}
	if b.store != nil {
		return b.store.deleteChannel(ctx, name)
	}
	return b.deleteMemory(name)
}

// deleteMemory drops a channel from memory and ends its subscriptions.
func (b *Memory) deleteMemory(name string) error {
	b.mu.Lock()
	ch, ok := b.channels[name]
	if !ok {
		b.mu.Unlock()
		return ErrNotFound
	}
	delete(b.channels, name)
	ch.mu.Lock()
	ch.deleted = true
	subs := ch.subs
	ch.subs = map[*Subscription]struct{}{}
	ch.internal = 0
	ch.notifyChanged()
	ch.mu.Unlock()
	var end []*Subscription
	for s := range subs {
		ms := b.subs[s]
		if ms == nil {
			continue
		}
		delete(ms.attached, ch)
		// Pattern subscriptions live on; those that named the channel end.
		if hasName(s.channels, name) {
			end = append(end, s)
		}
	}
	b.mu.Unlock()
	for _, s := range end {
		s.end(ErrChannelDeleted, false)
	}
	return nil
}

func hasName(list []string, name string) bool {
	for _, n := range list {
		if n == name {
			return true
		}
	}
	return false
}

// Stats implements Broker.
func (b *Memory) Stats() Stats {
	b.mu.RLock()
	n, subs := len(b.channels), 0
	for s := range b.subs {
		if !s.internal {
			subs++
		}
	}
	b.mu.RUnlock()
	return Stats{
		Channels:      n,
		Subscribers:   subs,
		Published:     b.published.Load(),
		Delivered:     b.delivered.Load(),
		SlowConsumers: b.slowConsumers.Load(),
		Dropped:       b.dropped.Load(),
	}
}

// Close implements Broker. A durable broker first writes every publish
// already queued, so each one is either stored and acknowledged or failed.
func (b *Memory) Close() error {
	var err error
	if b.store != nil {
		err = b.store.close()
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	subs := make([]*Subscription, 0, len(b.subs))
	for s := range b.subs {
		subs = append(subs, s)
	}
	b.mu.Unlock()
	close(b.stop)
	b.wg.Wait()
	for _, s := range subs {
		s.end(ErrClosed, false)
	}
	return err
}

// sweeper expires old history and forgets idle, empty channels.
func (b *Memory) sweeper() {
	defer b.wg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-b.stop:
			return
		case <-t.C:
		}
		b.sweep()
	}
}

func (b *Memory) sweep() {
	now := b.opts.Now()
	idleAfter := b.opts.HistoryAge
	if idleAfter < time.Minute {
		idleAfter = time.Hour
	}
	evicted := b.enforceMaxBytes()
	for _, ch := range b.allChannels() {
		ch.mu.Lock()
		n := ch.n
		b.expire(ch, now)
		evicted = evicted || ch.n != n
		idle := ch.n == 0 && len(ch.subs) == 0 && now.Sub(ch.lastPub) > idleAfter && b.store == nil
		ch.mu.Unlock()
		if !idle {
			continue
		}
		b.mu.Lock()
		ch.mu.Lock()
		if b.channels[ch.name] == ch && ch.n == 0 && len(ch.subs) == 0 {
			delete(b.channels, ch.name)
			ch.deleted = true
			ch.notifyChanged() // waiters look the channel up again
		}
		ch.mu.Unlock()
		b.mu.Unlock()
	}
	if evicted && b.store != nil {
		b.store.requestTrim()
	}
}

// enforceMaxBytes drops the oldest retained messages of all channels until
// their data fits MaxBytes. It reports whether it dropped anything.
func (b *Memory) enforceMaxBytes() bool {
	if b.opts.MaxBytes <= 0 {
		return false
	}
	chans := b.allChannels()
	var total int64
	for _, ch := range chans {
		ch.mu.Lock()
		total += ch.bytes
		ch.mu.Unlock()
	}
	dropped := false
	for total > b.opts.MaxBytes {
		var oldest *memChannel
		var at time.Time
		for _, ch := range chans {
			ch.mu.Lock()
			if ch.n > 0 && (oldest == nil || ch.at(0).Time.Before(at)) {
				oldest, at = ch, ch.at(0).Time
			}
			ch.mu.Unlock()
		}
		if oldest == nil {
			break
		}
		oldest.mu.Lock()
		if oldest.n > 0 {
			total -= int64(len(oldest.at(0).Data))
			oldest.dropOldest()
			dropped = true
		}
		oldest.mu.Unlock()
	}
	return dropped
}
