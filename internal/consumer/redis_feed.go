package consumer

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
)

// Feeding a consumer on Redis: every node runs a feeder per consumer,
// and the one holding the consumer's lease reads its channel through
// this node's broker and appends to it in Redis, and runs its deadlines.

// errLeaseLost: another node feeds the consumer now.
var errLeaseLost = errors.New("consumer lease lost")

// takes reports whether a consumer of filter keeps messages of channel:
// those its filter matches, except dead-letter channels unless named
// exactly.
func takes(filter, channel string) bool {
	if !broker.Match(filter, channel) {
		return false
	}
	return !strings.HasPrefix(channel, DeadLetterPrefix) || channel == filter
}

// runFeeder contends for name's lease until ctx ends or the consumer is
// deleted, feeding it while it holds the lease.
func (e *RedisEngine) runFeeder(ctx context.Context, name string) {
	var h *redisConsumer
	defer func() {
		if h != nil {
			// Let another node take over at once rather than after the TTL.
			c, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			h.run(c, unleaseScript, e.token)
			cancel()
		}
	}()
	for ctx.Err() == nil {
		if h == nil {
			hh, err := e.Open(name, Config{}, false)
			if errors.Is(err, ErrNotFound) || errors.Is(err, ErrClosed) {
				return
			}
			if err == nil {
				h = hh.(*redisConsumer)
			}
		}
		if h != nil {
			ok, err := h.run(ctx, leaseScript, e.token, e.ttl.Milliseconds()).Int()
			switch {
			case err != nil && isReplyErr(err, "NOCONSUMER"):
				h.fail(err)
				h = nil
				continue
			case err == nil && ok == 1:
				h.feedLeased(ctx)
				continue
			}
		}
		t := time.NewTimer(e.ttl / 3)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// feedLeased feeds the consumer while this node holds its lease.
func (c *redisConsumer) feedLeased(ctx context.Context) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	e := c.e
	go func() { // renew the lease; losing it ends the feeding
		t := time.NewTicker(e.ttl / 3)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			ok, err := c.run(ctx, leaseScript, e.token, e.ttl.Milliseconds()).Int()
			if err == nil && ok == 0 || isReplyErr(err, "NOCONSUMER") {
				cancel()
				return
			}
		}
	}()
	go c.tick(ctx)
	// backoff is the pause before reading again after a failure (a
	// subscription refused, an append that failed), doubling while they
	// go on. An append that succeeded resets it, and so does a
	// subscription that succeeded unless the round before ended in a
	// failed append (subscribing works while appending fails).
	backoff := minBackoff
	appendFailed := false
	pause := func() bool {
		t := time.NewTimer(backoff)
		defer t.Stop()
		backoff = min(backoff*2, 5*time.Second)
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		}
	}
	var buf []broker.Event
	for ctx.Err() == nil {
		sub, err := c.subscribe(ctx)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, broker.ErrClosed) || errors.Is(err, ErrNotFound) {
				return
			}
			e.log.Warn("consumer subscription failed; retrying", "consumer", c.name, "err", err)
			if !pause() {
				return
			}
			continue
		}
		if !appendFailed {
			backoff = minBackoff
		}
		appendFailed = false
		for {
			buf, err = sub.Next(ctx, buf[:0])
			if len(buf) > 0 {
				aerr := c.appendEvents(ctx, buf)
				clear(buf)
				if aerr != nil {
					if e.onAppendError != nil {
						e.onAppendError()
					}
					if !errors.Is(aerr, errLeaseLost) && !errors.Is(aerr, ErrNotFound) && ctx.Err() == nil {
						e.log.Warn("keeping messages for a consumer failed; reading again from its cursor", "consumer", c.name, "err", aerr)
					}
					if errors.Is(aerr, errLeaseLost) || errors.Is(aerr, ErrNotFound) {
						sub.Close()
						return
					}
					err = aerr
					appendFailed = true
				} else {
					backoff = minBackoff
				}
			}
			if err != nil {
				break
			}
		}
		sub.Close()
		if errors.Is(err, broker.ErrClosed) {
			return
		}
		// Read again from the stored cursor, not at once after an
		// append failed: it would fail again at once (Redis down or
		// refusing), in a loop.
		if appendFailed && !pause() {
			return
		}
	}
}

