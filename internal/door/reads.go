package door

import (
	"context"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/presence"
)

// What anyone may read through the door: what the broker says about
// channels and presence. The callers check access to listings themselves
// (adminCheck and channel info in the server), with Allow.

// Channels lists existing channels.
func (d *Door) Channels(ctx context.Context) ([]broker.ChannelInfo, error) { return d.b.Channels(ctx) }

// Channel describes one channel, or returns broker.ErrNotFound.
func (d *Door) Channel(ctx context.Context, name string) (broker.ChannelInfo, error) {
	return d.b.Channel(ctx, name)
}

// Stats returns the broker's counters.
func (d *Door) Stats() broker.Stats { return d.b.Stats() }

// WaitSubscribers blocks until channel has n subscribers or ctx ends.
func (d *Door) WaitSubscribers(ctx context.Context, channel string, n int) error {
	return d.b.WaitSubscribers(ctx, channel, n)
}

// Subscribers counts a channel's subscribers (pattern subscribers
// included, where the broker can say), with or without history.
func (d *Door) Subscribers(ctx context.Context, ch string) (int, error) {
	if c, ok := d.b.(interface {
		Subscribers(context.Context, string) (int, error)
	}); ok {
		return c.Subscribers(ctx, ch)
	}
	info, err := d.b.Channel(ctx, ch)
	return info.Subscribers, err
}

// Health is the broker's health: nil, or why it cannot take publishes
// and new subscriptions (its shared store is unreachable), or cannot
// deliver live (a Redis Pub/Sub connection is down).
func (d *Door) Health() error {
	if h, ok := d.b.(interface{ Health() error }); ok {
		return h.Health()
	}
	return nil
}

// Members lists a channel's presence and the position it is current at.
func (d *Door) Members(ctx context.Context, channel string) ([]presence.Member, broker.Position, error) {
	return d.presence.Members(ctx, channel)
}

// MemberCount counts a channel's presence.
func (d *Door) MemberCount(ctx context.Context, channel string) (int, error) {
	return d.presence.Count(ctx, channel)
}

// Close ends every presence membership, while the broker still takes their
// events, then publishes the lifecycle events still queued and sends the
// webhooks, and stops the consumers, saving them; the broker itself is its
// owner's to close.
func (d *Door) Close() {
	d.presence.Close()
	d.closeEvents()
	d.consumers.Close()
}
