package consumer

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/broker/redisreply"
	"github.com/pushctl/pushctl/internal/wire"
)

// Consumers shared by nodes on Redis (docs/cluster.md, "Durable
// consumers"): a consumer's definition, the messages it keeps, who holds
// which and its cursor live in Redis (keys in redis_scripts.go), so any
// node serves any consumer and a client failing over to another node
// finds its position and pending deliveries there. One node at a time
// feeds each consumer (it holds the consumer's lease): it reads the
// channel through its broker from the stored cursor and appends with a
// script that checks the lease and the cursor, so nothing is kept twice;
// it also runs the ack-wait deadlines. When it dies, another node takes
// the lease within the lease's TTL and goes on from the stored cursor.
// Waiting fetches wake on a Redis Pub/Sub notice each change that makes
// deliveries ready publishes, and at the earliest deadline.

// RedisOptions configure a RedisEngine.
type RedisOptions struct {
	// Client is the Redis (or Redis Cluster) the nodes share.
	Client redis.UniversalClient
	// Prefix starts every key (the broker's own prefix).
	Prefix string
	// LeaseTTL is how long a node feeds a consumer without renewing its
	// lease; another node takes over within it after a crash (default
	// 10s, the broker's node timeout).
	LeaseTTL time.Duration
	// Node names this node in the consumers' leases (Info.Feeder); the
	// broker's node id (default: a random one).
	Node string
	// Logger receives warnings (default: discard).
	Logger *slog.Logger

	onReceiveError func() // tests: the wake-notice reader failed a read
	onAppendError  func() // tests: a feeder's append failed
}

// deadRetry is how long a message on its way to the dead-letter channel
// waits for the node publishing it before another node may (the first
// died between the two steps): a dead letter is published at least once.
// A variable for tests.
var deadRetry = 10 * time.Second

// minBackoff and maxBackoff bound the pause before trying Redis again
// after a failure (doubling from the one to the other).
const (
	minBackoff = 50 * time.Millisecond
	maxBackoff = 2 * time.Second
)

// wakeEvery bounds how long a waiting fetch goes without asking Redis
// (a Pub/Sub notice lost while its connection was broken).
const wakeEvery = 5 * time.Second

// RedisEngine keeps consumers in Redis, shared by every node.
type RedisEngine struct {
	b      broker.Broker
	rdb    redis.UniversalClient
	prefix string
	ttl    time.Duration
	log    *slog.Logger
	token  string // this node's lease token
	wakeCh string // Pub/Sub channel of wake notices

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	ps     *redis.PubSub

	mu      sync.Mutex
	handles map[string]*redisConsumer
	feeders map[string]context.CancelFunc
	closed  bool

	onReceiveError func()
	onAppendError  func()
}

var _ Engine = (*RedisEngine)(nil)

