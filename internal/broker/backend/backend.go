// Package backend opens a broker of any kind (in memory, durable on bbolt
// with --data-dir, or shared by nodes on Redis) through one constructor,
// so that serve and tests open them alike.
package backend

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/broker/boltlog"
	"github.com/pushctl/pushctl/internal/broker/redislog"
)

// Kinds of broker.
const (
	Memory = "memory"
	Bolt   = "bbolt"
	Redis  = "redis"
)

// Spec says which broker to open and how.
type Spec struct {
	// URL is "" or "memory" (in this process), or redis:// or rediss://
	// (shared by every node on that Redis).
	URL string
	// Dir, for a broker in this process, keeps channels on disk (bbolt).
	Dir string
	// Sync and SyncDelay tune the disk's group commit (see boltlog).
	Sync      string
	SyncDelay time.Duration
	// Retention is each channel's history; RetentionFor gives namespaces
	// their own; MemoryOnly names channels a durable broker keeps off disk.
	Retention    broker.Retention
	RetentionFor broker.RetentionFor
	MemoryOnly   func(channel string) bool
	// MaxBytes bounds the history of all channels of a broker in this
	// process together.
	MaxBytes int64
	// QueueSize and QueueBytes bound each subscriber's queue.
	QueueSize  int
	QueueBytes int64
	// NodeTimeout is how long a Redis node may miss heartbeats.
	NodeTimeout time.Duration
	// Logger receives the backend's logs (go-redis's included).
	Logger *slog.Logger
}

// Kind checks the spec and names the kind it opens.
func Kind(s Spec) (string, error) {
	switch {
	case s.URL == "" || s.URL == "memory":
		if s.Dir != "" {
			return Bolt, nil
		}
		return Memory, nil
	case strings.HasPrefix(s.URL, "redis://") || strings.HasPrefix(s.URL, "rediss://"):
		if s.Dir != "" {
			return "", fmt.Errorf("--data-dir and --broker %s are alternatives: history lives in Redis (see docs/durability.md)", Redacted(s.URL))
		}
		if s.MaxBytes > 0 {
			return "", fmt.Errorf("--max-bytes bounds one process's memory; with Redis set maxmemory on the Redis server instead")
		}
		return Redis, nil
	}
	return "", fmt.Errorf("--broker %q: want memory, redis://host:port/db or rediss://host:port/db", Redacted(s.URL))
}

// Opened is an open broker and what serve says of it.
type Opened struct {
	Broker *broker.Core
	Kind   string
	// Node is a Redis node's name; Channels how many channels a durable
	// store brought back.
	Node     string
	Channels int
	Took     time.Duration
	// Counters are the backend's own, for /stats and /metrics (nil: none).
	Counters func() map[string]uint64
}

// Open opens the broker s names; connecting to Redis may take until ctx
// ends (serve gives it 10 s).
func Open(ctx context.Context, s Spec) (*Opened, error) {
	kind, err := Kind(s)
	if err != nil {
		return nil, err
	}
	if s.Logger == nil {
		s.Logger = slog.New(slog.DiscardHandler)
	}
	start := time.Now()
	op := &Opened{Kind: kind}
	mo := broker.MemoryOptions{Retention: s.Retention, RetentionFor: s.RetentionFor, QueueSize: s.QueueSize,
		MaxBytes: s.MaxBytes, QueueBytes: s.QueueBytes}
	switch kind {
	case Memory:
		op.Broker = broker.NewMemory(mo)
	case Bolt:
		b, err := boltlog.OpenBroker(boltlog.Options{MemoryOptions: mo, Dir: s.Dir, Sync: s.Sync, SyncDelay: s.SyncDelay, MemoryOnly: s.MemoryOnly})
		if err != nil {
			return nil, err
		}
		op.Broker, op.Channels = b, b.Stats().Channels
	case Redis:
		// go-redis logs connection trouble itself ("pool.go:770: …"):
		// through the broker's logger, in its format and level.
		redis.SetLogger(redisLogger{s.Logger})
		hub := broker.NewHub()
		l, err := redislog.Open(ctx, redislog.Options{URL: s.URL, Retention: s.Retention, RetentionFor: s.RetentionFor,
			NodeTimeout: s.NodeTimeout, Logger: s.Logger}, hub)
		if err != nil {
			return nil, err
		}
		op.Broker = broker.New(hub, l, broker.CoreOptions{QueueSize: s.QueueSize, QueueBytes: s.QueueBytes})
		op.Node = l.Node()
		op.Counters = func() map[string]uint64 {
			return map[string]uint64{"redis_publish_outcome_unknown": l.OutcomeUnknown()}
		}
	}
	op.Took = time.Since(start)
	return op, nil
}

// Redacted is s with a URL's password hidden.
func Redacted(s string) string {
	if u, err := url.Parse(s); err == nil && u.User != nil {
		return u.Redacted()
	}
	return s
}

// redisLogger hands go-redis's log lines to the broker's logger.
type redisLogger struct{ log *slog.Logger }

func (l redisLogger) Printf(ctx context.Context, format string, v ...any) {
	l.log.Warn(strings.TrimSpace(fmt.Sprintf(format, v...)), "component", "redis")
}
