package webhooks

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/events"
)

// A Relay sends one URL's webhooks for a cluster of nodes sharing a log
// (Redis), from the event channels rather than from the memory of the
// node that decided each event, so that the node's death loses none.
// Every node runs one per URL; the one holding the URL's lease (taken
// when nobody holds it, renewed every third of its time to live)
// subscribes to "$events.>" from the positions stored for the URL, feeds
// the events to a Sender (order per channel, delays, batches, retries)
// and stores, per event channel, the position up to which every event
// has left the Sender's queue (delivered, cancelled by its pair, or
// dropped after the retry window). Should it die, another node takes the
// lease once it expires and resumes from there: each event is sent at
// least once; those of the body in flight at the death may be sent
// twice. Before each POST the holder checks that the lease is still its
// own with time left, and it stores positions only while it holds the
// lease (one step in Redis), so a holder that lost it stops. Events the
// event channels no longer hold when a holder resumes (their history was
// trimmed) are a gap: counted in pushctl_webhook_gaps_total and logged.

// RelayConfig configures a Relay.
type RelayConfig struct {
	// Sender configures the sender the lease holder runs (its Done and
	// Before are the relay's).
	Sender Config
	// Scope tells apart two relays of one URL (a namespace's, the
	// --webhook's); every node must be given the same.
	Scope string
	// Node names this node in the logs.
	Node string
	// Log keeps the lease and the positions.
	Log broker.DeliveryLog
	// Channels are the event channels read (nil: "$events.>"; a
	// namespace's webhook reads its channels' only).
	Channels []string
	// Subscribe subscribes to the event channels.
	Subscribe func(ctx context.Context, opts broker.SubscribeOptions) (*broker.Subscription, error)
	// SubQueue bounds the event channels' subscription (default 65536
	// events); past it the subscription ends and resumes.
	SubQueue int
	// Metrics count the leases and gaps (shared by every relay).
	Metrics *RelayMetrics
}

// RelayMetrics are the relays' counters.
type RelayMetrics struct {
	held    prometheus.Gauge
	changes *prometheus.CounterVec
	gaps    prometheus.Counter
}

// NewRelayMetrics returns the relays' counters, for /metrics.
func NewRelayMetrics() *RelayMetrics {
	return &RelayMetrics{
		held: prometheus.NewGauge(prometheus.GaugeOpts{Name: "pushctl_webhook_leases_held",
			Help: "Webhook URLs whose events this node sends for the cluster (it holds their lease)."}),
		changes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pushctl_webhook_lease_changes_total",
			Help: "Webhook leases this node took (acquired) or lost (lost: not renewed in time or taken by another; released: given up at shutdown)."}, []string{"change"}),
		gaps: prometheus.NewCounter(prometheus.CounterOpts{Name: "pushctl_webhook_gaps_total",
			Help: "Gaps in the events a webhook lease holder resumed: events the event channels no longer held, never sent."}),
	}
}

// Collectors are the metrics' collectors.
func (m *RelayMetrics) Collectors() []prometheus.Collector {
	if m == nil {
		return nil
	}
	return []prometheus.Collector{m.held, m.changes, m.gaps}
}

// Relay is one URL's delivery for the cluster (see RelayConfig).
type Relay struct {
	cfg    RelayConfig
	name   string // the lease's and the positions' name
	token  string // this process's, in the lease
	ttl    time.Duration
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
}

// LeaseName is the name of the lease and positions of a URL in a scope.
func LeaseName(scope, url string) string {
	h := sha256.Sum256([]byte(scope + "\x00" + url))
	return hex.EncodeToString(h[:12])
}

