package server

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/consumer"
	"github.com/pushctl/pushctl/internal/door"
	"github.com/pushctl/pushctl/internal/wire"
)

// Durable consumers over the WebSocket protocol: a consume frame starts
// pushing a consumer's deliveries to the connection, at most max of them
// unacknowledged at once; ack and nack frames answer them. When the
// connection ends, what it held is delivered again after the ack wait.

// wsFetchFailed, when set, is told of each failed fetch (tests).
var wsFetchFailed atomic.Pointer[func(error)]

// wsConsuming are the consumers a connection consumes.
type wsConsuming struct {
	mu sync.Mutex
	m  map[string]*wsConsume
}

// wsConsume is one consumer pushed to one connection.
type wsConsume struct {
	cons consumer.Handle
	stop context.CancelFunc // ends the pushing (unconsume)
	max  int
	mu   sync.Mutex
	held map[string]time.Time // delivery id -> when its ack wait ends
	wake chan struct{}
}

// consumerFrame executes a consume, ack or nack frame.
func (rd *wsReader) consumerFrame(data []byte) {
	f, p, err := wire.DecodeConsumerFrame(data)
	if err != nil {
		rd.reply(0, now(errFrame(f.Ref, err)))
		return
	}
	switch f.Type {
	case wire.TypeConsume:
		rd.consume(f, p)
	case wire.TypeUnconsume:
		rd.consuming.mu.Lock()
		c := rd.consuming.m[f.Consumer]
		delete(rd.consuming.m, f.Consumer)
		rd.consuming.mu.Unlock()
		if c == nil {
			rd.reply(0, now(errFrame(f.Ref, errorf(http.StatusBadRequest, CodeInvalidFrame, "this connection does not consume %s", f.Consumer))))
			return
		}
		c.stop()
		rd.reply(0, now(textFrame(wire.AppendConsuming(nil, wire.TypeUnconsumed, f.Ref, f.Consumer))))
	case wire.TypeAckIDs, wire.TypeNack:
		rd.reply(0, rd.answer(f, p.Wait))
	}
}

// consume starts pushing consumer f.Consumer's deliveries.
func (rd *wsReader) consume(f *wire.ConsumerFrame, p wire.FetchParams) {
	ctx := rd.context()
	cons, err := rd.s.door.Consume(ctx, rd.caller(), f.Consumer, consumerConfig(p))
	if err != nil {
		rd.reply(0, now(errFrame(f.Ref, door.ConsumerError(err))))
		return
	}
	cctx, stop := context.WithCancel(ctx)
	c := &wsConsume{cons: cons, stop: stop, max: p.Max, held: map[string]time.Time{}, wake: make(chan struct{}, 1)}
	rd.consuming.mu.Lock()
	if rd.consuming.m == nil {
		rd.consuming.m = map[string]*wsConsume{}
	}
	if _, dup := rd.consuming.m[cons.Name()]; dup {
		rd.consuming.mu.Unlock()
		stop()
		rd.reply(0, now(errFrame(f.Ref, errorf(http.StatusConflict, CodeInvalidFrame, "this connection consumes %s already", cons.Name()))))
		return
	}
	rd.consuming.m[cons.Name()] = c
	rd.consuming.mu.Unlock()
	// The reply is queued before any delivery, so it comes first.
	rd.reply(0, now(textFrame(wire.AppendConsuming(nil, wire.TypeConsuming, f.Ref, cons.Name()))))
	go rd.push(cctx, c, f.Ref)
}