// NewRedis returns the consumers shared through o.Client; b is this
// node's broker (what it feeds consumers from and publishes dead letters
// to).
func NewRedis(b broker.Broker, o RedisOptions) (*RedisEngine, error) {
	if o.LeaseTTL <= 0 {
		o.LeaseTTL = 10 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Node == "" {
		var id [8]byte
		rand.Read(id[:])
		o.Node = hex.EncodeToString(id[:])
	}
	e := &RedisEngine{b: b, rdb: o.Client, prefix: o.Prefix, ttl: o.LeaseTTL, log: o.Logger, token: o.Node,
		wakeCh: o.Prefix + "consumers:wake", handles: map[string]*redisConsumer{}, feeders: map[string]context.CancelFunc{},
		onReceiveError: o.onReceiveError, onAppendError: o.onAppendError}
	e.ctx, e.cancel = context.WithCancel(context.Background())
	ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
	defer cancel()
	for _, s := range redisScripts {
		if err := s.Load(ctx, e.rdb).Err(); err != nil {
			e.cancel()
			return nil, fmt.Errorf("consumers on redis: %w", unavailable(err))
		}
	}
	e.ps = e.rdb.Subscribe(ctx, e.wakeCh)
	if _, err := e.ps.Receive(ctx); err != nil {
		e.ps.Close()
		e.cancel()
		return nil, fmt.Errorf("consumers on redis: %w", unavailable(err))
	}
	e.wg.Add(2)
	go e.receive()
	go e.scan()
	return e, nil
}

func (e *RedisEngine) registry() string { return e.prefix + "{=}:consumers" }

// keys are consumer name's keys, in the scripts' order.
func (e *RedisEngine) keys(name string) []string {
	base := e.prefix + "{c!" + name + "}:"
	parts := []string{"conf", "e", "msg", "ready", "fly", "delay", "dying", "cur", "og", "lease"}
	ks := make([]string, len(parts))
	for i, p := range parts {
		ks[i] = base + p
	}
	return ks
}

// unavailable maps an error of Redis: broker.ErrUnavailable when Redis
// could not be reached or refused the command for a passing reason
// (loading its data after a restart, a script running long, failing
// over: redisreply.Transient), so that callers try again (a WebSocket
// consuming) or answer broker_unavailable; Redis refusing writes for
// want of room (over maxmemory, a failed save: redisreply.StoreRefused)
// is broker.ErrStore (507 store_failed, as a full disk with --data-dir;
// nothing ran); an error reply of another kind (Redis answered: not an
// outage) is returned as is.
func unavailable(err error) error {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, broker.ErrUnavailable) {
		return err
	}
	if redisreply.StoreRefused(err) {
		return fmt.Errorf("%w: redis: %v", broker.ErrStore, err)
	}
	if redisreply.Is(err) && !redisreply.Transient(err) && !isReplyErr(err, "NOSCRIPT") {
		return fmt.Errorf("redis: %v", err)
	}
	// A NOSCRIPT here came after runOnce loaded the scripts: Redis forgot
	// them again (restarting, failing over).
	return fmt.Errorf("%w: redis: %v", broker.ErrUnavailable, err)
}

func isReplyErr(err error, code string) bool {
	var rerr redis.Error
	return errors.As(err, &rerr) && (strings.HasPrefix(rerr.Error(), code) || strings.HasPrefix(rerr.Error(), "ERR "+code))
}

// receive wakes the fetches waiting on a consumer a notice names.
func (e *RedisEngine) receive() {
	defer e.wg.Done()
	backoff := minBackoff
	for {
		msg, err := e.ps.ReceiveMessage(e.ctx)
		if err != nil {
			if e.ctx.Err() != nil {
				return
			}
			if e.onReceiveError != nil {
				e.onReceiveError()
			}
			// The connection broke: go-redis resubscribes at the next
			// read; what was missed meanwhile is found by the waiters'
			// wakeEvery. Not at once: while Redis is down each read
			// fails at once, and trying again without a pause spins.
			t := time.NewTimer(backoff)
			select {
			case <-e.ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			backoff = min(2*backoff, maxBackoff)
			continue
		}
		backoff = minBackoff
		e.mu.Lock()
		h := e.handles[msg.Payload]
		e.mu.Unlock()
		if h != nil {
			h.wakeUp()
		}
	}
}

// scan starts a feeder for every consumer in the registry, now and every
// third of the lease TTL, so that a consumer whose feeding node died is
// taken over.
func (e *RedisEngine) scan() {
	defer e.wg.Done()
	t := time.NewTicker(e.ttl / 3)
	defer t.Stop()
	for {
		ctx, cancel := context.WithTimeout(e.ctx, e.ttl)
		names, err := e.rdb.SMembers(ctx, e.registry()).Result()
		cancel()
		if err == nil {
			for _, n := range names {
				e.feed(n)
			}
		} else if e.ctx.Err() == nil {
			e.log.Warn("listing consumers in redis failed", "err", err)
		}
		// And those this node has open: one may have dropped out of the
		// registry (a delete's SREM after a create's SADD of the same
		// name); its feeder ends when it is not found.
		e.mu.Lock()
		open := make([]string, 0, len(e.handles))
		for n := range e.handles {
			open = append(open, n)
		}
		e.mu.Unlock()
		for _, n := range open {
			e.feed(n)
		}
		select {
		case <-e.ctx.Done():
			return
		case <-t.C:
		}
	}
}

// feed starts name's feeder unless it runs.
func (e *RedisEngine) feed(name string) {
	if ValidateName(name) != nil {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed || e.feeders[name] != nil {
		return
	}
	ctx, cancel := context.WithCancel(e.ctx)
	e.feeders[name] = cancel
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		e.runFeeder(ctx, name)
		e.mu.Lock()
		delete(e.feeders, name)
		e.mu.Unlock()
		cancel()
	}()
}

// Open implements Engine.
func (e *RedisEngine) Open(name string, cfg Config, create bool) (Handle, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil, ErrClosed
	}
	h := e.handles[name]
	e.mu.Unlock()
	if h == nil {
		var err error
		if h, err = e.load(name, cfg, create); err != nil {
			return nil, err
		}
	}
	if cfg.Filter != "" && cfg.Filter != h.cfg.Filter {
		return nil, wire.Errorf(http.StatusConflict, wire.CodeConsumerMismatch,
			"consumer %s reads %s, not %s; pick another name, or delete it first (pushctl consumers delete %s)", name, h.cfg.Filter, cfg.Filter, name)
	}
	return h, nil
}

