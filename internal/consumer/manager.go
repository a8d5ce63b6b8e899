package consumer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/wire"
)

// Manager holds a broker's consumers and keeps them in its Store.
type Manager struct {
	b           broker.Broker
	store       Store
	log         *slog.Logger
	unavailable string

	mu        sync.Mutex
	consumers map[string]*Consumer
	closed    bool
	closing   chan struct{}

	saveMu  sync.Mutex // one save at a time; Delete waits for it
	saveReq chan struct{}
	// gen counts the changes that asked for a save; saved is the gen
	// the last successful save read before collecting (it holds every
	// change counted up to it). A waiter (Synced) is released once saved
	// reaches the gen it saw.
	gen       atomic.Uint64
	saved     atomic.Uint64
	waitMu    sync.Mutex
	waiters   []waiter
	saverDone chan struct{}
}

// Options configure a Manager.
type Options struct {
	// Store keeps consumers across restarts (nil: memory only).
	Store Store
	// Logger receives warnings (default: discard).
	Logger *slog.Logger
	// Unavailable, when set, refuses every consumer with this reason (a
	// broker whose consumers could not keep the promise; serve sets it
	// for none today: Redis nodes use RedisEngine).
	Unavailable string
}

// NewManager returns the consumers of b, starting those o.Store kept.
func NewManager(b broker.Broker, o Options) *Manager {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	m := &Manager{b: b, store: o.Store, log: o.Logger, unavailable: o.Unavailable, consumers: map[string]*Consumer{},
		closing: make(chan struct{}), saveReq: make(chan struct{}, 1), saverDone: make(chan struct{})}
	if m.store != nil {
		for _, s := range m.store.Loaded() {
			c := newConsumer(m, s.Name, s.Meta.Config.WithDefaults(), s.Meta.Created)
			c.next = max(s.Meta.Next, 1)
			c.counters = s.Meta.Counters
			for ch, p := range s.Meta.Cursor {
				c.cursor[ch] = p
			}
			for start, bits := range s.Done {
				c.rangeOf(start).done = bits
				c.dirtyRanges = append(c.dirtyRanges, start) // dropped once done and closed
			}
			for _, se := range s.Entries {
				e := &entry{seq: se.Seq, msg: se.Msg, gap: se.Gap, lost: se.Lost, count: se.Count}
				c.entries.put(e)
				c.kept(e.seq)
				if e.msg != nil {
					c.bytes += int64(len(e.msg.Data))
				}
				c.ready = append(c.ready, e.seq)
				if e.seq >= c.next {
					c.next = e.seq + 1
				}
			}
			sortSeqs(c.ready)
			m.consumers[s.Name] = c
			m.start(c)
		}
		go m.saver()
	} else {
		close(m.saverDone)
	}
	return m
}

func sortSeqs(h seqHeap) { sort.Slice(h, func(i, j int) bool { return h[i] < h[j] }) }

func (m *Manager) start(c *Consumer) {
	ctx, cancel := context.WithCancel(context.Background())
	c.stop = cancel
	go c.run(ctx)
}

func (m *Manager) isClosed() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.closed
}

