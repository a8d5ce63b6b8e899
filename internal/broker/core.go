package broker

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync/atomic"
	"time"
)

// CoreOptions configure a Core.
type CoreOptions struct {
	// QueueSize is the default per-subscriber live queue bound (default
	// DefaultQueueSize).
	QueueSize int
	// QueueBytes bounds the data queued per subscriber (0: no bound).
	QueueBytes int64
}

// Core is a Broker made of a Hub (this process's subscribers) and a Log
// (history, positions, and for Redis the other nodes).
type Core struct {
	hub  *Hub
	log  Log
	opts CoreOptions

	follow  Follower    // nil unless the log routes between nodes
	cluster ClusterView // nil unless the log is shared by nodes

	published atomic.Uint64
	closed    atomic.Bool
	catchUps  chan struct{} // a slot per catch-up read running (see catchUp)
}

var _ Broker = (*Core)(nil)

// New joins hub and log, which must hand its commits to hub, into a Broker.
func New(hub *Hub, log Log, opts CoreOptions) *Core {
	if opts.QueueSize <= 0 {
		opts.QueueSize = DefaultQueueSize
	}
	c := &Core{hub: hub, log: log, opts: opts, catchUps: make(chan struct{}, catchUpReads)}
	c.follow, _ = log.(Follower)
	c.cluster, _ = log.(ClusterView)
	return c
}

// Log returns the core's log.
func (c *Core) Log() Log { return c.log }

// Health reports nil when the broker is fully working, or why not (a
// Redis server unreachable).
func (c *Core) Health() error {
	if h, ok := c.log.(Health); ok {
		return h.Health()
	}
	return nil
}

// Publish implements Broker.
func (c *Core) Publish(ctx context.Context, m *Message) (*Message, int, error) {
	wait, err := c.StartPublish(ctx, m)
	if err != nil {
		return nil, 0, err
	}
	return wait()
}

// StartPublish implements Pipeliner.
func (c *Core) StartPublish(ctx context.Context, m *Message) (func() (*Message, int, error), error) {
	if err := ValidateChannel(m.Channel); err != nil {
		return nil, err
	}
	if m.Event == "" {
		m.Event = DefaultEvent
	}
	if c.closed.Load() {
		return nil, ErrClosed
	}
	wait, err := c.log.Append(ctx, m)
	if err != nil {
		return nil, err
	}
	return func() (*Message, int, error) {
		n, err := wait()
		if err != nil {
			return nil, 0, err
		}
		if !m.Duplicate {
			c.published.Add(1)
		}
		return m, n, nil
	}, nil
}

