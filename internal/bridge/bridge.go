// Package bridge pumps messages from one endpoint to another: ZeroMQ SUB
// and PUB, WebSocket, SSE, HTTP POST, pushctl channels and stdio. Each side
// reconnects by itself with backoff; the bridge counts what it moved, what
// it lost and how often it reconnected.
package bridge

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync/atomic"
	"text/template"
	"time"
)

// Message is what crosses a bridge.
type Message struct {
	Channel string
	Event   string
	Data    []byte
	ID      string
}

// Source produces messages until ctx ends or it fails for good.
type Source interface {
	// Run calls emit for each message, in order, reconnecting as needed.
	Run(ctx context.Context, emit func(Message) error) error
	String() string
}

// Sink delivers messages.
type Sink interface {
	// Send delivers one message, retrying transient failures until ctx
	// ends. An error wrapping ErrRejected drops that message only.
	Send(ctx context.Context, m Message) error
	Close(ctx context.Context) error
	String() string
}

// ErrRejected marks a message the sink refused for good (counted as dropped).
var ErrRejected = errors.New("rejected")

// Counters are what a bridge reports.
type Counters struct {
	Received   atomic.Uint64
	Moved      atomic.Uint64
	Dropped    atomic.Uint64
	Filtered   atomic.Uint64 // received, not kept by Options.Filter
	Gaps       atomic.Uint64
	Reconnects atomic.Uint64
}

// Snapshot returns the counters as a map for printing.
func (c *Counters) Snapshot() map[string]uint64 {
	return map[string]uint64{
		"received": c.Received.Load(), "moved": c.Moved.Load(), "dropped": c.Dropped.Load(), "filtered": c.Filtered.Load(),
		"gaps": c.Gaps.Load(), "reconnects": c.Reconnects.Load(),
	}
}

// Env is what sources and sinks share: counters and a place to report.
type Env struct {
	Counters *Counters
	// Warn reports something the user should know (reconnects, drops).
	Warn func(format string, args ...any)
	// ConnectTimeout bounds the wait for an endpoint that never answered
	// (default 5s): then that side fails with "cannot reach …". Once it
	// answered, it is retried until the bridge ends.
	ConnectTimeout time.Duration
	// WarnEvery is the least time between two warnings about the same
	// endpoint still reconnecting (default 30s).
	WarnEvery time.Duration
}

func (e *Env) warn(format string, args ...any) {
	if e.Warn != nil {
		e.Warn(format, args...)
	}
}

// Options tune a bridge run.
type Options struct {
	// Channel renames every message's channel; ChannelTemplate computes it
	// from {{.Channel}}, {{.Event}} and {{.ID}}.
	Channel         string
	ChannelTemplate *template.Template
	// Filter, when set, keeps only the messages it returns true for
	// (--where, --match); the others are counted as filtered.
	Filter func(context.Context, Message) bool
	// Count stops after that many messages moved.
	Count uint64
	// Queue bounds messages between source and sink (default 1024).
	Queue int
}

// ErrSourceFailed and ErrSinkFailed say which side ended the bridge.
var (
	ErrSourceFailed = errors.New("source failed")
	ErrSinkFailed   = errors.New("sink failed")
)

// errCountReached stops the source once --count is reached.
var errCountReached = errors.New("count reached")

// Run pumps from src to dst until ctx ends, Count messages moved, or a
// side fails for good.
func Run(ctx context.Context, src Source, dst Sink, o Options, env *Env) error {
	if o.Queue <= 0 {
		o.Queue = 1024
	}
	parent := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	q := make(chan Message, o.Queue)
	srcErr := make(chan error, 1)
	go func() {
		defer close(q)
		srcErr <- src.Run(ctx, func(m Message) error {
			env.Counters.Received.Add(1)
			if o.Filter != nil && !o.Filter(ctx, m) {
				env.Counters.Filtered.Add(1)
				return nil
			}
			if err := mapChannel(&m, o); err != nil {
				env.Counters.Dropped.Add(1)
				env.warn("dropping a message: %v", err)
				return nil
			}
			select {
			case q <- m:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
	}()
	var sinkErr error
	for m := range q {
		err := dst.Send(ctx, m)
		switch {
		case err == nil:
			if n := env.Counters.Moved.Add(1); o.Count > 0 && n >= o.Count {
				cancel()
				sinkErr = errCountReached
			}
		case errors.Is(err, ErrRejected):
			env.Counters.Dropped.Add(1)
			env.warn("%s dropped a message: %v", dst, err)
		case ctx.Err() != nil:
		default:
			sinkErr = fmt.Errorf("%w: %s: %v", ErrSinkFailed, dst, err)
			cancel()
		}
		if sinkErr != nil {
			break
		}
	}
	cancel()
	for range q { // let the source finish
	}
	serr := <-srcErr
	closeCtx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer ccancel()
	cerr := dst.Close(closeCtx)
	switch {
	case errors.Is(sinkErr, errCountReached):
		return cerr
	case sinkErr != nil:
		return sinkErr
	case serr != nil && !errors.Is(serr, context.Canceled) && !errors.Is(serr, context.DeadlineExceeded) && !errors.Is(serr, io.EOF):
		return fmt.Errorf("%w: %s: %v", ErrSourceFailed, src, serr)
	case cerr != nil:
		return fmt.Errorf("%w: %s: %v", ErrSinkFailed, dst, cerr)
	}
	if errors.Is(serr, io.EOF) {
		return nil
	}
	return parent.Err()
}

func mapChannel(m *Message, o Options) error {
	switch {
	case o.ChannelTemplate != nil:
		var b bytes.Buffer
		if err := o.ChannelTemplate.Execute(&b, m); err != nil {
			return fmt.Errorf("channel template: %w", err)
		}
		m.Channel = b.String()
	case o.Channel != "":
		m.Channel = o.Channel
	}
	return nil
}

// backoff is an exponential backoff with jitter, 100ms to 5s, that also
// remembers whether its endpoint ever answered and when it last warned.
type backoff struct {
	d        time.Duration
	answered bool      // the endpoint answered once: failures are losses
	start    time.Time // first failed attempt before any answer
	fails    int       // failures since the last success
	lastWarn time.Time
}

// reset is called when the endpoint works again.
func (b *backoff) reset() { b.d, b.fails, b.answered = 0, 0, true }

// heard says that the endpoint answered (even with an error status): it
// is reachable.
func (b *backoff) heard() { b.answered = true }

func (b *backoff) wait(ctx context.Context) error {
	if b.d == 0 {
		b.d = 100 * time.Millisecond
	} else {
		b.d = min(b.d*2, 5*time.Second)
	}
	t := time.NewTimer(b.d/2 + rand.N(b.d/2+1))
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
