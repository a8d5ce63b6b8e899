package zmq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/door"
)

// BrokerConfig attaches ZeroMQ endpoints to a broker.
type BrokerConfig struct {
	// In, if set, is a SUB socket (bound by default) that ZeroMQ
	// publishers send to; every message is published to its channel.
	In *Endpoint
	// Out, if set, is a PUB socket (bound by default) that emits every
	// channel's messages as [channel, payload, seq].
	Out *Endpoint
	// Sep splits legacy single-frame messages on In.
	Sep byte
	SocketOptions
	Logger *slog.Logger
	// Ready is called with each bound or connected address ("in" or "out").
	Ready func(role, addr string)
}

// BrokerStats are the counters of a broker's ZeroMQ endpoints.
type BrokerStats struct {
	In  SubStats
	Out PubStats
	// Published counts messages from In stored in the broker.
	Published atomic.Uint64
	// Refused counts messages from In that the door refused (an invalid
	// channel name, over the size limit) or the broker failed to store.
	Refused atomic.Uint64

	mu      sync.Mutex
	dropped map[string]uint64 // Out drops per channel
}

// Snapshot returns the counters for /stats.
func (s *BrokerStats) Snapshot() map[string]uint64 {
	return map[string]uint64{
		"zmq_in_received":  s.In.Received.Load(),
		"zmq_in_malformed": s.In.Malformed.Load(),
		"zmq_in_published": s.Published.Load(),
		"zmq_in_refused":   s.Refused.Load(),
		"zmq_out_sent":     s.Out.Sent.Load(),
		"zmq_out_dropped":  s.Out.Dropped.Load(),
	}
}

// DroppedOn returns how many messages of channel Out dropped.
func (s *BrokerStats) DroppedOn(channel string) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dropped[channel]
}

// The callers ZeroMQ's endpoints are at the door.
var (
	zmqIn  = door.Operator("zmq-in")
	zmqOut = door.Operator("zmq-out")
)

// RunBroker serves the configured endpoints until ctx ends, through d: what
// In takes is admitted like any publish (channel name, size), as the
// operator's own way in (no token, no rate limit). Each socket is owned by
// its own goroutine.
func RunBroker(ctx context.Context, d *door.Door, c BrokerConfig, st *BrokerStats) error {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 2)
	n := 0
	ready := func(role string) func(string) {
		return func(addr string) {
			if c.Ready != nil {
				c.Ready(role, addr)
			}
		}
	}
	if c.In != nil {
		n++
		go func() {
			var lastWarn, lastRefusal time.Time
			err := RunSub(ctx, SubConfig{
				Endpoint: *c.In, Sep: c.Sep, SocketOptions: c.SocketOptions, Ready: ready("in"),
				OnMalformed: func(err error) {
					if time.Since(lastWarn) > 10*time.Second {
						lastWarn = time.Now()
						c.Logger.Warn("dropping malformed ZeroMQ message (counted in zmq_in_malformed)", "err", err)
					}
				},
			}, &st.In, func(f Frame) error {
				kind, _ := broker.ClassifyData("", f.Payload)
				if _, _, err := d.Publish(ctx, zmqIn, &broker.Message{Channel: f.Channel, Kind: kind, Data: append([]byte(nil), f.Payload...)}); err != nil {
					if errors.Is(err, broker.ErrClosed) {
						return err
					}
					st.Refused.Add(1)
					if time.Since(lastRefusal) > 10*time.Second {
						lastRefusal = time.Now()
						c.Logger.Warn("a ZeroMQ message was not published (counted in zmq_in_refused)", "channel", f.Channel, "err", err)
					}
					return nil
				}
				st.Published.Add(1)
				return nil
			})
			errc <- wrapRole("ZeroMQ in", err)
		}()
	}
	if c.Out != nil {
		n++
		sub, err := d.Subscribe(ctx, zmqOut, broker.SubscribeOptions{Channels: []string{">"}, QueueSize: 1 << 20, Internal: true})
		if err != nil {
			return err
		}
		go func() {
			defer sub.Close()
			var buf []broker.Event
			err := RunPub(ctx, PubConfig{
				Endpoint: *c.Out, SocketOptions: c.SocketOptions, Ready: ready("out"),
				OnDrop: func(ch string) {
					st.mu.Lock()
					if st.dropped == nil {
						st.dropped = map[string]uint64{}
					}
					st.dropped[ch]++
					st.mu.Unlock()
				},
			}, &st.Out, func(ctx context.Context) ([]Out, error) {
				evs, err := sub.Next(ctx, buf)
				if err != nil {
					return nil, err
				}
				out := make([]Out, 0, len(evs))
				for _, e := range evs {
					if e.Msg != nil {
						out = append(out, Out{Channel: e.Msg.Channel, Payload: e.Msg.Data, Seq: e.Msg.Seq})
					}
				}
				clear(evs)
				buf = evs
				return out, nil
			})
			errc <- wrapRole("ZeroMQ out", err)
		}()
	}
	var first error
	for i := 0; i < n; i++ {
		err := <-errc
		if err != nil && first == nil && ctx.Err() == nil {
			first = err
			cancel()
		}
	}
	return first
}

func wrapRole(role string, err error) error {
	if err == nil || errors.Is(err, context.Canceled) {
		return nil
	}
	return fmt.Errorf("%s: %w", role, err)
}