// load reads consumer name from Redis, creating it when create is set.
func (e *RedisEngine) load(name string, cfg Config, create bool) (*redisConsumer, error) {
	ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
	defer cancel()
	keys := e.keys(name)
	var vals []any
	var err error
	if create && cfg.Filter != "" {
		cfg = cfg.WithDefaults()
		if err := cfg.Validate(); err != nil {
			return nil, err
		}
		conf, _ := json.Marshal(cfg)
		var id [8]byte
		rand.Read(id[:])
		startCh, start, err := e.startAt(ctx, cfg)
		if err != nil {
			return nil, err
		}
		// In the registry first: a consumer is never in Redis without
		// every node knowing to feed it (a name left by a create that
		// failed half-way is skipped).
		if err := e.rdb.SAdd(ctx, e.registry(), name).Err(); err != nil {
			return nil, unavailable(err)
		}
		vals, err = createScript.Run(ctx, e.rdb, keys, "", e.wakeCh, name, hex.EncodeToString(id[:]), conf, startCh, start).Slice()
	} else {
		vals, err = getScript.Run(ctx, e.rdb, keys).Slice()
	}
	if err != nil {
		return nil, unavailable(err)
	}
	if len(vals) != 3 || vals[0] == nil {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	// In the registry again: a delete of the same name racing this
	// create (its drop before the create, its SREM after the SADD) or an
	// earlier such race took it out, and nodes starting now would not
	// feed it. A name left there by a consumer deleted meanwhile is
	// skipped by their feeders.
	if err := e.rdb.SAdd(ctx, e.registry(), name).Err(); err != nil {
		return nil, unavailable(err)
	}
	h := &redisConsumer{e: e, name: name, keys: keys, wake: make(chan struct{})}
	h.id, _ = vals[0].(string)
	cs, _ := vals[1].(string)
	if err := json.Unmarshal([]byte(cs), &h.cfg); err != nil {
		return nil, fmt.Errorf("consumer %s: damaged settings in redis: %v", name, err)
	}
	h.cfg = h.cfg.WithDefaults()
	ms, _ := strconv.ParseInt(fmt.Sprint(vals[2]), 10, 64)
	h.created = time.UnixMilli(ms).UTC()
	e.mu.Lock()
	if old := e.handles[name]; old != nil && old.id == h.id {
		h = old
	} else {
		e.handles[name] = h
	}
	e.mu.Unlock()
	if create {
		e.feed(name)
	}
	return h, nil
}

// startAt is where a new consumer of one channel that starts with new
// messages starts: after the channel's last message (or, when the
// channel does not exist, at its first: startFirst). The creation's time
// alone (Redis's clock) would skip messages published right after it
// through a node whose clock is behind Redis's (a message's time is its
// node's). A pattern consumer starts at the creation's time.
func (e *RedisEngine) startAt(ctx context.Context, cfg Config) (channel, pos string, err error) {
	if cfg.Start == StartAll || broker.IsPattern(cfg.Filter) {
		return "", "", nil
	}
	inf, err := e.b.Channel(ctx, cfg.Filter)
	switch {
	case errors.Is(err, broker.ErrNotFound):
		return cfg.Filter, startFirst, nil
	case err != nil:
		return "", "", err
	}
	return cfg.Filter, broker.Position{Epoch: inf.Epoch, Seq: inf.LastSeq}.String(), nil
}

// startFirst in a consumer's cursor: from the channel's first message.
const startFirst = "*"

// forget drops h from the cache (its consumer was deleted or made again).
func (e *RedisEngine) forget(h *redisConsumer) {
	e.mu.Lock()
	if e.handles[h.name] == h {
		delete(e.handles, h.name)
	}
	e.mu.Unlock()
	h.wakeUp()
}

// List implements Engine.
func (e *RedisEngine) List(ctx context.Context) ([]Info, error) {
	names, err := e.rdb.SMembers(ctx, e.registry()).Result()
	if err != nil {
		return nil, unavailable(err)
	}
	sort.Strings(names)
	out := make([]Info, 0, len(names))
	for _, n := range names {
		h, err := e.Open(n, Config{}, false)
		if errors.Is(err, ErrNotFound) || ValidateName(n) != nil {
			continue
		}
		if err != nil {
			return nil, err
		}
		inf, err := h.Describe(ctx)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, inf)
	}
	return out, nil
}