// NewRelay starts a relay. It records, the first time any node does, the
// time from which the URL's events are sent.
func NewRelay(cfg RelayConfig) *Relay {
	if cfg.Metrics == nil {
		cfg.Metrics = NewRelayMetrics()
	}
	if cfg.SubQueue <= 0 {
		cfg.SubQueue = 1 << 16
	}
	if cfg.Sender.Logger == nil {
		cfg.Sender.Logger = slog.New(slog.DiscardHandler)
	}
	var b [8]byte
	rand.Read(b[:])
	ctx, cancel := context.WithCancel(context.Background())
	r := &Relay{cfg: cfg, name: LeaseName(cfg.Scope, cfg.Sender.URL), token: cfg.Node + "/" + hex.EncodeToString(b[:]),
		ttl: cfg.Log.LeaseTTL(), ctx: ctx, cancel: cancel, done: make(chan struct{})}
	// The URL's start: events from here on are its (should the first
	// holder come later). Retried by the holder if Redis is away now.
	ictx, icancel := context.WithTimeout(ctx, 5*time.Second)
	cfg.Log.Positions(ictx, r.name, time.Now().Add(-time.Second))
	icancel()
	go r.run()
	return r
}

// Close stops the relay; a holder gives its lease up, so that another
// node goes on at once from the stored positions.
func (r *Relay) Close() {
	r.cancel()
	<-r.done
}

func (r *Relay) log() *slog.Logger { return r.cfg.Sender.Logger }

// pause waits a third of the lease before trying Redis again (or until
// ctx ends).
func (r *Relay) pause(ctx context.Context) {
	select {
	case <-ctx.Done():
	case <-time.After(r.ttl / 3):
	}
}

func (r *Relay) run() {
	defer close(r.done)
	every := r.ttl / 3
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		ctx, cancel := context.WithTimeout(r.ctx, every)
		held, err := r.cfg.Log.TakeLease(ctx, r.name, r.token)
		cancel()
		if err == nil && held {
			r.lead()
		}
		select {
		case <-r.ctx.Done():
			return
		case <-t.C:
		}
	}
}

// pruneEvery is how often a lease holder has the stored positions of
// event channels gone since dropped.
const pruneEvery = time.Hour

// lead sends the URL's events while this node holds the lease.
func (r *Relay) lead() {
	m := r.cfg.Metrics
	m.held.Inc()
	m.changes.WithLabelValues("acquired").Inc()
	host := hostOf(r.cfg.Sender.URL) // not the path or query: they may hold a secret
	r.log().Info("webhook lease taken: this node sends the URL's events", "host", host, "lease", r.name, "node", r.cfg.Node)
	ctx, stop := context.WithCancel(r.ctx)
	var lostOnce sync.Once
	lost := func(why string, err error) {
		lostOnce.Do(func() {
			if r.ctx.Err() == nil {
				m.changes.WithLabelValues("lost").Inc()
				r.log().Warn("webhook lease lost: another node sends the URL's events", "host", host, "lease", r.name, "why", why, "err", err)
			}
			stop()
		})
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // renew
		defer wg.Done()
		every := r.ttl / 3
		t := time.NewTicker(every)
		defer t.Stop()
		last, pruned := time.Now(), time.Now()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			c, cancel := context.WithTimeout(ctx, every)
			held, err := r.cfg.Log.TakeLease(c, r.name, r.token)
			cancel()
			switch {
			case err == nil && !held:
				lost("taken by another node", nil)
				return
			case err == nil:
				last = time.Now()
				if time.Since(pruned) > pruneEvery {
					// Reading the positions drops those of channels
					// gone since: a long holder's too. Beside the
					// renewal, which must not wait for it.
					pruned = last
					wg.Add(1)
					go func() {
						defer wg.Done()
						c, cancel := context.WithTimeout(ctx, time.Minute)
						r.cfg.Log.Positions(c, r.name, last)
						cancel()
					}()
				}
			case time.Since(last) > r.ttl-every:
				lost("not renewed in time", err)
				return
			}
		}
	}()
	defer func() {
		stop()
		wg.Wait()
		m.held.Dec()
		if r.ctx.Err() != nil { // closing: let another node go on now
			c, cancel := context.WithTimeout(context.Background(), time.Second)
			if r.cfg.Log.DropLease(c, r.name, r.token) == nil {
				m.changes.WithLabelValues("released").Inc()
			}
			cancel()
		}
	}()

	c, cancel := context.WithTimeout(ctx, r.ttl)
	cur, since, err := r.cfg.Log.Positions(c, r.name, time.Now().Add(-time.Second))
	cancel()
	if err != nil {
		lost("positions not read", err)
		return
	}
	tr := &tracker{chans: map[string]*chanPos{}, save: func(c broker.Cursor) error {
		ctx, cancel := context.WithTimeout(ctx, r.ttl)
		defer cancel()
		return r.cfg.Log.SavePositions(ctx, r.name, r.token, c)
	}}
	sc := r.cfg.Sender
	sc.Done = func(evs []events.Event) {
		if err := tr.done(evs); err != nil {
			if errors.Is(err, broker.ErrLeaseLost) {
				lost("positions not stored: the lease is another's", err)
			} else {
				r.log().Warn("webhook positions not stored (the next lease holder sends those events again)", "host", host, "err", err)
			}
		}
	}
	minLeft := r.ttl / 3
	sc.Before = func(c context.Context) error {
		left, err := r.cfg.Log.LeaseLeft(c, r.name, r.token)
		if err != nil {
			return err
		}
		if left < minLeft {
			if left == 0 {
				lost("held by another node before a post", nil)
			}
			return fmt.Errorf("the lease has %s left", left)
		}
		return nil
	}
	s := New(sc)
	defer s.Abort()

	from := cur
	chans := r.cfg.Channels
	if len(chans) == 0 {
		chans = []string{events.Root + ".>"}
	}
	for ctx.Err() == nil {
		sub, err := r.cfg.Subscribe(ctx, broker.SubscribeOptions{Channels: chans, From: from, Since: since,
			Internal: true, QueueSize: r.cfg.SubQueue, QueueBytes: 64 << 20})
		if err != nil {
			r.log().Warn("webhook relay: cannot read the event channels; trying again", "err", err)
			r.pause(ctx)
			continue
		}
		err = r.feed(ctx, sub, s, tr)
		sub.Close()
		if ctx.Err() != nil {
			return
		}
		r.log().Info("webhook relay: the event channels' subscription ended; resuming", "err", err)
		// Resume each channel after its last event received: where it
		// has events in the sender's queue, after them; else after its
		// stored position.
		c, cancel := context.WithTimeout(ctx, r.ttl)
		stored, _, err := r.cfg.Log.Positions(c, r.name, since)
		cancel()
		if err != nil {
			r.log().Warn("webhook relay: positions not read; trying again", "err", err)
			r.pause(ctx)
			continue
		}
		from = tr.received(stored)
	}
}