// Subscribe implements Broker. The subscription is registered with the
// hub (and, across nodes, followed) before history is read, and holds its
// live messages until every replay is queued; live messages a replay
// covered are dropped, so nothing is missed or repeated.
func (c *Core) Subscribe(ctx context.Context, opts SubscribeOptions) (*Subscription, error) {
	if len(opts.Channels) == 0 {
		return nil, fmt.Errorf("%w: no channel given", ErrInvalidChannel)
	}
	var names, pats []string
	for _, ch := range opts.Channels {
		if err := ValidatePattern(ch); err != nil {
			return nil, err
		}
		if IsPattern(ch) {
			pats = append(pats, ch)
		} else if !hasName(names, ch) {
			names = append(names, ch)
		}
	}
	if len(pats) > 0 && len(opts.From) > 0 && opts.Since.IsZero() && opts.Last == 0 {
		// The cursor says where the channels it names resume, and nothing
		// about those it does not: starting them at "now" would silently
		// skip what they hold.
		return nil, fmt.Errorf("%w: a cursor resuming a pattern subscription needs its %s=<time> entry (as the broker hands it out), since_time or last, for the channels it does not name", ErrInvalidPosition, SinceKey)
	}
	q := opts.QueueSize
	if q <= 0 {
		q = c.opts.QueueSize
	}
	var followed []string
	counted := false // by the follower
	release := func(s *Subscription) {
		c.hub.remove(s)
		if c.follow != nil {
			for _, name := range followed {
				c.follow.Unfollow(name, counted)
			}
		}
	}
	notify := opts.Notify
	if notify == nil && opts.OnReady == nil {
		notify = make(chan struct{}, 1)
	}
	s := newSubscription(opts.Channels, q, notify, release, func(dropped int) {
		c.hub.slowConsumers.Add(1)
		c.hub.dropped.Add(uint64(dropped))
	})
	s.internal = opts.Internal
	s.onReady = opts.OnReady
	s.maxBytes = opts.QueueBytes
	if s.maxBytes == 0 {
		s.maxBytes = c.opts.QueueBytes
	}
	s.holding = true
	replays := opts.Last != 0 || !opts.Since.IsZero() || len(opts.From) > 0
	if len(pats) > 0 && replays && c.follow != nil {
		// On a log shared by nodes a channel's first live message here can
		// come after a hole (on Redis Cluster, messages published as the
		// subscription was set up can have gone where patterns are not
		// heard, before this node's pattern counted, yet after the replay
		// read the channel or listed the channels): what is missing is
		// read from after the head the replay read, or for a channel not
		// replayed as the replay would have read it (since the
		// subscription began, at least), up to the message heard. A log
		// in this process hands the hub every message from the
		// subscription's registration on.
		from, since, done := maps.Clone(opts.From), opts.Since, s.done
		s.catchUp = func(ch string, first, after Position, replayed bool) {
			// After the head the replay read; or, for a channel the
			// replay did not list (made since it began, or made anew),
			// by position from its start (or from the cursor's entry
			// for it), keeping to Since: not by time alone, which the
			// nodes' clocks need not agree on.
			req := ReadRequest{From: after, Resume: true}
			if p, ok := from[ch]; !replayed && ok && p.Epoch == first.Epoch {
				req.From = p
			}
			var keep time.Time
			if !replayed {
				keep = since
			}
			s.caughtUp(ch, c.catchUp(ch, first, req, keep, done))
		}
	}
	if c.closed.Load() {
		return nil, ErrClosed
	}
	if err := c.hub.add(s, names, pats); err != nil {
		return nil, err
	}
	fail := func(err error) (*Subscription, error) {
		s.Close()
		return nil, err
	}
	if c.follow != nil {
		for _, name := range append(append([]string(nil), names...), pats...) {
			if err := c.follow.Follow(ctx, name); err != nil {
				return fail(err)
			}
			followed = append(followed, name)
		}
	}
	heads := make(map[string]Position, len(names))
	read := func(name string, create bool) error {
		req := ReadRequest{Last: opts.Last, Since: opts.Since, Create: create}
		req.From, req.Resume = opts.From[name]
		r, err := c.log.Read(ctx, name, req)
		if err != nil {
			return err
		}
		s.replay(name, r.Start, r.Events...)
		heads[name] = r.Head
		return nil
	}
	for _, name := range names {
		if err := read(name, true); err != nil {
			return fail(err)
		}
	}
	if len(pats) > 0 && replays {
		// Channels that exist already are replayed as asked; the others
		// arrive live.
		infos, err := c.log.List(ctx)
		if err != nil {
			return fail(err)
		}
		for _, info := range infos {
			if _, done := heads[info.Name]; done || !matchAny(pats, info.Name) {
				continue
			}
			if err := read(info.Name, false); err != nil && !errors.Is(err, ErrNotFound) {
				return fail(err)
			}
		}
	}
	s.goLive(heads)
	// Counted only now that it is live: a publisher waiting for it
	// publishes after its start, never into its set-up.
	if !s.internal {
		c.hub.count(s) // first, so the node's total sent with the count has it
		if c.follow != nil {
			if err := c.follow.Count(ctx, followed); err != nil {
				return fail(err)
			}
			counted = true
		}
	}
	return s, nil
}

// catchUpTimeout bounds the read that catches a pattern subscription up
// with a channel whose first live message came after a hole; at most
// catchUpReads such reads run at once per Core (many channels' holes at
// once, after the log lost its pattern routes, wait their turn).
const (
	catchUpTimeout = 10 * time.Second
	catchUpReads   = 16
)