// subscribe reads the consumer's filter after what it kept: its stored
// cursor (for a channel consumer, from its creation: see startAt), and
// for the channels it does not name, from its creation (or everything
// retained, with start all).
func (c *redisConsumer) subscribe(ctx context.Context) (*broker.Subscription, error) {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	cur, first, err := c.cursor(rctx)
	cancel()
	if err != nil {
		return nil, err
	}
	o := broker.SubscribeOptions{Channels: []string{c.cfg.Filter}, Internal: true, From: broker.Cursor{}}
	for ch, p := range cur {
		if broker.Match(c.cfg.Filter, ch) {
			o.From[ch] = p
		}
	}
	o.Since = c.created
	if c.cfg.Start == StartAll || first {
		o.Since = time.Unix(0, 1)
	}
	if !broker.IsPattern(c.cfg.Filter) && len(o.From) == 0 && (c.cfg.Start == StartAll || first) {
		o.Last = -1
	}
	return c.e.b.Subscribe(ctx, o)
}

// appendBatch bounds one append script: items, and bytes of data.
const (
	appendItems = 256
	appendBytes = 1 << 20
)

// appendEvents keeps what the broker committed, in scripts of at most
// appendItems items.
func (c *redisConsumer) appendEvents(ctx context.Context, evs []broker.Event) error {
	args := []any{c.e.token, c.cfg.MaxPending, c.cfg.MaxPendingBytes}
	items, size := 0, 0
	flush := func() error {
		if items == 0 {
			return nil
		}
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		err := c.run(rctx, appendScript, args...).Err()
		args, items, size = args[:3], 0, 0
		switch {
		case err == nil:
			return nil
		case isReplyErr(err, "NOLEASE"):
			return errLeaseLost
		}
		return c.fail(err)
	}
	for _, ev := range evs {
		switch {
		case ev.Msg != nil && takes(c.cfg.Filter, ev.Msg.Channel):
			m := ev.Msg
			rec := encodeEntry(SavedEntry{Msg: m})
			args = append(args, "m", m.Channel, m.Epoch, m.Seq, len(m.Data), rec, "")
			size += len(rec)
		case ev.Gap != nil && takes(c.cfg.Filter, ev.Gap.Channel):
			g := ev.Gap
			var lost uint64
			if g.From.Epoch == g.To.Epoch && g.To.Seq > g.From.Seq {
				lost = g.To.Seq - g.From.Seq
			}
			args = append(args, "g", g.Channel, g.To.Epoch, g.To.Seq, lost, "", g.From.Epoch+" "+strconv.FormatUint(g.From.Seq, 10))
		default:
			continue
		}
		items++
		if items >= appendItems || size >= appendBytes {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}

// tick runs the consumer's deadlines while this node feeds it: expired
// deliveries are made ready again (and those out of deliveries
// dead-lettered) even when no client fetches. It runs at the earliest
// deadline it knows and at least once per ack wait or deadRetry,
// whichever is shorter (a fetch on another node sets deadlines it is not
// told about, and a node that died while dead-lettering leaves messages
// due again deadRetry later).
func (c *redisConsumer) tick(ctx context.Context) {
	d := time.Duration(0)
	for {
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		d = min(c.cfg.AckWait, deadRetry)
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		vals, err := c.run(rctx, tickScript, c.cfg.MaxDeliveries, deadRetry.Milliseconds()).Slice()
		cancel()
		if err != nil || len(vals) != 3 {
			if isReplyErr(err, "NOCONSUMER") {
				return
			}
			d = time.Second
			continue
		}
		c.bury(asSlice(vals[0]))
		if n := untilNext(vals[1], vals[2]); asInt(vals[1]) != 0 {
			d = min(d, max(n, time.Millisecond))
		}
	}
}