// feed hands the subscription's events to s until it ends.
func (r *Relay) feed(ctx context.Context, sub *broker.Subscription, s *Sender, tr *tracker) error {
	var buf []broker.Event
	for {
		evs, err := sub.Next(ctx, buf[:0])
		if err != nil {
			return err
		}
		buf = evs
		for _, be := range evs {
			if g := be.Gap; g != nil {
				r.cfg.Metrics.gaps.Inc()
				r.log().Warn("webhook events lost: the event channel no longer holds them", "channel", g.Channel, "after", g.From.String(), "resumes_after", g.To.String())
				if err := tr.skip(g.Channel, g.To); err != nil && errors.Is(err, broker.ErrLeaseLost) {
					return err
				}
				continue
			}
			m := be.Msg
			if m == nil {
				continue
			}
			ev, err := events.FromMessage(m)
			if err != nil {
				r.log().Warn("webhook relay: an event channel message is not an event; skipped", "channel", m.Channel, "seq", m.Seq, "err", err)
				if err := tr.skip(m.Channel, broker.Position{Epoch: m.Epoch, Seq: m.Seq}); err != nil && errors.Is(err, broker.ErrLeaseLost) {
					return err
				}
				continue
			}
			if w := r.cfg.Sender.Wants; w != nil && !w(&ev) {
				// Not for this URL (most events, for a Pusher app's
				// relay): done at once, its position stored with the
				// next body's or within a second, not one Redis call
				// each. Lost on a crash, it is only read again.
				if tr.pass(m.Channel, broker.Position{Epoch: m.Epoch, Seq: m.Seq}) {
					if err := tr.flush(); err != nil && errors.Is(err, broker.ErrLeaseLost) {
						return err
					}
				}
				continue
			}
			if err := s.WaitRoom(ctx); err != nil {
				return err
			}
			tr.add(m.Channel, broker.Position{Epoch: m.Epoch, Seq: m.Seq})
			s.Send(ev)
		}
	}
}