// catchUp reads channel as req says (from a position), for a
// subscription whose first live message of it is first: the messages
// before first (those timed before since left out, when set), and a gap
// notice for what the log no longer holds, or for all of them when they
// cannot be read (the log unreachable, or the channel made anew since).
// It gives up when done (the subscription ended) is closed.
func (c *Core) catchUp(ch string, first Position, req ReadRequest, since time.Time, done <-chan struct{}) []Event {
	missing := []Event{{Gap: &Gap{Channel: ch, From: req.From, To: Position{Epoch: first.Epoch, Seq: first.Seq - 1}}}}
	// Its turn first (however long that takes, until the subscription
	// ends), then up to catchUpTimeout for the read.
	select {
	case c.catchUps <- struct{}{}:
		defer func() { <-c.catchUps }()
	case <-done:
		return missing
	}
	ctx, cancel := context.WithTimeout(context.Background(), catchUpTimeout)
	defer cancel()
	go func() {
		select {
		case <-done:
			cancel()
		case <-ctx.Done():
		}
	}()
	r, err := c.log.Read(ctx, ch, req)
	if err != nil || r.Head.Epoch != first.Epoch {
		return missing
	}
	out := r.Events[:0]
	for _, e := range r.Events {
		switch {
		case e.Msg != nil:
			if e.Msg.Epoch == first.Epoch && e.Msg.Seq < first.Seq && (since.IsZero() || !e.Msg.Time.Before(since)) {
				out = append(out, e)
			}
		case e.Gap != nil:
			g := *e.Gap
			if g.To.Epoch == first.Epoch && g.To.Seq >= first.Seq {
				g.To.Seq = first.Seq - 1
			}
			if g.From.Epoch != g.To.Epoch || g.From.Seq < g.To.Seq {
				out = append(out, Event{Gap: &g})
			}
		}
	}
	return out
}

// WaitSubscribers implements Broker; with a shared log it counts the
// subscribers of every node.
func (c *Core) WaitSubscribers(ctx context.Context, channel string, n int) error {
	if err := ValidateChannel(channel); err != nil {
		return err
	}
	if c.cluster != nil {
		return c.cluster.WaitSubscribers(ctx, channel, n)
	}
	return c.hub.WaitSubscribers(ctx, channel, n)
}

// Subscribers counts channel's subscribers, on every node when shared.
func (c *Core) Subscribers(ctx context.Context, channel string) (int, error) {
	if c.cluster != nil {
		return c.cluster.Subscribers(ctx, channel)
	}
	return c.hub.Subscribers(channel), nil
}

// Channels implements Broker.
func (c *Core) Channels(ctx context.Context) ([]ChannelInfo, error) {
	if c.closed.Load() {
		return nil, ErrClosed
	}
	list, err := c.log.List(ctx)
	if err != nil {
		return nil, err
	}
	for i := range list {
		if list[i].Subscribers, err = c.Subscribers(ctx, list[i].Name); err != nil {
			return nil, err
		}
	}
	return list, nil
}

// Channel implements Broker.
func (c *Core) Channel(ctx context.Context, name string) (ChannelInfo, error) {
	if err := ValidateChannel(name); err != nil {
		return ChannelInfo{}, err
	}
	if c.closed.Load() {
		return ChannelInfo{}, ErrClosed
	}
	info, err := c.log.Info(ctx, name)
	if err != nil {
		return ChannelInfo{}, err
	}
	info.Subscribers, err = c.Subscribers(ctx, name)
	return info, err
}

// DeleteChannel implements Broker.
func (c *Core) DeleteChannel(ctx context.Context, name string) error {
	if err := ValidateChannel(name); err != nil {
		return err
	}
	if c.closed.Load() {
		return ErrClosed
	}
	return c.log.Delete(ctx, name)
}

// Stats implements Broker. Channels and Subscribers are the cluster's
// when the log is shared; the counters are this node's.
func (c *Core) Stats() Stats {
	st := Stats{
		Subscribers:   c.hub.Total(),
		Published:     c.published.Load(),
		Delivered:     c.hub.delivered.Load(),
		SlowConsumers: c.hub.slowConsumers.Load(),
		Dropped:       c.hub.dropped.Load(),
	}
	if c.cluster != nil {
		st.Subscribers = c.cluster.TotalSubscribers()
	}
	if cc, ok := c.log.(interface{ ChannelCount() int }); ok {
		st.Channels = cc.ChannelCount()
	}
	return st
}

// Close implements Broker: the log finishes what it accepted, then every
// subscription ends with ErrClosed.
func (c *Core) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	err := c.log.Close()
	c.hub.Close()
	return err
}