// Delete implements Engine.
func (e *RedisEngine) Delete(name string) error {
	if err := ValidateName(name); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
	defer cancel()
	n, err := dropScript.Run(ctx, e.rdb, e.keys(name), "", e.wakeCh, name).Int()
	if err != nil {
		return unavailable(err)
	}
	if err := e.rdb.SRem(ctx, e.registry(), name).Err(); err != nil {
		return unavailable(err)
	}
	e.mu.Lock()
	h := e.handles[name]
	delete(e.handles, name)
	stop := e.feeders[name]
	e.mu.Unlock()
	if stop != nil {
		stop()
	}
	if h != nil {
		h.wakeUp()
	}
	if n == 0 {
		return fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	return nil
}

// Close implements Engine: this node stops feeding (its leases are
// dropped, so another node takes over at once) and waiting fetches end.
func (e *RedisEngine) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	e.mu.Unlock()
	e.cancel()
	err := e.ps.Close() // ends receive's read
	e.wg.Wait()
	return err
}

// redisConsumer is one consumer in Redis, as this node serves it.
type redisConsumer struct {
	e       *RedisEngine
	name    string
	id      string
	cfg     Config
	created time.Time
	keys    []string

	mu       sync.Mutex
	wake     chan struct{} // closed when deliveries may be ready
	fetchers int
}

var _ Handle = (*redisConsumer)(nil)

func (c *redisConsumer) Name() string   { return c.name }
func (c *redisConsumer) Config() Config { return c.cfg }

func (c *redisConsumer) wakeUp() {
	c.mu.Lock()
	close(c.wake)
	c.wake = make(chan struct{})
	c.mu.Unlock()
}

func (c *redisConsumer) wakeChan() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.wake
}

// run runs script on the consumer's keys with the common arguments.
func (c *redisConsumer) run(ctx context.Context, s *redis.Script, args ...any) *redis.Cmd {
	return s.Run(ctx, c.e.rdb, c.keys, append([]any{c.id, c.e.wakeCh, c.name}, args...)...)
}

// noRetry marks a command go-redis must not send again after a failure
// that may have reached Redis (a broken connection, a read timeout): a
// script that is not idempotent would run twice.
type noRetry struct{ *redis.Cmd }

func (noRetry) NoRetry() bool { return true }

