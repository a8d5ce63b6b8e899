package broker

import (
	"context"
	"time"
)

// Cache is a memory log serving as the read cache of a log that keeps its
// messages elsewhere (the bbolt log, boltlog): that log assigns each
// message's position, stores it, then commits it here, which retains it
// and hands it to the sink. A cache never drops a channel for being idle
// (its epoch is stored), and its hooks ask the store to persist what
// readers create and to trim what the sweeper evicted.
type Cache struct{ l *memLog }

// CacheHooks are how a cache asks its store to act.
type CacheHooks struct {
	// Created is told of a channel a reader made that is not stored yet,
	// so that its epoch survives a restart. It must not block.
	Created func(name string)
	// Evicted is told when the sweeper dropped history, so that the store
	// deletes it too. It must not block.
	Evicted func()
}

// NewCache returns a cache handing commits to sink; Start runs its
// sweeper once the store has restored its channels.
func NewCache(opts MemoryOptions, sink Sink, hooks CacheHooks) *Cache {
	l := newMemLog(opts, sink)
	l.durable = true
	l.created, l.evicted = hooks.Created, hooks.Evicted
	return &Cache{l: l}
}

// Start starts the sweeper (age and byte limits, idle channels).
func (c *Cache) Start() { c.l.start() }

// RetentionOf is what channel name's history keeps.
func (c *Cache) RetentionOf(name string) Retention { return c.l.retentionOf(name) }

// Options returns the cache's options with their defaults filled in.
func (c *Cache) Options() MemoryOptions { return c.l.opts }

// Restore installs a stored channel as a restart finds it: its epoch, the
// sequence of its last message, and its retained messages in order
// (retention applies as to new ones). It returns the sequence below which
// the store may delete, ok false when the channel never had a message.
// Call it before Start.
func (c *Cache) Restore(name, epoch string, seq uint64, msgs []*Message) (oldest uint64, ok bool) {
	ch := &memChannel{name: name, epoch: epoch, seq: seq, persisted: true, ret: c.l.retentionOf(name)}
	ch.mu.Lock()
	defer ch.mu.Unlock()
	for _, m := range msgs {
		c.l.retain(ch, m)
		ch.lastPub = m.Time
		if m.Key != "" {
			ch.keys.add(m.Key, m.Seq, m.Time) // a retry after the restart is still a duplicate
		}
	}
	c.l.expire(ch, c.l.opts.Now())
	ch.published = uint64(ch.n)
	c.l.mu.Lock()
	c.l.channels[name] = ch
	c.l.mu.Unlock()
	return ch.oldestSeq(), ch.n > 0 || ch.seq > 0
}

// Oldest returns, for every channel that had a message, the sequence below
// which the store may delete (what the cache no longer retains).
func (c *Cache) Oldest() map[string]uint64 {
	out := map[string]uint64{}
	for _, ch := range c.l.allChannels() {
		ch.mu.Lock()
		if ch.n > 0 || ch.seq > 0 {
			out[ch.name] = ch.oldestSeq()
		}
		ch.mu.Unlock()
	}
	return out
}

// Channel returns the named channel, creating it (with a new epoch) when
// create is set; nil without create when there is none.
func (c *Cache) Channel(name string, create bool) (*CachedChannel, error) {
	ch, err := c.l.channel(name, create)
	if err != nil || ch == nil {
		return nil, err
	}
	return &CachedChannel{l: c.l, ch: ch}, nil
}

// Read implements Log.
func (c *Cache) Read(ctx context.Context, name string, req ReadRequest) (ReadResult, error) {
	return c.l.Read(ctx, name, req)
}

// Info implements Log.
func (c *Cache) Info(ctx context.Context, name string) (ChannelInfo, error) {
	return c.l.Info(ctx, name)
}

// List implements Log.
func (c *Cache) List(ctx context.Context) ([]ChannelInfo, error) { return c.l.List(ctx) }

// ChannelCount says how many channels there are.
func (c *Cache) ChannelCount() int { return c.l.ChannelCount() }

// Delete forgets a channel (the store deleted it first).
func (c *Cache) Delete(ctx context.Context, name string) error { return c.l.Delete(ctx, name) }

// Close stops the sweeper; readers get ErrClosed.
func (c *Cache) Close() error { return c.l.Close() }

// CachedChannel is one channel of a cache, as its store handles it.
type CachedChannel struct {
	l  *memLog
	ch *memChannel
}

// Name is the channel's name.
func (cc *CachedChannel) Name() string { return cc.ch.name }

// State reports the channel's epoch, the sequence of its last message,
// whether it was deleted and whether its epoch is stored.
func (cc *CachedChannel) State() (epoch string, seq uint64, deleted, persisted bool) {
	cc.ch.mu.Lock()
	defer cc.ch.mu.Unlock()
	return cc.ch.epoch, cc.ch.seq, cc.ch.deleted, cc.ch.persisted
}

// SetPersisted records that the channel's epoch is stored.
func (cc *CachedChannel) SetPersisted() {
	cc.ch.mu.Lock()
	cc.ch.persisted = true
	cc.ch.mu.Unlock()
}

// Duplicate reports whether m carries an idempotency key the channel saw
// within DedupWindow before now, and then gives m the first message's
// position (and sets m.Duplicate): the store must not store it.
func (cc *CachedChannel) Duplicate(m *Message, now time.Time) bool {
	cc.ch.mu.Lock()
	defer cc.ch.mu.Unlock()
	return cc.ch.duplicateLocked(m, now)
}

// Commit makes m, stored with the position the store assigned, part of the
// channel: retained, then handed to the sink. It returns how many
// subscribers it was handed to and the sequence below which the store may
// delete. Commits of one channel must come in sequence order.
func (cc *CachedChannel) Commit(m *Message) (subscribers int, oldest uint64) {
	cc.ch.mu.Lock()
	defer cc.ch.mu.Unlock()
	cc.ch.persisted = true
	n := cc.l.commitLocked(cc.ch, m)
	return n, cc.ch.oldestSeq()
}