// Open returns the consumer name, creating it with cfg when create is set
// and it does not exist. An existing consumer keeps its own settings, but
// its filter must be cfg's (when cfg names one).
func (m *Manager) Open(name string, cfg Config, create bool) (*Consumer, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	if m.unavailable != "" {
		return nil, wire.Errorf(http.StatusNotImplemented, wire.CodeConsumersUnavailable, "%s", m.unavailable)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrClosed
	}
	if c, ok := m.consumers[name]; ok {
		if cfg.Filter != "" && cfg.Filter != c.cfg.Filter {
			return nil, wire.Errorf(http.StatusConflict, wire.CodeConsumerMismatch,
				"consumer %s reads %s, not %s; pick another name, or delete it first (pushctl consumers delete %s)", name, c.cfg.Filter, cfg.Filter, name)
		}
		return c, nil
	}
	if !create {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c := newConsumer(m, name, cfg, time.Now())
	c.metaDirty = true
	m.consumers[name] = c
	m.start(c)
	m.saveSoon()
	return c, nil
}

// List describes every consumer, by name.
func (m *Manager) List() []Info {
	m.mu.Lock()
	cs := make([]*Consumer, 0, len(m.consumers))
	for _, c := range m.consumers {
		cs = append(cs, c)
	}
	m.mu.Unlock()
	out := make([]Info, 0, len(cs))
	for _, c := range cs {
		out = append(out, c.Info())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Delete removes a consumer and everything kept for it; fetches waiting
// on it end with ErrNotFound.
func (m *Manager) Delete(name string) error {
	if err := ValidateName(name); err != nil {
		return err
	}
	m.mu.Lock()
	c, ok := m.consumers[name]
	if ok {
		delete(m.consumers, name)
	}
	m.mu.Unlock()
	if !ok {
		return fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	c.stop()
	<-c.done
	c.mu.Lock()
	c.deleted = true
	if c.timer != nil {
		c.timer.Stop()
	}
	close(c.wake)
	c.wake = make(chan struct{})
	c.mu.Unlock()
	if m.store == nil {
		return nil
	}
	m.saveMu.Lock()
	defer m.saveMu.Unlock()
	return m.store.Drop(name)
}

// ErrNotSaved is returned by Synced when what changed could not be saved
// in time (a failing disk): an acknowledgement may be lost, and its
// message delivered again.
var ErrNotSaved = errors.New("consumer state not saved")

// Synced waits until what changed before the call is saved (at once with
// no store): what an acknowledgement's reply waits for, so that an
// acknowledged message is not delivered again after a crash. A change
// that a save in progress collected is saved by that save: the reply
// does not wait for the next one.
func (m *Manager) Synced(ctx context.Context) error {
	if m.store == nil {
		return nil
	}
	target := m.gen.Load()
	if m.saved.Load() >= target {
		return nil
	}
	w := waiter{target: target, ch: make(chan struct{})}
	m.waitMu.Lock()
	m.waiters = append(m.waiters, w)
	m.waitMu.Unlock()
	if hook := testHookWaiting.Load(); hook != nil {
		(*hook)()
	}
	if m.saved.Load() >= target { // saved meanwhile (its round may have released the waiters before w was added)
		return nil
	}
	m.kick()
	select {
	case <-w.ch:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%w: %v", ErrNotSaved, ctx.Err())
	case <-m.saverDone:
		if m.saved.Load() >= target {
			return nil
		}
		return fmt.Errorf("%w: the broker is shutting down", ErrNotSaved)
	}
}

// testHookWaiting, set by tests, is called once a Synced call waits.
var testHookWaiting atomic.Pointer[func()]

type waiter struct {
	target uint64
	ch     chan struct{}
}

// saveSoon asks the saver to write what changed; call it after the
// change (under the consumer's lock), so that a save reading the new gen
// collects the change.
func (m *Manager) saveSoon() {
	if m.store == nil {
		return
	}
	m.gen.Add(1)
	m.kick()
}

// kick wakes the saver.
func (m *Manager) kick() {
	select {
	case m.saveReq <- struct{}{}:
	default:
	}
}

// saver writes changes in batches: while one batch is written the next
// gathers, so a busy consumer costs one store commit per batch, not one
// per message.
func (m *Manager) saver() {
	defer close(m.saverDone)
	for {
		select {
		case <-m.saveReq:
		case <-m.closing:
			m.saveRound()
			return
		}
		if m.saved.Load() >= m.gen.Load() {
			// Woken by a waiter whose change a save in progress then
			// held: nothing asked for a save since.
			continue
		}
		if err := m.saveRound(); err != nil {
			m.log.Error("saving consumers failed; retrying", "err", err)
			t := time.NewTimer(time.Second)
			select {
			case <-t.C:
			case <-m.closing:
				t.Stop()
				m.saveRound()
				return
			}
			m.kick()
		}
	}
}

// saveRound saves what changed and releases the Synced waiters whose
// changes it holds; after a failure they wait for the next round.
func (m *Manager) saveRound() error {
	g := m.gen.Load() // before collecting: every change counted so far is collected
	if err := m.saveAll(); err != nil {
		return err
	}
	if g > m.saved.Load() {
		m.saved.Store(g)
	}
	m.waitMu.Lock()
	keep := m.waiters[:0]
	for _, w := range m.waiters {
		if w.target <= g {
			close(w.ch)
		} else {
			keep = append(keep, w)
		}
	}
	clear(m.waiters[len(keep):])
	m.waiters = keep
	m.waitMu.Unlock()
	return nil
}

// saveAll writes every consumer's changes in one commit.
func (m *Manager) saveAll() error {
	m.saveMu.Lock()
	defer m.saveMu.Unlock()
	m.mu.Lock()
	cs := make([]*Consumer, 0, len(m.consumers))
	for _, c := range m.consumers {
		cs = append(cs, c)
	}
	m.mu.Unlock()
	var changes []Change
	for _, c := range cs {
		if ch, ok := c.collect(); ok {
			changes = append(changes, ch)
		}
	}
	if len(changes) == 0 {
		return nil
	}
	err := m.store.Save(changes)
	if err != nil {
		for _, c := range cs {
			c.redirty(changes)
		}
		return err
	}
	return nil
}

// collect takes what changed since the last save.
func (c *Consumer) collect() (Change, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.deleted || !c.metaDirty && len(c.dirty) == 0 && len(c.dirtyRanges) == 0 {
		return Change{}, false
	}
	ch := Change{Name: c.name, Meta: c.metaLocked()}
	// In seq order, each once: the store writes neighbours together.
	slices.Sort(c.dirty)
	for _, seq := range slices.Compact(c.dirty) {
		if e := c.entries.get(seq); e != nil {
			ch.Puts = append(ch.Puts, SavedEntry{Seq: seq, Count: e.count, Msg: e.msg, Gap: copyGap(e.gap), Lost: e.lost})
		}
	}
	c.dirty = c.dirty[:0]
	// Ranges whose removed entries changed: their bitmap, or, once all
	// their entries are removed and no new one can come, the range goes.
	// An empty range still open is looked at again at each save until
	// it closes.
	slices.Sort(c.dirtyRanges)
	var again []uint64
	for _, start := range slices.Compact(c.dirtyRanges) {
		r := c.ranges[start]
		closed := c.next >= start+rangeSpan
		switch {
		case r == nil: // dropped by a save that failed
			ch.Drop = append(ch.Drop, start)
		case r.live == 0 && closed:
			ch.Drop = append(ch.Drop, start)
			delete(c.ranges, start)
		default:
			ch.Done = append(ch.Done, RangeDone{Start: start, Bits: slices.Clone(r.done)})
			if r.live == 0 {
				again = append(again, start)
			}
		}
	}
	c.dirtyRanges = append(c.dirtyRanges[:0], again...)
	c.metaDirty = false
	return ch, true
}

func copyGap(g *broker.Gap) *broker.Gap {
	if g == nil {
		return nil
	}
	cp := *g
	return &cp
}

// redirty marks what a failed save held as changed again.
func (c *Consumer) redirty(changes []Change) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, ch := range changes {
		if ch.Name != c.name {
			continue
		}
		c.metaDirty = true
		for _, p := range ch.Puts {
			c.dirty = append(c.dirty, p.Seq)
		}
		for _, d := range ch.Done {
			c.dirtyRanges = append(c.dirtyRanges, d.Start)
		}
		c.dirtyRanges = append(c.dirtyRanges, ch.Drop...)
	}
}

func (c *Consumer) metaLocked() Meta {
	cur := make(broker.Cursor, len(c.cursor))
	for k, v := range c.cursor {
		cur[k] = v
	}
	return Meta{Config: c.cfg, Created: c.created, Next: c.next, Cursor: cur, Counters: c.counters}
}

// Close stops every consumer, writes what changed and closes the store.
// Call it before closing the broker.
func (m *Manager) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	cs := make([]*Consumer, 0, len(m.consumers))
	for _, c := range m.consumers {
		cs = append(cs, c)
	}
	m.mu.Unlock()
	// First deliveries are saved with the final round (they are not on
	// their own while running), so a clean restart keeps every count.
	for _, c := range cs {
		c.mu.Lock()
		for seq := range c.flying {
			c.mark(seq)
		}
		c.mu.Unlock()
	}
	close(m.closing)
	for _, c := range cs {
		c.stop()
		<-c.done
		c.mu.Lock()
		if c.timer != nil {
			c.timer.Stop()
		}
		c.mu.Unlock()
	}
	<-m.saverDone
	if m.store != nil {
		return m.store.Close()
	}
	return nil
}
