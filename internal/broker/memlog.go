package broker

import (
	"context"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// MemoryOptions configure the in-memory log (and the hub's queues).
type MemoryOptions struct {
	// Retention is what each channel's history keeps.
	Retention
	// RetentionFor, when set, gives the channels it knows a retention of
	// their own (their namespace's); it is asked once per channel, when
	// the channel is created or restored.
	RetentionFor RetentionFor
	// MaxBytes bounds the retained data of all channels together; the
	// oldest messages go first (0: no bound).
	MaxBytes int64
	// QueueSize is the default per-subscriber live queue bound (default
	// DefaultQueueSize).
	QueueSize int
	// QueueBytes bounds the data queued per subscriber (0: no bound).
	QueueBytes int64
	// Now is the clock; tests inject one.
	Now func() time.Time
}

func (o *MemoryOptions) fill() {
	o.Retention = o.Retention.WithDefaults()
	if o.QueueSize <= 0 {
		o.QueueSize = DefaultQueueSize
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// memLog keeps each channel's history in a bounded ring in memory, lost
// when the process exits. A Cache wraps one as the read cache of the bbolt log (boltlog).
type memLog struct {
	opts MemoryOptions
	sink Sink

	mu       sync.RWMutex
	channels map[string]*memChannel
	closed   bool

	lastEpoch atomic.Int64

	// Set by NewCache: channels stay (their epoch is on disk),
	// created is told of channels a reader made so their epoch survives a
	// restart, and evicted of history the sweeper dropped.
	durable bool
	created func(name string)
	evicted func()

	stop chan struct{}
	wg   sync.WaitGroup
}

type memChannel struct {
	name string
	ret  Retention // what its history keeps, defaults filled in

	mu        sync.Mutex
	epoch     string
	seq       uint64
	hist      []*Message // ring buffer, oldest at head
	head      int
	n         int
	bytes     int64
	published uint64
	lastPub   time.Time
	deleted   bool
	persisted bool  // durable log: its epoch is on disk
	keys      dedup // idempotency keys of the last DedupWindow
}

// NewMemoryLog returns a running in-memory log handing commits to sink.
func NewMemoryLog(opts MemoryOptions, sink Sink) Log {
	l := newMemLog(opts, sink)
	l.start()
	return l
}

// NewMemory returns a running broker whose history lives in memory.
func NewMemory(opts MemoryOptions) *Core {
	hub := NewHub()
	l := NewMemoryLog(opts, hub) // fills in its own copy's defaults: twice, "keep none" became the default
	opts.fill()
	return New(hub, l, CoreOptions{QueueSize: opts.QueueSize, QueueBytes: opts.QueueBytes})
}

func newMemLog(opts MemoryOptions, sink Sink) *memLog {
	opts.fill()
	return &memLog{
		opts:     opts,
		sink:     sink,
		channels: make(map[string]*memChannel),
		stop:     make(chan struct{}),
	}
}

func (l *memLog) start() {
	l.wg.Add(1)
	go l.sweeper()
}

// newEpoch returns a fresh, strictly increasing epoch (base36 of a
// nanosecond clock), so that epochs survive restarts without repeating.
func (l *memLog) newEpoch() string {
	for {
		now := time.Now().UnixNano()
		last := l.lastEpoch.Load()
		if now <= last {
			now = last + 1
		}
		if l.lastEpoch.CompareAndSwap(last, now) {
			return strconv.FormatInt(now, 36)
		}
	}
}

// channel returns the named channel, creating it when create is set.
func (l *memLog) channel(name string, create bool) (*memChannel, error) {
	l.mu.RLock()
	ch, ok := l.channels[name]
	closed := l.closed
	l.mu.RUnlock()
	if closed {
		return nil, ErrClosed
	}
	if ok || !create {
		return ch, nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, ErrClosed
	}
	if ch, ok := l.channels[name]; ok {
		return ch, nil
	}
	ch = &memChannel{name: name, epoch: l.newEpoch(), ret: l.retentionOf(name)} // history grows on the first message
	l.channels[name] = ch
	return ch, nil
}

// Append implements Log.
func (l *memLog) Append(ctx context.Context, m *Message) (func() (int, error), error) {
	for {
		ch, err := l.channel(m.Channel, true)
		if err != nil {
			return nil, err
		}
		ch.mu.Lock()
		if ch.deleted {
			ch.mu.Unlock()
			continue
		}
		now := l.opts.Now().UTC()
		if ch.duplicateLocked(m, now) {
			ch.mu.Unlock()
			return func() (int, error) { return 0, nil }, nil
		}
		m.Epoch, m.Seq = ch.epoch, ch.seq+1
		m.Time = now
		n := l.commitLocked(ch, m)
		ch.mu.Unlock()
		return func() (int, error) { return n, nil }, nil
	}
}

// commitLocked makes m, whose position is assigned, part of its channel:
// history, then the sink. Called with ch.mu held, which keeps each
// channel's deliveries in sequence order.
func (l *memLog) commitLocked(ch *memChannel, m *Message) int {
	ch.seq = m.Seq
	ch.published++
	ch.lastPub = m.Time
	if m.Key != "" {
		ch.keys.add(m.Key, m.Seq, m.Time)
	}
	l.retain(ch, m)
	return l.sink.Deliver(m)
}

// duplicateLocked reports whether m carries a key the channel saw within
// DedupWindow, and then gives m the first message's position. Called
// with ch.mu held.
func (ch *memChannel) duplicateLocked(m *Message, now time.Time) bool {
	if m.Key == "" {
		return false
	}
	h, ok := ch.keys.lookup(m.Key, now)
	if !ok {
		return false
	}
	m.Epoch, m.Seq, m.Time, m.Duplicate = ch.epoch, h.seq, h.at, true
	return true
}

// retentionOf is what channel name's history keeps.
func (l *memLog) retentionOf(name string) Retention {
	return l.opts.RetentionFor.of(name, l.opts.Retention)
}

// retain appends m to the channel's ring and trims by count and age.
// Called with ch.mu held.
func (l *memLog) retain(ch *memChannel, m *Message) {
	size := ch.ret.HistorySize
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
	for limit := ch.ret.HistoryBytes; limit > 0 && ch.bytes > limit && ch.n > 1; {
		ch.dropOldest()
	}
	l.expire(ch, m.Time)
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
func (l *memLog) expire(ch *memChannel, now time.Time) {
	if ch.ret.HistoryAge < 0 {
		return
	}
	cutoff := now.Add(-ch.ret.HistoryAge)
	for ch.n > 0 && ch.hist[ch.head].Time.Before(cutoff) {
		ch.dropOldest()
	}
}

// at returns the i-th retained message, oldest first. Called with ch.mu held.
func (ch *memChannel) at(i int) *Message { return ch.hist[(ch.head+i)%len(ch.hist)] }

// Read implements Log.
func (l *memLog) Read(ctx context.Context, name string, req ReadRequest) (ReadResult, error) {
	for {
		ch, err := l.channel(name, req.Create)
		if err != nil {
			return ReadResult{}, err
		}
		if ch == nil {
			return ReadResult{}, ErrNotFound
		}
		ch.mu.Lock()
		if ch.deleted {
			ch.mu.Unlock()
			continue
		}
		res, err := PlanReplay(name, Position{Epoch: ch.epoch, Seq: ch.seq}, ch.n, ch.at, req)
		persisted := ch.persisted
		ch.mu.Unlock()
		if err == nil && !persisted && l.created != nil {
			l.created(name)
		}
		return res, err
	}
}

func (ch *memChannel) info() ChannelInfo {
	ci := ChannelInfo{
		Name:        ch.name,
		Epoch:       ch.epoch,
		LastSeq:     ch.seq,
		Messages:    ch.n,
		Bytes:       ch.bytes,
		Published:   ch.published,
		LastPublish: ch.lastPub,
	}
	if ch.seq > 0 {
		ci.LastID = Position{Epoch: ch.epoch, Seq: ch.seq}.String()
	}
	return ci
}

func (l *memLog) allChannels() []*memChannel {
	l.mu.RLock()
	defer l.mu.RUnlock()
	chans := make([]*memChannel, 0, len(l.channels))
	for _, ch := range l.channels {
		chans = append(chans, ch)
	}
	return chans
}

// ChannelCount says how many channels there are.
func (l *memLog) ChannelCount() int {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return len(l.channels)
}

// List implements Log.
func (l *memLog) List(ctx context.Context) ([]ChannelInfo, error) {
	chans := l.allChannels()
	out := make([]ChannelInfo, 0, len(chans))
	for _, ch := range chans {
		ch.mu.Lock()
		out = append(out, ch.info())
		ch.mu.Unlock()
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Info implements Log.
func (l *memLog) Info(ctx context.Context, name string) (ChannelInfo, error) {
	ch, err := l.channel(name, false)
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

// Delete implements Log.
func (l *memLog) Delete(ctx context.Context, name string) error {
	l.mu.Lock()
	ch, ok := l.channels[name]
	if !ok {
		l.mu.Unlock()
		return ErrNotFound
	}
	delete(l.channels, name)
	ch.mu.Lock()
	ch.deleted = true
	ch.mu.Unlock()
	l.mu.Unlock()
	l.sink.Deleted(name)
	return nil
}

// Close implements Log.
func (l *memLog) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	l.mu.Unlock()
	close(l.stop)
	l.wg.Wait()
	return nil
}

// sweeper expires old history and forgets idle, empty channels.
func (l *memLog) sweeper() {
	defer l.wg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
		}
		if l.sweep() && l.evicted != nil {
			l.evicted()
		}
	}
}

// sweep expires history and forgets idle channels; it reports whether it
// dropped any message.
func (l *memLog) sweep() bool {
	now := l.opts.Now()
	evicted := l.enforceMaxBytes()
	for _, ch := range l.allChannels() {
		ch.mu.Lock()
		n := ch.n
		l.expire(ch, now)
		evicted = evicted || ch.n != n
		idleAfter := ch.ret.HistoryAge
		if idleAfter < time.Minute {
			idleAfter = time.Hour
		}
		idleAfter = max(idleAfter, DedupWindow) // its idempotency keys live that long
		idle := ch.n == 0 && now.Sub(ch.lastPub) > idleAfter && !l.durable
		ch.mu.Unlock()
		if !idle || l.sink.Subscribers(ch.name) > 0 {
			continue
		}
		l.mu.Lock()
		ch.mu.Lock()
		if l.channels[ch.name] == ch && ch.n == 0 {
			delete(l.channels, ch.name)
			ch.deleted = true
		}
		ch.mu.Unlock()
		l.mu.Unlock()
	}
	return evicted
}

// enforceMaxBytes drops the oldest retained messages of all channels until
// their data fits MaxBytes. It reports whether it dropped anything.
func (l *memLog) enforceMaxBytes() bool {
	if l.opts.MaxBytes <= 0 {
		return false
	}
	chans := l.allChannels()
	var total int64
	for _, ch := range chans {
		ch.mu.Lock()
		total += ch.bytes
		ch.mu.Unlock()
	}
	dropped := false
	for total > l.opts.MaxBytes {
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