// push fetches deliveries while the connection has room for them. A
// fetch failing for a while (Redis unreachable, a timeout) is tried
// again, 50ms doubling to 2s; any other failure (the consumer deleted,
// the broker closing) ends the consuming with an error frame, and the
// connection may consume the consumer again.
func (rd *wsReader) push(ctx context.Context, c *wsConsume, ref string) {
	defer func() {
		rd.consuming.mu.Lock()
		if rd.consuming.m[c.cons.Name()] == c {
			delete(rd.consuming.m, c.cons.Name())
		}
		rd.consuming.mu.Unlock()
		c.stop()
	}()
	ackWait := c.cons.Config().AckWait
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		room, next := c.room(time.Now())
		if room <= 0 {
			t := time.NewTimer(time.Until(next))
			select {
			case <-c.wake:
			case <-t.C:
			case <-ctx.Done():
			}
			t.Stop()
			continue
		}
		ds, err := c.cons.Fetch(ctx, room, 30*time.Second)
		if err != nil {
			if f := wsFetchFailed.Load(); f != nil && *f != nil {
				(*f)(err)
			}
			if ctx.Err() != nil {
				return
			}
			// Redis or the disk unavailable, or refusing writes for want
			// of room (broker.ErrStore): the worker stays attached and
			// gets its messages once they are taken again.
			if errors.Is(err, broker.ErrUnavailable) || errors.Is(err, broker.ErrStore) || errors.Is(err, context.DeadlineExceeded) {
				t := time.NewTimer(backoff)
				select {
				case <-t.C:
				case <-ctx.Done():
				}
				t.Stop()
				backoff = min(2*backoff, 2*time.Second)
				continue
			}
			rd.reply(0, now(errFrame(ref, door.ConsumerError(err))))
			return
		}
		backoff = 50 * time.Millisecond
		if ctx.Err() != nil {
			c.cons.Giveback(ds)
			return
		}
		deadline := time.Now().Add(ackWait)
		for _, d := range ds {
			var b []byte
			if d.Gap != nil {
				b = wire.AppendDeliveryGap(nil, c.cons.Name(), d.Gap, d.Lost)
			} else {
				c.mu.Lock()
				c.held[d.ID] = deadline
				c.mu.Unlock()
				b = wire.AppendDelivery(nil, c.cons.Name(), d.ID, d.Count, d.Msg)
			}
			rd.reply(0, now(textFrame(b[:len(b)-1])))
		}
	}
}

// room is how many more deliveries the connection may hold now, and when
// the earliest it holds stops counting (its ack wait ends).
func (c *wsConsume) room(now time.Time) (int, time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	next := now.Add(time.Minute)
	for id, until := range c.held {
		if !until.After(now) {
			delete(c.held, id)
		} else if until.Before(next) {
			next = until
		}
	}
	return c.max - len(c.held), next
}

// done frees the room of answered deliveries.
func (c *wsConsume) done(ids []string) {
	c.mu.Lock()
	for _, id := range ids {
		delete(c.held, id)
	}
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// answer executes an ack or nack frame, on a consumer this connection
// consumes or any the caller may subscribe to, and returns its reply,
// made once the change is saved (with --data-dir).
func (rd *wsReader) answer(f *wire.ConsumerFrame, delay time.Duration) func() []byte {
	rd.consuming.mu.Lock()
	c := rd.consuming.m[f.Consumer]
	rd.consuming.mu.Unlock()
	var cons consumer.Handle
	if c != nil {
		cons = c.cons
	} else {
		var err error
		if cons, err = rd.s.door.ConsumerOf(rd.caller(), f.Consumer); err != nil {
			return now(errFrame(f.Ref, err))
		}
	}
	typ, n, dead := wire.TypeAcked, 0, 0
	if f.Type == wire.TypeAckIDs {
		var err error
		if n, err = cons.Ack(f.IDs); err != nil {
			return now(errFrame(f.Ref, door.ConsumerError(err)))
		}
	} else {
		typ = wire.TypeNacked
		for _, id := range f.IDs {
			ok, gone, err := cons.Nack(id, delay)
			if err != nil {
				return now(errFrame(f.Ref, door.ConsumerError(err)))
			}
			if ok {
				n++
			}
			if gone {
				dead++
			}
		}
	}
	ctx, ref := rd.context(), f.Ref
	return func() []byte {
		if err := saved(ctx, cons); err != nil {
			return errFrame(ref, err)
		}
		if c != nil {
			c.done(f.IDs)
		}
		return textFrame(wire.AppendAcked(nil, typ, ref, n, dead))
	}
}