// runOnce runs script at most once: fetch, giveback, nack and ack
// change the consumer in ways running them again does not leave alone (a
// second fetch takes more deliveries, a second giveback may hand back
// another client's delivery taken in between). A failure that may have
// reached Redis is the caller's error. NOSCRIPT (Redis lost its script
// cache: restarted, failed over) ran nothing: the script is loaded and
// sent once more; a NOSCRIPT again, or one whose script could not be
// loaded, is Redis unavailable for now (unavailable).
func (c *redisConsumer) runOnce(ctx context.Context, s *redis.Script, args ...any) *redis.Cmd {
	all := make([]any, 0, 3+len(c.keys)+3+len(args))
	all = append(all, "evalsha", s.Hash(), len(c.keys))
	for _, k := range c.keys {
		all = append(all, k)
	}
	all = append(all, c.id, c.e.wakeCh, c.name)
	all = append(all, args...)
	for try := 0; ; try++ {
		cmd := redis.NewCmd(ctx, all...)
		_ = c.e.rdb.Process(ctx, noRetry{cmd})
		if try > 0 || !isReplyErr(cmd.Err(), "NOSCRIPT") {
			return cmd
		}
		if err := s.Load(ctx, c.e.rdb).Err(); err != nil {
			// Not sent again: still a NOSCRIPT (nothing ran), with why.
			cmd.SetErr(fmt.Errorf("%w (loading the script again: %v)", cmd.Err(), err))
			return cmd
		}
	}
}

// fail maps a script's error: NOCONSUMER (deleted, or made again since
// this node read it) is ErrNotFound.
func (c *redisConsumer) fail(err error) error {
	if isReplyErr(err, "NOCONSUMER") {
		c.e.forget(c)
		return fmt.Errorf("%w: %s was deleted%w", ErrNotFound, c.name, errNoConsumer)
	}
	return unavailable(err)
}

// errNoConsumer marks an ErrNotFound from NOCONSUMER: this handle's
// consumer is gone, but one of the same name may have been created since
// (through another node).
var errNoConsumer = noConsumerErr{}

type noConsumerErr struct{}

func (noConsumerErr) Error() string { return "" }

// reloaded is the consumer named as c now in Redis, after c's failed
// with NOCONSUMER: deleted and created again (through another node) since
// this node cached c. ErrNotFound when there is none.
func (c *redisConsumer) reloaded(err error) (*redisConsumer, error) {
	if !errors.Is(err, errNoConsumer) {
		return nil, err
	}
	h, lerr := c.e.load(c.name, Config{}, false)
	if lerr != nil {
		if errors.Is(lerr, ErrNotFound) {
			return nil, err
		}
		return nil, lerr
	}
	// Not one reading another filter: the caller's grant was checked
	// for c's (its next request opens the new one, and is checked).
	if h.id == c.id || h.cfg.Filter != c.cfg.Filter {
		return nil, err
	}
	return h, nil
}

func (c *redisConsumer) opCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(c.e.ctx, 10*time.Second)
}

// Fetch implements Handle.
func (c *redisConsumer) Fetch(ctx context.Context, max int, wait time.Duration) ([]Delivery, error) {
	if max <= 0 {
		max = 1
	}
	max = min(max, MaxFetch)
	var timeout <-chan time.Time
	if wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		timeout = t.C
	}
	counted := c
	counted.mu.Lock()
	counted.fetchers++
	counted.mu.Unlock()
	defer func() {
		counted.mu.Lock()
		counted.fetchers--
		counted.mu.Unlock()
	}()
	reloaded := false
	for {
		wake := c.wakeChan()
		out, next, err := c.fetchOnce(ctx, max)
		if err != nil && !reloaded {
			// Made again since this node cached it: serve the new one.
			reloaded = true
			if h, rerr := c.reloaded(err); rerr == nil {
				c = h
				continue
			}
		}
		if err != nil || len(out) > 0 || wait <= 0 {
			return out, err
		}
		d := wakeEvery
		if next > 0 {
			d = min(d, next)
		}
		t := time.NewTimer(d)
		select {
		case <-wake:
		case <-t.C:
		case <-timeout:
			t.Stop()
			return nil, nil
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-c.e.ctx.Done():
			t.Stop()
			return nil, ErrClosed
		}
		t.Stop()
	}
}

