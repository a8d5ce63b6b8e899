package consumer

import (
	"context"
	"time"
)

// Engine is where a broker's durable consumers live: this process's
// memory or its --data-dir (Manager, through Manager.Engine), or Redis,
// shared by every node (RedisEngine). The door and the server reach
// consumers only through it.
type Engine interface {
	// Open returns consumer name, creating it with cfg when create is set
	// and it does not exist. An existing consumer keeps its own settings,
	// but its filter must be cfg's (when cfg names one).
	Open(name string, cfg Config, create bool) (Handle, error)
	// List describes every consumer, by name.
	List(ctx context.Context) ([]Info, error)
	// Delete removes a consumer and everything kept for it.
	Delete(name string) error
	// Close stops the engine; call it before closing the broker.
	Close() error
}

// Handle is one consumer as an Engine hands it out. Its methods are safe
// for concurrent use.
type Handle interface {
	Name() string
	Config() Config
	// Describe is the consumer's state and counters now.
	Describe(ctx context.Context) (Info, error)
	// Fetch returns up to max deliveries, waiting up to wait for the
	// first; none (and no error) when wait passes with nothing.
	Fetch(ctx context.Context, max int, wait time.Duration) ([]Delivery, error)
	// Giveback returns deliveries taken but not handed to the client:
	// they are ready again at once and the delivery does not count.
	Giveback(ds []Delivery)
	// Ack acknowledges deliveries by id and returns how many messages
	// this call removed.
	Ack(ids []string) (int, error)
	// Nack refuses a delivery (see Consumer.Nack).
	Nack(id string, delay time.Duration) (ok, deadLettered bool, err error)
	// Synced waits until the changes so far survive a crash of this
	// process (with --data-dir: saved; on Redis: at once).
	Synced(ctx context.Context) error
}

var (
	_ Handle = (*Consumer)(nil)
	_ Engine = managerEngine{}
)

// Describe implements Handle.
func (c *Consumer) Describe(context.Context) (Info, error) { return c.Info(), nil }

// Engine is m as an Engine.
func (m *Manager) Engine() Engine { return managerEngine{m} }

type managerEngine struct{ *Manager }

func (e managerEngine) Open(name string, cfg Config, create bool) (Handle, error) {
	c, err := e.Manager.Open(name, cfg, create)
	if err != nil {
		return nil, err
	}
	return c, nil
}

func (e managerEngine) List(context.Context) ([]Info, error) { return e.Manager.List(), nil }

// MaxNackDelay bounds a nack's delay.
const MaxNackDelay = 24 * time.Hour

// parseNack checks a nack (either engine's): its delivery id, and a delay
// of 0 to MaxNackDelay.
func parseNack(id string, delay time.Duration) (seq uint64, count int, err error) {
	if seq, count, err = ParseDeliveryID(id); err != nil {
		return 0, 0, err
	}
	if delay < 0 || delay > MaxNackDelay {
		return 0, 0, badParam("delay %s: want 0 to 24h", delay)
	}
	return seq, count, nil
}
