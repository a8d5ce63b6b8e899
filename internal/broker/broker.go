// Package broker defines the pushctl broker contract and its in-memory
// implementation. Every implementation passes the suite in brokertest.
package broker

import (
	"context"
	"errors"
	"time"
)

// Errors with a meaning for callers. Transports map them to stable codes.
var (
	// ErrSlowConsumer ends a subscription whose queue overflowed. The
	// subscriber may resume from its last position.
	ErrSlowConsumer = errors.New("slow consumer: subscriber queue overflowed; resume from the last id")
	// ErrChannelDeleted ends subscriptions to a channel that was deleted.
	ErrChannelDeleted = errors.New("channel deleted")
	// ErrClosed is returned once the broker is shut down.
	ErrClosed = errors.New("broker closed")
	// ErrNotFound is returned for a channel that does not exist.
	ErrNotFound = errors.New("channel not found")
	// ErrTooLarge is returned for a message over the size limit.
	ErrTooLarge = errors.New("message too large")
)

// Broker is the contract every pushctl broker implements.
type Broker interface {
	// Publish appends m to its channel (creating the channel on first use),
	// assigning Epoch, Seq and Time, and hands it to every subscriber whose
	// subscription matches. Messages of one channel are delivered to each
	// subscriber in sequence order. It returns the stored message and the
	// number of subscribers it was handed to. Once Publish returns without
	// error the message is in history (subject to retention).
	Publish(ctx context.Context, m *Message) (*Message, int, error)

	// Subscribe starts a subscription to concrete channels and patterns.
	// Replayed history (per opts) is queued before any live message of the
	// same channel, and no message is delivered twice.
	Subscribe(ctx context.Context, opts SubscribeOptions) (*Subscription, error)

	// WaitSubscribers blocks until channel has at least n subscribers
	// (pattern subscribers included) or ctx ends.
	WaitSubscribers(ctx context.Context, channel string, n int) error

	// Channels lists existing channels.
	Channels(ctx context.Context) ([]ChannelInfo, error)

	// Channel describes one channel, or returns ErrNotFound.
	Channel(ctx context.Context, name string) (ChannelInfo, error)

	// DeleteChannel drops a channel's history and ends subscriptions that
	// named it exactly (pattern subscriptions stay). A later publish
	// starts a new epoch.
	DeleteChannel(ctx context.Context, name string) error

	// Stats returns broker-wide counters.
	Stats() Stats

	// Close ends every subscription with ErrClosed.
	Close() error
}

// Pipeliner is implemented by brokers whose Publish waits for storage.
// StartPublish fixes the message's place in line (calls made one after
// the other keep their order) and returns a function that waits for its
// outcome, so one connection can have many publishes in flight.
type Pipeliner interface {
	StartPublish(ctx context.Context, m *Message) (wait func() (*Message, int, error), err error)
}

// StartPublish publishes through b, pipelined when b supports it.
func StartPublish(ctx context.Context, b Broker, m *Message) (func() (*Message, int, error), error) {
	if p, ok := b.(Pipeliner); ok {
		return p.StartPublish(ctx, m)
	}
	rm, n, err := b.Publish(ctx, m)
	if err != nil {
		return nil, err
	}
	return func() (*Message, int, error) { return rm, n, nil }, nil
}

// SubscribeOptions selects channels and where to start.
type SubscribeOptions struct {
	// Channels are concrete names or patterns ("news.*", "news.>").
	Channels []string
	// From resumes each named concrete channel after its position. For
	// a channel in From, Last and Since are ignored. With a pattern, From
	// needs Since or Last for the channels it does not name (Subscribe
	// refuses it with ErrInvalidPosition otherwise).
	From Cursor
	// Last replays up to the last N retained messages of each channel;
	// negative replays all retained messages.
	Last int
	// Since replays retained messages published after this time.
	Since time.Time
	// QueueSize bounds the live messages waiting for the subscriber;
	// overflowing ends the subscription with ErrSlowConsumer. Zero uses
	// the broker default.
	QueueSize int
	// QueueBytes bounds the data of those messages the same way (0: no bound).
	QueueBytes int64
	// Notify, when set, is signalled (without blocking) instead of the
	// subscription's own channel whenever events are queued or it ends, so
	// one goroutine can serve several subscriptions. Give it capacity 1.
	Notify chan struct{}
	// OnReady, when set, is called instead (it must not block), so that a
	// connection needs no goroutine waiting while it is idle. Next cannot
	// be used then; TryNext can.
	OnReady func()
	// Internal marks a subscription the broker process keeps for itself
	// (a ZeroMQ PUB endpoint): it receives messages but is not counted as
	// a subscriber in acks, channel info, stats or WaitSubscribers.
	Internal bool
}

// Gap tells a subscriber that messages after From are not available: the
// stream continues after To (possibly in another epoch).
type Gap struct {
	Channel string
	From    Position
	To      Position
}

// Event is one item delivered to a subscriber: a message or a gap.
type Event struct {
	Msg *Message
	Gap *Gap
}

// ChannelInfo describes a channel.
type ChannelInfo struct {
	Name        string    `json:"channel"`
	Epoch       string    `json:"epoch"`
	LastID      string    `json:"last_id,omitempty"`
	LastSeq     uint64    `json:"last_seq"`
	Messages    int       `json:"messages"`
	Bytes       int64     `json:"bytes"`
	Subscribers int       `json:"subscribers"`
	Published   uint64    `json:"published"`
	LastPublish time.Time `json:"last_publish,omitzero"`
}

// Stats are broker-wide counters.
type Stats struct {
	Channels      int    `json:"channels"`
	Subscribers   int    `json:"subscribers"`
	Published     uint64 `json:"published"`
	Delivered     uint64 `json:"delivered"`
	SlowConsumers uint64 `json:"slow_consumer_disconnects"`
	Dropped       uint64 `json:"dropped"`
}

// ErrStore is wrapped by errors writing to a durable store (a full disk):
// the message was not published.
var ErrStore = errors.New("store write failed")