// fetchOnce takes what is ready; next is when the earliest deadline is
// due (0: none). The script runs at most once (runOnce). When it fails
// after it may have reached Redis (the connection broke before the
// reply, a read timeout), what it took is given back by the note it
// left (givebackFetchScript), unless another fetch ran since or Redis is
// unreachable: then those deliveries are held by no one until the ack
// wait passes, and each used one of max_deliveries (with max_deliveries
// 1 such a message goes to the dead-letter channel never having been
// handed out). A gap notice it took is lost with its reply.
func (c *redisConsumer) fetchOnce(ctx context.Context, max int) ([]Delivery, time.Duration, error) {
	if c.e.ctx.Err() != nil {
		return nil, 0, ErrClosed
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var tok [8]byte
	rand.Read(tok[:])
	token := hex.EncodeToString(tok[:])
	vals, err := c.runOnce(rctx, fetchScript, max, c.cfg.AckWait.Milliseconds(), c.cfg.MaxDeliveries, c.cfg.MaxInflight, deadRetry.Milliseconds(), token).Slice()
	if err != nil {
		var rerr redis.Error
		if !errors.As(err, &rerr) {
			// It may have run (the reply was lost): give back what it
			// took, unless another fetch ran since.
			gctx, gcancel := c.opCtx()
			if gerr := c.run(gctx, givebackFetchScript, token).Err(); gerr != nil && !isReplyErr(gerr, "NOCONSUMER") {
				c.e.log.Warn("a fetch failed and what it may have taken was not given back; it comes again after the ack wait",
					"consumer", c.name, "err", gerr)
			}
			gcancel()
		}
		return nil, 0, c.fail(err)
	}
	if len(vals) != 4 {
		return nil, 0, fmt.Errorf("consumer %s: unexpected reply from redis", c.name)
	}
	var out []Delivery
	for _, it := range asSlice(vals[0]) {
		d, err := decodeDelivery(asSlice(it))
		if err != nil {
			c.e.log.Warn("consumer entry damaged in redis; skipped", "consumer", c.name, "err", err)
			continue
		}
		d.from = c.id
		out = append(out, d)
	}
	c.bury(asSlice(vals[1]))
	return out, untilNext(vals[2], vals[3]), nil
}

func asSlice(v any) []any { s, _ := v.([]any); return s }

func asInt(v any) int64 {
	switch x := v.(type) {
	case int64:
		return x
	case string:
		n, _ := strconv.ParseInt(x, 10, 64)
		return n
	}
	return 0
}

func untilNext(next, now any) time.Duration {
	n := asInt(next)
	if n == 0 {
		return 0
	}
	return max(time.Duration(n-asInt(now))*time.Millisecond, time.Millisecond)
}

// gapRecord is a gap notice as the scripts keep it.
type gapRecord struct {
	Channel   string `json:"c"`
	FromEpoch string `json:"fe"`
	FromSeq   string `json:"fs"`
	ToEpoch   string `json:"te"`
	ToSeq     string `json:"ts"`
	Lost      string `json:"l"`
}

// decodeDelivery reads a {seq, count, record} of the fetch script.
func decodeDelivery(it []any) (Delivery, error) {
	if len(it) != 3 {
		return Delivery{}, errDamaged
	}
	seq, _ := strconv.ParseUint(fmt.Sprint(it[0]), 10, 64)
	count := int(asInt(it[1]))
	rec, _ := it[2].(string)
	if seq == 0 || count < 0 || int64(count) != asInt(it[1]) {
		return Delivery{}, errDamaged
	}
	if count == 0 {
		var g gapRecord
		if err := json.Unmarshal([]byte(rec), &g); err != nil {
			return Delivery{}, errDamaged
		}
		gap := &broker.Gap{Channel: g.Channel, From: broker.Position{Epoch: g.FromEpoch}, To: broker.Position{Epoch: g.ToEpoch}}
		gap.From.Seq, _ = strconv.ParseUint(g.FromSeq, 10, 64)
		gap.To.Seq, _ = strconv.ParseUint(g.ToSeq, 10, 64)
		lost, _ := strconv.ParseUint(g.Lost, 10, 64)
		return Delivery{ID: deliveryID(seq, 1), Count: 1, Gap: gap, Lost: lost}, nil
	}
	se, err := decodeEntry(seqKey(seq), []byte(rec))
	if err != nil || se.Msg == nil {
		return Delivery{}, errDamaged
	}
	return Delivery{ID: deliveryID(seq, count), Count: count, Msg: se.Msg}, nil
}

// bury publishes entries out of deliveries to the dead-letter channel,
// then removes them (buriedScript). A node dying between the two leaves
// them dying: deadRetry later another node publishes them again, so a
// dead letter may be published twice, never lost. Runs in the
// background, as the memory engine's does.
func (c *redisConsumer) bury(items []any) {
	if len(items) == 0 {
		return
	}
	c.e.mu.Lock()
	if c.e.closed {
		// Left dying: another node publishes them after deadRetry.
		c.e.mu.Unlock()
		return
	}
	c.e.wg.Add(1)
	c.e.mu.Unlock()
	go func() {
		defer c.e.wg.Done()
		ctx, cancel := c.opCtx()
		defer cancel()
		for _, it := range items {
			d, err := decodeDelivery(asSlice(it))
			if err != nil || d.Msg == nil {
				continue
			}
			seq, _, _ := ParseDeliveryID(d.ID)
			dl := &broker.Message{Channel: DeadLetterPrefix + c.name, Event: d.Msg.Event, Kind: broker.KindJSON,
				Data: wire.AppendDeadLetter(nil, c.name, d.Count, d.Msg)}
			if _, _, err := c.e.b.Publish(ctx, dl); err != nil {
				c.e.log.Warn("dead-letter publish failed; another try follows", "consumer", c.name, "err", err, "in", deadRetry)
				continue
			}
			if err := c.run(ctx, buriedScript, seq).Err(); err != nil {
				c.e.log.Warn("dead letter published but not removed; it may be published again", "consumer", c.name, "err", err)
			}
		}
	}()
}

// Giveback implements Handle: to the consumer that gave them, which is
// not c's when this node has served a consumer made again since it
// cached c (Fetch reloads); deliveries of a consumer deleted since are
// given back to nobody (their ids may be the new consumer's others hold).
func (c *redisConsumer) Giveback(ds []Delivery) {
	byFrom := map[string][]any{}
	for _, d := range ds {
		if d.Msg == nil {
			continue
		}
		if seq, count, err := ParseDeliveryID(d.ID); err == nil {
			byFrom[d.from] = append(byFrom[d.from], seq, count)
		}
	}
	for from, args := range byFrom {
		to := c
		if from != c.id {
			h, err := c.e.load(c.name, Config{}, false)
			if err != nil || h.id != from {
				continue // gone since (or Redis unreachable: they come again after the ack wait)
			}
			to = h
		}
		to.giveback(args)
	}
}

func (c *redisConsumer) giveback(args []any) {
	ctx, cancel := c.opCtx()
	defer cancel()
	if err := c.runOnce(ctx, givebackScript, args...).Err(); err != nil {
		if isReplyErr(err, "NOCONSUMER") {
			c.fail(err) // deleted: nothing to give back to
			return
		}
		c.e.log.Warn("giving deliveries back failed; they come again after the ack wait", "consumer", c.name, "err", unavailable(err))
	}
}

// Ack implements Handle.
func (c *redisConsumer) Ack(ids []string) (int, error) {
	args := make([]any, 0, 1+2*len(ids))
	args = append(args, c.cfg.MaxInflight)
	for _, id := range ids {
		seq, count, err := ParseDeliveryID(id)
		if err != nil {
			return 0, err
		}
		args = append(args, seq, count)
	}
	ctx, cancel := c.opCtx()
	defer cancel()
	n, err := c.runOnce(ctx, ackScript, args...).Int()
	if err != nil {
		// Not retried on a consumer made again since this node cached
		// c: delivery ids do not name the consumer they came from, so
		// an id of the old one could remove a message the new one gave
		// another client. The ack is refused (not found); those
		// messages come again after the ack wait, and the next request
		// opens the new consumer.
		return 0, c.fail(err)
	}
	return n, nil
}

// Nack implements Handle.
func (c *redisConsumer) Nack(id string, delay time.Duration) (ok, deadLettered bool, err error) {
	seq, count, err := parseNack(id, delay)
	if err != nil {
		return false, false, err
	}
	ctx, cancel := c.opCtx()
	defer cancel()
	vals, err := c.runOnce(ctx, nackScript, seq, count, delay.Milliseconds(), c.cfg.MaxDeliveries, deadRetry.Milliseconds()).Slice()
	if err != nil {
		return false, false, c.fail(err) // not retried on a new consumer: see Ack
	}
	switch asInt(vals[0]) {
	case 1:
		return true, false, nil
	case 2:
		if len(vals) == 2 {
			c.bury([]any{[]any{strconv.FormatUint(seq, 10), int64(count), vals[1]}})
		}
		return true, true, nil
	}
	return false, false, nil
}

// Synced implements Handle: a script's change is Redis's once it
// returned (how it survives a crash of Redis is Redis's persistence).
func (c *redisConsumer) Synced(context.Context) error { return nil }

// Describe implements Handle. Fetchers counts the fetches waiting on
// this node.
func (c *redisConsumer) Describe(ctx context.Context) (Info, error) {
	vals, err := c.run(ctx, infoScript).Slice()
	if err != nil {
		err = c.fail(err)
		h, rerr := c.reloaded(err)
		if rerr != nil {
			return Info{}, err
		}
		c = h // made again since this node cached it
		if vals, err = c.run(ctx, infoScript).Slice(); err != nil {
			return Info{}, c.fail(err)
		}
	}
	if len(vals) != 5 {
		return Info{}, fmt.Errorf("consumer %s: unexpected reply from redis", c.name)
	}
	h := map[string]string{}
	kv := asSlice(vals[0])
	for i := 0; i+1 < len(kv); i += 2 {
		h[fmt.Sprint(kv[i])] = fmt.Sprint(kv[i+1])
	}
	n := func(k string) uint64 { v, _ := strconv.ParseInt(h[k], 10, 64); return uint64(max(v, 0)) }
	inf := Info{Name: c.name, Created: c.created, DeadLetter: DeadLetterPrefix + c.name, Cursor: map[string]string{}}
	inf.Feeder, _ = vals[4].(string)
	inf.Config = InfoConf{Filter: c.cfg.Filter, AckWait: c.cfg.AckWait.String(), MaxDeliveries: c.cfg.MaxDeliveries,
		MaxInflight: c.cfg.MaxInflight, MaxPending: c.cfg.MaxPending, MaxPendingBytes: c.cfg.MaxPendingBytes, Start: c.cfg.Start}
	inf.Counters = Counters{Delivered: n("delivered"), Redelivered: n("redelivered"), Acked: n("acked"), Nacked: n("nacked"),
		Expired: n("expired"), DeadLettered: n("dead_lettered"), Gaps: n("gaps"), Lost: n("lost")}
	inf.Pending = int(n("pending"))
	inf.Inflight = int(asInt(vals[1]))
	inf.Waiting = max(inf.Pending-inf.Inflight-int(asInt(vals[2])), 0)
	inf.Lag = inf.Waiting
	cur := asSlice(vals[3])
	for i := 0; i+1 < len(cur); i += 2 {
		if v := fmt.Sprint(cur[i+1]); v != startFirst {
			inf.Cursor[fmt.Sprint(cur[i])] = v
		}
	}
	c.mu.Lock()
	inf.Fetchers = c.fetchers
	c.mu.Unlock()
	return inf, nil
}

// cursor is the consumer's stored cursor, and whether it says to read its
// channel from its first message (startFirst).
func (c *redisConsumer) cursor(ctx context.Context) (broker.Cursor, bool, error) {
	all, err := c.e.rdb.HGetAll(ctx, c.keys[7]).Result()
	if err != nil {
		return nil, false, unavailable(err)
	}
	cur, first := broker.Cursor{}, false
	for ch, v := range all {
		if p, err := broker.ParsePosition(v); err == nil {
			cur[ch] = p
		} else if v == startFirst && ch == c.cfg.Filter {
			first = true
		}
	}
	return cur, first, nil
}