// tracker follows, per event channel, the events handed to the sender
// and stores the position up to which all of them are done.
type tracker struct {
	save func(broker.Cursor) error

	mu     sync.Mutex
	chans  map[string]*chanPos
	passed map[string]bool // channels with events passed over and not yet stored
	stored time.Time       // when passed-over positions were last stored
	smu    sync.Mutex      // one save at a time, in order
}

type chanPos struct {
	pending []pend          // handed to the sender, in order (the entry goes once they are done)
	recv    broker.Position // the last received
}

type pend struct {
	pos  broker.Position
	done bool
}

func (t *tracker) ch(name string) *chanPos {
	c := t.chans[name]
	if c == nil {
		c = &chanPos{}
		t.chans[name] = c
	}
	return c
}

// add notes an event handed to the sender.
func (t *tracker) add(evChannel string, pos broker.Position) {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := t.ch(evChannel)
	c.pending = append(c.pending, pend{pos: pos})
	c.recv = pos
}

// passEvery is how long positions of events passed over (not for the
// URL) may wait for a body's save before they are stored on their own.
const passEvery = time.Second

// pass notes an event that is not for the URL: done, its position stored
// with the next flush. It reports whether that should be now.
func (t *tracker) pass(evChannel string, pos broker.Position) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := t.ch(evChannel)
	c.pending = append(c.pending, pend{pos: pos, done: true})
	c.recv = pos
	if t.passed == nil {
		t.passed = map[string]bool{}
	}
	t.passed[evChannel] = true
	if t.stored.IsZero() {
		t.stored = time.Now()
	}
	return time.Since(t.stored) >= passEvery
}

// skip notes a gap: the channel goes on after pos.
func (t *tracker) skip(evChannel string, pos broker.Position) error {
	t.mu.Lock()
	c := t.ch(evChannel)
	c.pending = append(c.pending, pend{pos: pos, done: true})
	c.recv = pos
	t.mu.Unlock()
	return t.flush(evChannel)
}

// done notes events gone from the sender's queue and stores the
// positions that moved.
func (t *tracker) done(evs []events.Event) error {
	t.mu.Lock()
	var moved []string
	for i := range evs {
		ev := &evs[i]
		key := ev.EventChannel()
		c := t.chans[key]
		if c == nil {
			continue
		}
		for j := range c.pending {
			if p := &c.pending[j]; p.pos.Seq == ev.Seq && p.pos.Epoch == ev.Epoch {
				p.done = true
				break
			}
		}
		if len(c.pending) > 0 && c.pending[0].done && !slices.Contains(moved, key) {
			moved = append(moved, key)
		}
	}
	t.mu.Unlock()
	return t.flush(moved...)
}

// flush stores the channels' positions past their done events, in one
// step.
func (t *tracker) flush(evChannels ...string) error {
	t.smu.Lock()
	defer t.smu.Unlock()
	t.mu.Lock()
	for name := range t.passed {
		if !slices.Contains(evChannels, name) {
			evChannels = append(evChannels, name)
		}
	}
	clear(t.passed)
	t.stored = time.Now()
	if len(evChannels) == 0 {
		t.mu.Unlock()
		return nil
	}
	cur := broker.Cursor{}
	for _, name := range evChannels {
		c := t.chans[name]
		if c == nil {
			continue // flushed already
		}
		n := 0
		for n < len(c.pending) && c.pending[n].done {
			cur[name] = c.pending[n].pos
			n++
		}
		c.pending = c.pending[n:]
		if len(c.pending) == 0 {
			delete(t.chans, name) // all done: the stored position has it
		}
	}
	t.mu.Unlock()
	return t.save(cur)
}

// received is where a new subscription resumes: each channel with
// events in the sender's queue after its last event received, the
// others where from (the stored positions) has them.
func (t *tracker) received(from broker.Cursor) broker.Cursor {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := maps.Clone(from)
	if c == nil {
		c = broker.Cursor{}
	}
	for name, ch := range t.chans {
		if ch.recv.Epoch != "" {
			c[name] = ch.recv
		}
	}
	return c
}
