// Package redislog is the broker Log that lets several pushctl nodes share
// one set of channels through Redis: each channel's history is a Redis
// Stream, its epoch and sequence a hash, and a Lua script appends,
// numbers and publishes a message in one round trip. Nodes receive over
// Pub/Sub only the channels and patterns their local subscribers follow,
// refill from the stream when they see a sequence jump, and keep
// cluster-wide subscriber counts in Redis.
//
// On Redis Cluster (found by asking the server) a channel's keys and its
// sharded Pub/Sub channel live in the channel's slot, so each shard
// carries its own channels: nodes SSUBSCRIBE on the shard's master, one
// connection per shard. Patterns cannot be sharded; while any node has a
// pattern subscriber, publishes also go out on classic Pub/Sub.
package redislog

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	neturl "net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/broker/redisreply"
)

// Options configure the Redis log.
type Options struct {
	// URL is redis://[user:password@]host:port/db or rediss://… (TLS).
	URL string
	// Prefix starts every key and Pub/Sub channel (default "pushctl:").
	Prefix string
	// Retention is what each channel's stream keeps.
	broker.Retention
	// RetentionFor, when set, gives the channels it knows a retention of
	// their own (their namespace's). Every node must be given the same.
	RetentionFor broker.RetentionFor
	// NodeTimeout is how long a node may miss heartbeats before the
	// others take its subscribers out of the counts (default 10s).
	NodeTimeout time.Duration
	// Heartbeat is how often a node says it is alive and reads the
	// cluster totals (default 1s).
	Heartbeat time.Duration
	// PublishTimeout is how long a publish whose outcome is not known
	// (the connection broke, Redis did not answer) is sent again before
	// it fails with broker.ErrOutcomeUnknown (default 10s).
	PublishTimeout time.Duration
	// StallAfter is how long Redis may take to answer before the node
	// reports itself degraded (default 2s).
	StallAfter time.Duration
	// Now is the clock; tests inject one.
	Now func() time.Time
	// Logger receives connection state changes (default: discard).
	Logger *slog.Logger

	// beforeResync, set by tests, runs before a Pub/Sub connection that
	// broke ("classic", "shard") asks for its resync, while what it
	// hears is dispatched.
	beforeResync func(conn string)
	// beforeDial, set by tests, runs before a shard's rebuild makes a
	// connection anew (not its first), without l.mu held.
	beforeDial func()
	// resyncPing, set by tests, stands for sending the classic
	// connection's PING that asks for its resync after it broke.
	resyncPing func() error
}

func (o *Options) fill() {
	if o.Prefix == "" {
		o.Prefix = "pushctl:"
	}
	o.Retention = o.Retention.WithDefaults()
	if o.NodeTimeout <= 0 {
		o.NodeTimeout = 10 * time.Second
	}
	if o.Heartbeat <= 0 {
		o.Heartbeat = time.Second
	}
	if o.PublishTimeout <= 0 {
		o.PublishTimeout = 10 * time.Second
	}
	if o.StallAfter <= 0 {
		o.StallAfter = 2 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Log is a broker.Log on Redis.
type Log struct {
	opts    Options
	rdb     redis.UniversalClient
	pub     redis.UniversalClient // publishes: on a single Redis without go-redis's retries
	cluster *redis.ClusterClient  // nil on a single Redis
	sink    broker.Sink
	node    string
	ps      *redis.PubSub     // classic Pub/Sub: counts, patterns, channels on a single Redis
	shards  map[string]*shard // Redis Cluster: sharded Pub/Sub by master address (under mu)

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	queue    chan *op
	pubDone  chan struct{}
	calls    atomic.Uint64 // script call ids
	pc       patCache      // the publisher's copy of the pattern counts
	busy     atomic.Int64  // when the pipeline in flight was sent (UnixNano; 0: none)
	beating  atomic.Int64  // when the heartbeat in flight was sent (UnixNano; 0: none)
	reaping  atomic.Bool   // a goroutine reaps dead nodes
	waitKick atomic.Bool   // a heartbeat is asked for while another node reaps this one

	// afterCounts, set only by tests (export_test.go), is called on
	// Redis Cluster once a batch's counts were read, before the batch
	// is sent, with how it will be published.
	afterCounts atomic.Pointer[func(mode string, channels []string)]

	sonly      sonlyState   // the publisher's batches sent on sharded Pub/Sub only (sonly.go)
	parked     []*call      // the publisher's calls waiting for a slot to move (runBatch)
	sonlyN     atomic.Int32 // len(sonly.calls), for tests
	sonlyReads atomic.Int64 // reads of the routes by the idle publisher, for tests
	sonlyIdle  atomic.Int64 // set only by tests: the idle publisher's wait before it reads the routes
	sonlyOff   atomic.Bool  // set only by tests: nothing is sent again

	outcomeUnknown atomic.Uint64 // publishes failed with ErrOutcomeUnknown
	closing        atomic.Bool   // Close began: appends are retried for 2s at most
	qmu            sync.RWMutex  // submitters hold it shared; Close takes it
	closed         bool

	sendMu    sync.Mutex // held while counts are sent
	mu        sync.Mutex
	refs      map[string]*ref      // followed channels and patterns
	pings     map[string]chan bool // pong payload -> waiter
	pingID    uint64
	deltas    map[string]int // count changes not yet sent
	synced    bool           // the node's counts in Redis match refs
	known     bool           // a heartbeat was accepted
	reaped    bool           // the others took this node for dead: rejoin
	reapWait  bool           // another node is reaping this one
	sentTotal int            // the node's "t" count as last sent
	flush     chan struct{}

	lastMu sync.Mutex
	last   map[string]*seen // receiver: what each followed channel delivered

	presenceMu sync.Mutex
	lost       func(node, channel, id string) error // from WatchPresence
	rejoin     func()
	lifeLost   func(node, kind, key, info string) error // from WatchLifecycle
	lifeRejoin func()

	countsMu sync.Mutex
	countsCh chan struct{} // closed when any node's counts change

	downMu   sync.Mutex
	downs    map[string]string      // side ("commands", "pubsub", "shard <addr>") -> reason
	down     atomic.Pointer[string] // nil: every side is up
	full     map[string]bool        // sides down because Redis refuses writes (redisreply.StoreRefused)
	moving   map[string]time.Time   // sides failing because a slot moves (redisreply.Moving): since when
	refuse   atomic.Pointer[string] // a command side down, not for want of room: writes are not sent
	holding  atomic.Bool            // some channel is on hold (seen.hold)
	heldAt   atomic.Int64           // when a channel was last put on hold (ns)
	total    atomic.Int64
	channels atomic.Int64
	nodes    atomic.Int64
	epochs   atomic.Int64
}

type ref struct {
	all, counted int
	shard        *shard // Redis Cluster: where the channel is subscribed
}

// seen is where a channel stands on this node: the newest position handed
// to the hub (delivered), or, before any, where a reader started (floor);
// at is the time (µs) of the message at pos when known (0: not), which
// tells whether Redis still holds that message or gave its position to
// another (wentBack).
type seen struct {
	pos       broker.Position
	delivered bool
	at        int64
	// retired is the epoch this node moved the channel from because Redis
	// went back (its messages heard since are in the stream at their
	// positions, read under pos.Epoch).
	retired string
	// hold: a Pub/Sub connection that carried the channel broke, and no
	// resync has compared the channel with Redis since (dispatch leaves
	// what is heard meanwhile to that resync, which refills it).
	hold bool
}

type op struct {
	m      *broker.Message
	script *redis.Script // nil: a publish
	args   []any         // a presence script's first four arguments
	res    chan opResult
}

type opResult struct {
	n    int
	vals []any // a presence script's reply
	err  error
}

var (
	_ broker.Log         = (*Log)(nil)
	_ broker.Follower    = (*Log)(nil)
	_ broker.ClusterView = (*Log)(nil)
	_ broker.Health      = (*Log)(nil)
)

// Open connects to Redis, checks it can run pushctl's scripts (Redis 6.2
// or later) and returns a running log handing messages to sink.
func Open(ctx context.Context, o Options, sink broker.Sink) (*Log, error) {
	o.fill()
	ropts, err := redis.ParseURL(o.URL)
	if err != nil {
		return nil, fmt.Errorf("--broker %s: %w", redactURL(o.URL), err)
	}
	ropts.Protocol = 2 // Pub/Sub replies as RESP2 arrays, whatever the server
	var rdb redis.UniversalClient = redis.NewClient(ropts)
	info, err := rdb.Info(ctx, "cluster").Result()
	if err != nil {
		rdb.Close()
		return nil, fmt.Errorf("%w: redis at %s: %v", broker.ErrUnavailable, ropts.Addr, err)
	}
	var cluster *redis.ClusterClient
	if strings.Contains(info, "cluster_enabled:1") {
		rdb.Close()
		if cluster, err = openCluster(ctx, o.URL, ropts); err != nil {
			return nil, err
		}
		rdb = cluster
	}
	var id [8]byte
	rand.Read(id[:])
	l := &Log{
		opts:     o,
		rdb:      rdb,
		cluster:  cluster,
		shards:   map[string]*shard{},
		downs:    map[string]string{},
		full:     map[string]bool{},
		moving:   map[string]time.Time{},
		sink:     sink,
		node:     hex.EncodeToString(id[:]),
		queue:    make(chan *op, 8192),
		pubDone:  make(chan struct{}),
		refs:     map[string]*ref{},
		pings:    map[string]chan bool{},
		deltas:   map[string]int{},
		flush:    make(chan struct{}, 1),
		last:     map[string]*seen{},
		countsCh: make(chan struct{}),
	}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	for _, s := range scripts {
		if err := s.Load(ctx, rdb).Err(); err != nil {
			rdb.Close()
			return nil, fmt.Errorf("redis at %s cannot run pushctl's scripts (Redis 6.2 or later is needed): %v", ropts.Addr, err)
		}
	}
	l.ps = rdb.Subscribe(ctx, l.key("counts"))
	if err := l.ps.Ping(ctx, "start"); err != nil {
		l.ps.Close()
		rdb.Close()
		return nil, fmt.Errorf("%w: redis Pub/Sub: %v", broker.ErrUnavailable, err)
	}
	// The first heartbeat, before Open returns: the node is known and
	// the totals are read before it serves anyone.
	if err := l.sendCounts(true); err != nil {
		l.ps.Close()
		rdb.Close()
		return nil, l.unavailable(err)
	}
	l.pub = rdb
	if cluster == nil {
		// Publishes are sent again by runBatch, which knows whether a
		// failed attempt may have reached Redis.
		popts := *ropts
		popts.MaxRetries = -1
		// A new connection goes straight to work (no CLIENT SETINFO
		// round trip to wait for), and an attempt Redis does not answer
		// is given up after 3 s, then sent again.
		popts.DisableIdentity = true
		popts.ReadTimeout, popts.WriteTimeout = 3*time.Second, 3*time.Second
		l.pub = redis.NewClient(&popts)
	}
	l.refreshTotals(true)
	l.wg.Add(2)
	go l.receive()
	go l.publisher()
	go l.heartbeat()
	return l, nil
}

// openCluster connects to the Redis Cluster that the node at url belongs
// to; url may name more nodes with ?addr=host:port.
func openCluster(ctx context.Context, url string, ropts *redis.Options) (*redis.ClusterClient, error) {
	if ropts.DB != 0 {
		return nil, fmt.Errorf("--broker %s: Redis Cluster has only database 0", redactURL(url))
	}
	u, _ := neturl.Parse(url)
	u.Path = ""
	copts, err := redis.ParseClusterURL(u.String())
	if err != nil {
		return nil, fmt.Errorf("--broker %s: %w", redactURL(url), err)
	}
	copts.Protocol = 2
	// go-redis reads the slots' masters again on a MOVED reply, and
	// otherwise every minute by default: a master that died answers
	// nothing, so after a failover the node would send its slots' writes
	// to it for up to a minute. setHealth asks for a reload on every
	// failure too; this is the slow path.
	copts.ClusterStateReloadInterval = 5 * time.Second
	c := redis.NewClusterClient(copts)
	if err := c.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
		return m.Ping(ctx).Err()
	}); err != nil {
		c.Close()
		return nil, fmt.Errorf("%w: redis cluster at %s: %v", broker.ErrUnavailable, ropts.Addr, err)
	}
	return c, nil
}

// redactURL hides a password in a Redis URL, for messages and logs.
func redactURL(s string) string {
	u, err := neturl.Parse(s)
	if err != nil || u.User == nil {
		return s
	}
	return u.Redacted()
}

// Node is this node's id in Redis.
func (l *Log) Node() string { return l.node }

// key is one of pushctl's own keys (and the counts Pub/Sub channel); the
// "{=}" hash tag, which no channel name can be, keeps them in one slot
// on Redis Cluster so the count scripts can use them together.
func (l *Log) key(s string) string { return l.opts.Prefix + "{=}:" + s }

// chanKey is the key of part of a channel ("m" meta, "s" stream); the
// braces put a channel's keys and Pub/Sub channel in one cluster slot.
func (l *Log) chanKey(ch, part string) string { return l.opts.Prefix + "{" + ch + "}:" + part }

// pubsubChannel is the Pub/Sub channel a channel's messages go out on.
func (l *Log) pubsubChannel(ch string) string { return l.opts.Prefix + "{" + ch + "}" }

// globFor turns a pushctl pattern into a Redis glob over pubsubChannel
// names; it matches more than the pattern ('*' spans dots), and the
// receiver filters with broker.Match.
func (l *Log) globFor(pattern string) string {
	segs := strings.Split(pattern, ".")
	for i, s := range segs {
		if s == "*" || s == ">" {
			segs[i] = "*"
		}
	}
	return escapeGlob(l.opts.Prefix) + "{" + strings.Join(segs, ".") + "}"
}

func escapeGlob(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// channelOf is the pushctl channel of a Pub/Sub channel name.
func (l *Log) channelOf(psChannel string) (string, bool) {
	rest, ok := strings.CutPrefix(psChannel, l.opts.Prefix+"{")
	if !ok || !strings.HasSuffix(rest, "}") {
		return "", false
	}
	return rest[:len(rest)-1], true
}

// unavailable wraps a Redis error as broker.ErrUnavailable and marks the
// log degraded: Redis unreachable, or refusing commands for a passing
// reason (loading after a restart, a long script, failing over:
// redisreply.Transient). Redis refusing writes because it cannot keep
// more (redisreply.StoreRefused) is broker.ErrStore, degraded too. Any
// other error reply is not an outage.
func (l *Log) unavailable(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	if redisreply.StoreRefused(err) {
		l.setHealth(sideCommands, err)
		return fmt.Errorf("%w: redis: %v", broker.ErrStore, err)
	}
	if redisreply.Is(err) && !redisreply.Transient(err) {
		return fmt.Errorf("redis: %v", err) // Redis answered: not an outage
	}
	l.setHealth(sideCommands, err)
	return fmt.Errorf("%w: redis: %v", broker.ErrUnavailable, err)
}

// The sides of the connection to Redis whose health is tracked; a shard's
// sharded Pub/Sub connection is "shard <addr>".
const (
	sideCommands = "commands" // cleared by the next successful heartbeat
	sidePubSub   = "pubsub"   // cleared once resubscribed and refilled
)

// pubSubSide says side is a Pub/Sub connection: while only those are
// down the node is degraded (its subscribers hear nothing live until it
// has resubscribed and refilled) but still publishes, over the command
// connections.
func pubSubSide(side string) bool {
	return side == sidePubSub || strings.HasPrefix(side, "shard ")
}

// setHealth records the state of one side. A slot moving between
// shards (redisreply.Moving) is not an outage: what failed for it is
// sent again, and the node goes on sending everything else; only when a
// side has failed so for longer than StallAfter (a slot left half moved:
// pushctl's own {=} keys, say, failing every heartbeat) is it down.
func (l *Log) setHealth(side string, err error) {
	if err != nil && redisreply.Moving(err) {
		l.downMu.Lock()
		since, ok := l.moving[side]
		if !ok {
			l.moving[side] = time.Now()
		}
		l.downMu.Unlock()
		if !ok || time.Since(since) <= l.opts.StallAfter {
			return
		}
	} else {
		l.downMu.Lock()
		delete(l.moving, side)
		l.downMu.Unlock()
	}
	if err != nil && l.cluster != nil && !redisreply.StoreRefused(err) {
		// A master unreachable or the cluster down: a failover may have
		// given its slots to a replica, which only a fresh read of the
		// slots tells (go-redis reloads at most every 200 ms).
		l.cluster.ReloadState(l.ctx)
	}
	l.downMu.Lock()
	defer l.downMu.Unlock()
	was := l.down.Load()
	if err == nil {
		delete(l.downs, side)
		delete(l.full, side)
	} else {
		what := "redis unreachable"
		if redisreply.Moving(err) {
			what = "a redis cluster slot has been moving between shards for over " + l.opts.StallAfter.String()
		}
		if redisreply.StoreRefused(err) {
			what = "redis refuses writes (over maxmemory, or a save failed)"
			l.full[side] = true
		} else {
			delete(l.full, side)
		}
		if side != sideCommands && side != sidePubSub {
			what += ": " + side
		}
		l.downs[side] = what + ": " + err.Error()
	}
	var now, refuse *string
	sides := make([]string, 0, len(l.downs))
	for s := range l.downs {
		sides = append(sides, s)
	}
	sort.Strings(sides)
	for _, s := range sides {
		msg := l.downs[s]
		if now == nil {
			now = &msg
		}
		if refuse == nil && !pubSubSide(s) && !l.full[s] {
			refuse = &msg
		}
	}
	wasRefusing := l.refuse.Load() != nil
	l.down.Store(now)
	l.refuse.Store(refuse)
	switch {
	case refuse != nil && !wasRefusing:
		l.opts.Logger.Warn("redis degraded; publishes fail until it is back", "err", *refuse)
	case was == nil && now != nil:
		l.opts.Logger.Warn("redis degraded; publishes are still sent", "err", *now)
	case was != nil && now == nil:
		l.opts.Logger.Info("redis answers again")
	case wasRefusing && refuse == nil:
		l.opts.Logger.Info("redis takes publishes again; still degraded", "err", *now)
	}
}

// Health implements broker.Health: Redis unreachable, or not answering
// for longer than StallAfter.
func (l *Log) Health() error {
	if p := l.down.Load(); p != nil {
		return errors.New(*p)
	}
	return l.stalledErr()
}

func (l *Log) stalledErr() error {
	if d := l.stalled(); d > 0 {
		return fmt.Errorf("redis stalled: no answer for %s", d.Round(100*time.Millisecond))
	}
	return nil
}

// refusing is Health's error when writes are not even sent: Redis is
// unreachable over the command connections, or stalled. While it only
// refuses writes for want of room (redisreply.StoreRefused) they are
// still sent, each answered by Redis (broker.ErrStore) until it takes
// them again; while only a Pub/Sub connection is down they are sent too.
func (l *Log) refusing() error {
	if p := l.refuse.Load(); p != nil {
		return errors.New(*p)
	}
	return l.stalledErr()
}

// stalled is how long the oldest request in flight to Redis has waited,
// when that is longer than StallAfter (else 0).
func (l *Log) stalled() time.Duration {
	var oldest int64
	for _, t := range []int64{l.busy.Load(), l.beating.Load()} {
		if t != 0 && (oldest == 0 || t < oldest) {
			oldest = t
		}
	}
	if oldest == 0 {
		return 0
	}
	if d := time.Since(time.Unix(0, oldest)); d > l.opts.StallAfter {
		return d
	}
	return 0
}

// OutcomeUnknown counts the publishes that failed with
// broker.ErrOutcomeUnknown.
func (l *Log) OutcomeUnknown() uint64 { return l.outcomeUnknown.Load() }

// newEpoch is a fresh epoch for a channel Redis does not know: base36 of
// the node's clock in nanoseconds, made unique per node.
func (l *Log) newEpoch() string {
	for {
		now := time.Now().UnixNano()
		last := l.epochs.Load()
		if now <= last {
			now = last + 1
		}
		if l.epochs.CompareAndSwap(last, now) {
			return strconv.FormatInt(now, 36)
		}
	}
}

// retention is what channel's stream keeps.
func (l *Log) retention(channel string) broker.Retention {
	if l.opts.RetentionFor == nil {
		return l.opts.Retention
	}
	return l.opts.RetentionFor.Of(channel, l.opts.Retention)
}

func ttl(r broker.Retention) int64 {
	if r.HistoryAge < 0 {
		return -1 // kept until the history's size pushes messages out: no expiry
	}
	idle := max(r.HistoryAge, time.Hour)
	return (2 * idle).Milliseconds()
}

func (l *Log) submit(ctx context.Context, o *op) error {
	l.qmu.RLock()
	defer l.qmu.RUnlock()
	if l.closed {
		return broker.ErrClosed
	}
	select {
	case l.queue <- o:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Append implements broker.Log: the message is queued for the publisher,
// which sends what was queued together: one script call per channel, all
// in one pipeline, in order.
func (l *Log) Append(ctx context.Context, m *broker.Message) (func() (int, error), error) {
	if err := l.refusing(); err != nil {
		// Nothing was sent: known not published.
		return nil, fmt.Errorf("%w: %v", broker.ErrUnavailable, err)
	}
	o := &op{m: m, res: make(chan opResult, 1)}
	if err := l.submit(ctx, o); err != nil {
		return nil, err
	}
	return func() (int, error) {
		r := <-o.res
		return r.n, r.err
	}, nil
}

// publishArgs are the publish script's keys and arguments for msgs, all
// of one channel; call is the call's id (0: none, for presence events,
// whose scripts have their own). The script sends the batch to the
// channel's Pub/Sub channel (pubsubChannel: its meta key without ":m").
func (l *Log) publishArgs(msgs []*broker.Message, call uint64) ([]string, []any) {
	now := l.opts.Now()
	r := l.retention(msgs[0].Channel)
	cutoff := int64(0)
	if r.HistoryAge > 0 {
		// (Never below 0, which says none: nothing is older than a
		// time before 1970 anyway. The script compares times as strings.)
		cutoff = max(now.Add(-r.HistoryAge).UnixMicro(), 0)
	}
	ch := msgs[0].Channel
	keys := []string{l.chanKey(ch, "m"), l.chanKey(ch, "s")}
	if l.cluster != nil {
		keys = append(keys, l.chanKey(ch, "z")) // see luaPublishPrelude
	}
	id := ""
	if call != 0 {
		id = strconv.FormatUint(call, 10)
	}
	args := make([]any, 0, 10+4*len(msgs))
	// (Every argument costs Redis about 1,000 instructions: what the
	// script needs only for a new channel shares one.)
	args = append(args, l.newEpoch()+" "+ch, now.UnixMicro(), r.HistorySize, cutoff, ttl(r),
		r.HistoryBytes, "P", "i:"+l.node, id, len(msgs))
	for _, m := range msgs {
		origin := "-"
		if m.Origin != 0 {
			origin = l.node + ":" + strconv.FormatUint(m.Origin, 10) + ":" + strconv.FormatUint(m.OriginSeq, 10)
		}
		// The origin goes with the event's and the data's lengths: the
		// script writes them into the Pub/Sub message as they are.
		args = append(args, m.Event, int(m.Kind), m.Data, origin+" "+strconv.Itoa(len(m.Event))+" "+strconv.Itoa(len(m.Data)))
	}
	if slices.ContainsFunc(msgs, func(m *broker.Message) bool { return m.Key != "" }) {
		// Keys: the window, then one Redis key name per message.
		args = append(args, broker.DedupWindow.Milliseconds())
		for _, m := range msgs {
			name := ""
			if m.Key != "" {
				name = l.chanKey(ch, "k:"+m.Key)
			}
			args = append(args, name)
		}
	}
	return keys, args
}

// howArg is the index of the "how to publish" argument in publishArgs.
const howArg = 6

// channelKeys are the keys the read, publish and delete scripts start
// with: the channel's meta, stream and sizes list and, on a single Redis,
// the set of channels (on Redis Cluster the list is a SCAN of every
// master).
func (l *Log) channelKeys(ch string) []string {
	if l.cluster != nil {
		return []string{l.chanKey(ch, "m"), l.chanKey(ch, "s"), l.chanKey(ch, "z")}
	}
	return []string{l.chanKey(ch, "m"), l.chanKey(ch, "s"), l.chanKey(ch, "z"), l.key("channels")}
}

// publisher sends queued appends in pipelines, in order. A pipeline has
// at most one script call per channel (the calls' ids must grow per
// channel, one outcome at a time), so an op that would need a second call
// for its channel starts the next pipeline. A call refused because its
// channel's slot is moving between Redis Cluster shards waits (parked)
// and is sent again with a later pipeline, with its channel's later ops
// behind it; the other channels' ops go on meanwhile (runBatch).
func (l *Log) publisher() {
	defer close(l.pubDone)
	var carry, spare []*op // spare: the buffer the next plan leaves ops in
	left := 0              // ops of carry the last plan left for later
	wait := true           // nothing in carry can go now
	for {
		if wait {
			first, ok, idle := l.next(len(carry) < maxCarry)
			if !ok {
				l.drain(carry)
				if len(l.sonly.calls) > 0 && l.refusing() == nil {
					l.settleSOnly()
				}
				return
			}
			if idle && len(l.sonly.calls) > 0 {
				l.settleSOnly()
			}
			if first != nil {
				carry = append(carry, first)
			}
		}
	gather:
		// Ops left for later do not count: the queue is read on behind
		// them, so that the next pipeline can take other channels' ops,
		// up to maxCarry (ops held behind a parked call stay in carry).
		for len(carry) < min(maxBatch+left, maxCarry) {
			select {
			case o, ok := <-l.queue:
				if !ok {
					break gather
				}
				carry = append(carry, o)
			default:
				break gather
			}
		}
		calls, rest := l.plan(carry, spare[:0])
		if len(calls) > 0 {
			l.runBatch(calls)
		}
		// Parked calls due go in a pipeline of their own: go-redis
		// tries a refused one again a few times before it answers,
		// which the other channels' calls need not wait for.
		due := l.dueParked(false)
		if len(due) > 0 {
			l.runBatch(due)
		}
		clear(carry) // the ops taken are done: not kept by the spare buffer
		carry, spare = rest, carry[:0]
		left = len(carry)
		// Ops left only behind parked calls wait for those (or new ops).
		wait = len(carry) == 0 || len(calls) == 0 && len(due) == 0
	}
}

// drain sends, once the queue is closed, the parked calls and then the
// ops left for later (runBatch parks nothing while closing).
func (l *Log) drain(carry []*op) {
	if calls := l.dueParked(true); len(calls) > 0 {
		l.runBatch(calls)
	}
	for len(carry) > 0 {
		calls, rest := l.plan(carry, nil)
		l.runBatch(calls)
		carry = rest
	}
}

// dueParked takes the parked calls due to be sent again (all: every
// one), oldest first.
func (l *Log) dueParked(all bool) []*call {
	if len(l.parked) == 0 {
		return nil
	}
	now := time.Now()
	var due []*call
	kept := l.parked[:0]
	for _, c := range l.parked {
		if all || !now.Before(c.due) {
			c.done = false
			due = append(due, c)
		} else {
			kept = append(kept, c)
		}
	}
	clear(l.parked[len(kept):])
	l.parked = kept
	return due
}

// next waits for the next op queued (ok false: the queue was closed;
// not taken with takeOps false); with batches sent on sharded Pub/Sub
// only not settled yet, it waits sonlyDelay at most, and with parked
// calls until the first is due (o nil: nothing came; idle: the sharded
// Pub/Sub wait passed).
func (l *Log) next(takeOps bool) (o *op, ok, idle bool) {
	sw := time.Duration(-1) // the sharded Pub/Sub wait
	if len(l.sonly.calls) > 0 {
		sw = l.sonlyDelay()
	}
	wait := sw
	for _, c := range l.parked {
		if d := max(time.Until(c.due), 0); wait < 0 || d < wait {
			wait = d
		}
	}
	queue := l.queue
	if !takeOps && wait >= 0 {
		queue = nil // (maxCarry ops held are behind parked calls)
	}
	if wait < 0 {
		o, ok = <-queue
		return o, ok, false
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case o, ok = <-queue:
		return o, ok, false
	case <-t.C:
		return nil, true, sw >= 0 && wait == sw
	}
}

// maxBatch bounds the appends sent in one pipeline, and maxCallBytes the
// data of one script call (Redis refuses a command over its
// client-query-buffer-limit, 1 GiB by default).
const (
	maxCarry     = 8192 // ops the publisher holds back (behind parked calls) before it reads no more
	maxBatch     = 1024
	maxCallBytes = 8 << 20
)

// call is one script call of a pipeline: a batch of publishes to one
// channel, or one presence change.
type call struct {
	ops     []*op
	channel string
	id      uint64
	script  *redis.Script
	keys    []string
	args    []any
	how     int // index of the "how to publish" argument
	cmd     *redis.Cmd
	done    bool
	// Sending: when first sent (its PublishTimeout runs from there),
	// whether it may have run (maybeSent), why the last try failed, and,
	// parked, when it is sent again and the wait after that.
	start     time.Time
	maybeSent bool
	err       error
	due       time.Time
	backoff   time.Duration
}

// plan groups ops, in order, into calls: the publishes of a channel into
// one call, each presence change or record a call of its own, at most
// maxBatch ops. An op that cannot join its channel's call waits for the
// next pipeline, and so does every later op of that channel (each
// channel's order is kept); other channels' ops go on, so a run of
// script calls on one channel (a burst of connection records, say) does
// not hold up every other channel's publishes; a channel whose call is
// parked (runBatch) has all its ops left for later. It returns the calls
// and the ops left for later, in their order, appended to rest.
func (l *Log) plan(ops, rest []*op) ([]*call, []*op) {
	var (
		calls     []*call
		byChannel = map[string]*call{}
		waiting   = map[string]bool{} // channels with an op left for later
		bytes     = map[string]int{}
		used      int
		last      string // the channel last left for later: runs of one channel are common
	)
	for _, c := range l.parked {
		waiting[c.channel] = true // its ops wait behind it
	}
	for _, o := range ops {
		ch := o.m.Channel
		if used >= maxBatch || len(waiting) > 0 && (ch == last || waiting[ch]) {
			rest = append(rest, o)
			continue
		}
		c := byChannel[ch]
		if c != nil && (c.script != nil || o.script != nil || bytes[ch]+len(o.m.Data) > maxCallBytes) {
			waiting[ch], last = true, ch
			rest = append(rest, o)
			continue
		}
		bytes[ch] += len(o.m.Data)
		if c == nil {
			c = &call{channel: ch, id: l.calls.Add(1), script: o.script}
			byChannel[ch] = c
			calls = append(calls, c)
		}
		c.ops = append(c.ops, o)
		used++
	}
	for _, c := range calls {
		if c.script == nil {
			c.script = publishScript
			msgs := make([]*broker.Message, len(c.ops))
			for i, o := range c.ops {
				msgs[i] = o.m
			}
			c.keys, c.args = l.publishArgs(msgs, c.id)
			c.how = howArg
			continue
		}
		o := c.ops[0]
		keys, args := l.publishArgs([]*broker.Message{o.m}, 0)
		c.keys = append([]string{l.presenceKey(c.channel)}, keys...)
		c.args = append(append(o.args[:4:4], strconv.FormatUint(c.id, 10)), args...)
		c.how = 5 + howArg
	}
	return calls, rest
}

// runBatch sends calls in one pipeline and hands each op its result.
// Calls whose outcome is not known (the connection broke, Redis did not
// answer in time) are sent again, with the same ids, until they get an
// answer or PublishTimeout passed: the scripts recognise a call that ran
// before, so nothing is appended twice. A call that never got an answer
// fails with broker.ErrOutcomeUnknown, or broker.ErrUnavailable when it
// is known that nothing reached Redis.
func (l *Log) runBatch(calls []*call) {
	if l.closing.Load() && l.refuse.Load() != nil {
		// Closing with Redis unreachable: what was queued is not sent.
		err := fmt.Errorf("%w: closing with redis unreachable", broker.ErrUnavailable)
		for _, c := range calls {
			l.fail(c, err)
		}
		return
	}
	start := time.Now()
	l.busy.Store(start.UnixNano())
	defer l.busy.Store(0)
	for _, c := range calls {
		if c.start.IsZero() {
			c.start = start // its PublishTimeout runs from here
		}
	}
	var counts map[string]int
	maybeSent := false
	var lastErr error
	reloaded := false
	backoff := 20 * time.Millisecond
	for {
		var err error
		for _, c := range calls {
			c.err = nil
		}
		if l.cluster != nil && counts == nil {
			counts, err = l.clusterCounts(calls)
		}
		if err == nil {
			pipe := l.pub.Pipeline()
			// Batches before this one that went out on sharded Pub/Sub
			// only, found due by this batch's read: sent again before
			// its scripts (so receivers hear them in order).
			reps := l.queueRepublish(l.ctx, pipe)
			var read *countsRead
			if l.cluster == nil {
				// On a single Redis the counts come with the scripts, in
				// the same round trip, read just before they run.
				read = l.queueCounts(pipe, calls)
			}
			for _, c := range calls {
				if !c.done {
					c.cmd = c.script.EvalSha(l.ctx, pipe, c.keys, c.args...)
				}
			}
			pipe.Exec(l.ctx)
			l.republished(l.ctx, reps)
			if read != nil {
				counts = l.counts(read)
			}
			noscript := false
			var answered []*call
			for _, c := range calls {
				if c.done {
					continue
				}
				cerr := c.cmd.Err()
				switch {
				case cerr == nil || errors.Is(cerr, redis.Nil):
					answered = append(answered, c)
				case redis.HasErrorPrefix(cerr, "NOSCRIPT"):
					noscript = true // nothing ran
				case redisreply.Transient(cerr):
					err, c.err = cerr, cerr // not run: sent again
				case redisreply.StoreRefused(cerr):
					// Redis cannot keep more (maxmemory, a failed
					// save): the script's first write was refused, so
					// it changed nothing. Degraded until a heartbeat
					// (a write too) goes through.
					l.setHealth(sideCommands, cerr)
					l.fail(c, fmt.Errorf("%w: redis: %v", broker.ErrStore, cerr))
				case redisreply.Is(cerr):
					// Redis answered with an error: the script did not
					// append (it checks before it writes).
					l.fail(c, fmt.Errorf("redis: %v", cerr))
				default:
					err, c.err = cerr, cerr
					if l.cluster != nil || !neverSent(cerr) {
						maybeSent, c.maybeSent = true, true
					}
				}
			}
			if len(answered) > 0 && lastErr != nil {
				// Healthy again before anyone is told: a publisher that
				// publishes again on its ack must not be refused.
				l.setHealth(sideCommands, nil)
				waited := time.Since(start).Round(time.Millisecond)
				if redisreply.Moving(lastErr) {
					l.opts.Logger.Debug("a slot moved between shards; publishes that waited for it went through", "waited", waited)
				} else {
					l.opts.Logger.Info("redis answered again; publishes that were waiting went through", "waited", waited)
				}
				lastErr = nil
			}
			for _, c := range answered {
				l.finish(c, counts)
			}
			if l.park(calls) {
				// What failed for the others, if anything, decides.
				err = nil
				for _, c := range calls {
					if !c.done && c.err != nil {
						err = c.err
						break
					}
				}
			}
			if noscript && err == nil {
				// Redis restarted (or SCRIPT FLUSH) and forgot the
				// scripts: not an outage; load them and send again at
				// once (after a backoff if they are gone again).
				err = l.loadScripts(l.ctx)
				if err == nil && !reloaded {
					reloaded = true
					continue
				}
				if err == nil {
					err = errors.New("redis: NOSCRIPT again right after loading the scripts")
				}
			}
		}
		if err == nil {
			if !allDone(calls) {
				continue
			}
			if lastErr != nil {
				l.setHealth(sideCommands, nil)
			}
			return
		}
		lastErr = err
		l.setHealth(sideCommands, err)
		// Each call has its PublishTimeout from when it was first sent
		// (a parked one sent again may be near its end, the others not).
		giveUp := l.ctx.Err() != nil || l.closing.Load() && time.Since(start) > 2*time.Second
		now := time.Now()
		for _, c := range calls {
			if c.done || !giveUp && !now.After(c.start.Add(l.opts.PublishTimeout)) {
				continue
			}
			l.giveUp(c, maybeSent || c.maybeSent, err)
		}
		if allDone(calls) {
			return
		}
		select {
		case <-l.ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
		reloaded = false
	}
}

// park takes out of the batch each call left that was refused because
// its channel's slot is moving between Redis Cluster shards
// (redisreply.Moving: nothing ran), and reports whether it took any:
// each is sent again apart, after its own backoff (20 ms, doubling to
// 1 s), until it goes through or its PublishTimeout passed, while the
// other channels' publishes go on, and the node is not taken for stalled
// or degraded. (A slot's keys move a few at a time: a channel with a
// long history can take seconds.) A parked call counts as done for this
// batch (dueParked makes it not done again). Not while closing.
func (l *Log) park(calls []*call) bool {
	if l.closing.Load() || l.ctx.Err() != nil {
		return false
	}
	now, took := time.Now(), false
	for _, c := range calls {
		if c.done || c.err == nil || !redisreply.Moving(c.err) {
			continue
		}
		took = true
		end := c.start.Add(l.opts.PublishTimeout)
		if now.After(end) {
			l.giveUp(c, c.maybeSent, fmt.Errorf("the channel's slot has been moving between shards for %s: %v", l.opts.PublishTimeout, c.err))
			continue
		}
		c.backoff = min(max(2*c.backoff, 20*time.Millisecond), time.Second)
		c.due = minTime(now.Add(c.backoff), end) // the last try at its end, not after
		c.done = true
		l.parked = append(l.parked, c)
	}
	return took
}

// giveUp fails call c, which got no answer within its PublishTimeout
// (err: why): its outcome is unknown (counted) when it may have run, else
// nothing was published.
func (l *Log) giveUp(c *call, maybeSent bool, err error) {
	if maybeSent {
		l.outcomeUnknown.Add(uint64(len(c.ops)))
		l.fail(c, fmt.Errorf("%w: redis did not answer within %s: %v", broker.ErrOutcomeUnknown, l.opts.PublishTimeout, err))
		return
	}
	l.fail(c, fmt.Errorf("%w: redis: %v", broker.ErrUnavailable, err))
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func allDone(calls []*call) bool {
	for _, c := range calls {
		if !c.done {
			return false
		}
	}
	return true
}

// neverSent reports whether err means the command never left this node:
// no connection could be made.
func neverSent(err error) bool {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "dial" {
		return true
	}
	return strings.Contains(err.Error(), "connection pool timeout")
}

// callReply is a call's reply as a list: the publish script's usual
// reply, "<epoch> <first seq> <time>", as publish()'s {epoch, first seq,
// time, -1, 0}.
func callReply(c *call) ([]any, error) {
	if c.script == publishScript {
		if s, ok := c.cmd.Val().(string); ok && c.cmd.Err() == nil {
			f := strings.Fields(s)
			if len(f) != 3 {
				return nil, fmt.Errorf("unexpected publish reply %q", s)
			}
			first, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				return nil, fmt.Errorf("unexpected publish reply %q", s)
			}
			return []any{f[0], first, f[2], int64(-1), int64(0)}, nil
		}
	}
	return c.cmd.Slice()
}

// finish hands a call's reply to its ops.
func (l *Log) finish(c *call, counts map[string]int) {
	c.done = true
	vals, err := callReply(c)
	if err != nil {
		l.fail(c, fmt.Errorf("redis: %v", err))
		return
	}
	if c.script != publishScript {
		o := c.ops[0]
		r := l.presenceReply(o.m, vals)
		if r.err == nil { // (then vals is not empty)
			if status, _ := vals[0].(int64); status == 1 {
				l.noteSOnly(c) // its event was appended, and published
			}
		}
		o.res <- r
		return
	}
	if len(vals) != 5 && len(vals) != 6 {
		l.fail(c, fmt.Errorf("redis: unexpected publish reply %v", vals))
		return
	}
	if status, _ := vals[4].(int64); status == 2 {
		// A copy of a call this node gave up on: cannot be this one.
		l.fail(c, fmt.Errorf("%w: redis: the publish was overtaken by a later one", broker.ErrOutcomeUnknown))
		return
	}
	epoch := fmt.Sprint(vals[0])
	first, _ := vals[1].(int64)
	us, _ := strconv.ParseInt(fmt.Sprint(vals[2]), 10, 64)
	n := counts[c.channel]
	at := time.UnixMicro(us).UTC()
	var dups map[int]*broker.Message // index → the duplicate, placed
	if len(vals) == 6 {
		list, _ := vals[5].([]any)
		dups = make(map[int]*broker.Message, len(list)/3)
		for j := 0; j+2 < len(list); j += 3 {
			i, _ := list[j].(int64)
			seq, _ := list[j+1].(int64)
			dus, _ := strconv.ParseInt(fmt.Sprint(list[j+2]), 10, 64)
			if int(i) < 0 || int(i) >= len(c.ops) {
				continue
			}
			m := c.ops[i].m
			m.Epoch, m.Duplicate = epoch, true
			if seq < 0 { // the batch's own (-1 - rank) message: placed below
				m.Seq, m.Time = uint64(first)+uint64(-1-seq), at
			} else {
				m.Seq, m.Time = uint64(seq), time.UnixMicro(dus).UTC()
			}
			dups[int(i)] = m
		}
	}
	l.noteSOnly(c)
	rank := uint64(0)
	for i, o := range c.ops {
		if dups[i] != nil {
			o.res <- opResult{} // a key seen before: nothing delivered now
			continue
		}
		o.m.Epoch, o.m.Seq, o.m.Time = epoch, uint64(first)+rank, at
		rank++
		o.res <- opResult{n: n}
	}
}

func (l *Log) fail(c *call, err error) {
	c.done = true
	for _, o := range c.ops {
		o.res <- opResult{err: err}
	}
}

// patCache is the publisher's copy of every pattern's subscriber count
// (pats), as of version: the subs hash's "*v" field, which the counts
// scripts change with every change of pats. Used by the publisher
// goroutine only.
type patCache struct {
	version string
	loaded  bool
	pats    map[string]int
}

// patterns returns the pattern counts as of version: the copy, read again
// (one more round trip) when its version is not that one. If the
// patterns changed again meanwhile, the counts read are the newer ones;
// if the read fails, the copy's.
func (l *Log) patterns(version string) map[string]int {
	if l.pc.loaded && l.pc.version == version {
		return l.pc.pats
	}
	ctx, cancel := context.WithTimeout(l.ctx, 5*time.Second)
	defer cancel()
	pipe := l.rdb.TxPipeline()
	v := pipe.HGet(ctx, l.key("subs"), "*v")
	all := pipe.HGetAll(ctx, l.key("pats"))
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return l.pc.pats
	}
	pats := make(map[string]int, len(all.Val()))
	for p, c := range all.Val() {
		pats[p], _ = strconv.Atoi(c)
	}
	l.pc = patCache{version: v.Val(), loaded: true, pats: pats}
	return pats
}

// countWith is channel's subscribers on every node: exact, its own, and
// those of the patterns matching it.
func countWith(channel string, exact int, pats map[string]int) int {
	n := exact
	for p, c := range pats {
		if broker.Match(p, channel) {
			n += c
		}
	}
	return n
}

// countsRead is the read of a batch's subscriber counts, queued in a
// pipeline: the channels' own counts and the patterns' version.
type countsRead struct {
	names []string
	cmd   *redis.SliceCmd
}

// queueCounts queues, in pipe, the read of the subscriber counts of the
// channels calls publish to: one command per batch in the slot of
// pushctl's own keys, whatever the number of channels, subscribers or
// nodes. (The publish script used to read them itself, with two
// redis.call()s per call, all patterns read and matched in Lua.)
func (l *Log) queueCounts(pipe redis.Pipeliner, calls []*call) *countsRead {
	r := &countsRead{names: make([]string, 0, len(calls)+1)}
	for _, c := range calls {
		if !c.done {
			r.names = append(r.names, c.channel) // one call per channel
		}
	}
	if len(r.names) == 0 {
		return nil
	}
	r.cmd = pipe.HMGet(l.ctx, l.key("subs"), append(r.names, "*v")...)
	return r
}

// counts returns each channel's subscribers on every node, pattern
// subscribers included; nil when the read failed.
func (l *Log) counts(r *countsRead) map[string]int {
	vals, err := r.cmd.Result()
	if err != nil || len(vals) != len(r.names)+1 {
		return nil
	}
	version, _ := vals[len(r.names)].(string)
	pats := l.patterns(version)
	per := make(map[string]int, len(r.names))
	for i, name := range r.names {
		n := 0
		if vals[i] != nil {
			n, _ = strconv.Atoi(fmt.Sprint(vals[i]))
		}
		per[name] = countWith(name, n, pats)
	}
	return per
}

// clusterCounts reads, for a batch about to be published on Redis
// Cluster, each channel's subscriber count and whether any node follows a
// pattern: then the batch also goes out on classic Pub/Sub, which is
// what pattern followers receive. Two commands per batch, in the slot of
// pushctl's own keys (and a third, reading the patterns' counts, when
// they changed since the last batch). The read comes after every message
// of the batch was queued, so a pattern subscription that existed when a
// publish was accepted is never missed.
func (l *Log) clusterCounts(calls []*call) (map[string]int, error) {
	pipe := l.rdb.Pipeline()
	read := l.queueCounts(pipe, calls)
	if read == nil {
		return map[string]int{}, nil
	}
	routes := pipe.HLen(l.ctx, l.key("routes"))
	if _, err := pipe.Exec(l.ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, err
	}
	mode := "S"
	if routes.Val() > 0 {
		mode = "SP"
	}
	// The read comes after every call of the batches before this one was
	// answered: it settles those that went out on sharded Pub/Sub only.
	l.routesRead(routes.Val())
	for _, c := range calls {
		c.args[c.how] = mode
	}
	if f := l.afterCounts.Load(); f != nil {
		names := make([]string, 0, len(calls))
		for _, c := range calls {
			names = append(names, c.channel) // one call per channel
		}
		(*f)(mode, names)
	}
	return l.counts(read), nil
}

// loadScripts loads pushctl's scripts into Redis.
func (l *Log) loadScripts(ctx context.Context) error {
	for _, s := range scripts {
		if err := s.Load(ctx, l.rdb).Err(); err != nil {
			return err
		}
	}
	return nil
}

// Read implements broker.Log.
func (l *Log) Read(ctx context.Context, name string, req broker.ReadRequest) (broker.ReadResult, error) {
	mode, tail := "none", 0
	switch {
	case req.Resume:
		mode = "after"
	case req.Last < 0 || !req.Since.IsZero():
		mode = "all"
	case req.Last > 0:
		mode, tail = "tail", req.Last
	}
	create := "0"
	if req.Create {
		create = "1"
	}
	v, err := readScript.Run(ctx, l.rdb, l.channelKeys(name),
		create, l.newEpoch(), ttl(l.retention(name)), name, mode, req.From.Epoch, req.From.Seq, tail).Slice()
	if errors.Is(err, redis.Nil) {
		return broker.ReadResult{}, broker.ErrNotFound
	}
	if err != nil {
		return broker.ReadResult{}, l.unavailable(err)
	}
	if len(v) != 5 {
		return broker.ReadResult{}, fmt.Errorf("redis: unexpected read reply")
	}
	head := broker.Position{Epoch: fmt.Sprint(v[0])}
	head.Seq, _ = strconv.ParseUint(fmt.Sprint(v[1]), 10, 64)
	entries, _ := v[4].([]any)
	msgs := l.decodeEntries(name, head.Epoch, entries, v[3] == "tail")
	// A channel followed here but not yet heard from starts at this head,
	// so a reconnection knows what to refill.
	l.lastMu.Lock()
	if _, ok := l.last[name]; !ok && l.followed(name) {
		st := &seen{pos: head}
		if n := len(msgs); n > 0 && msgs[n-1].Seq == head.Seq {
			st.at = msgs[n-1].Time.UnixMicro()
		}
		l.last[name] = st
	}
	l.lastMu.Unlock() // (lastMu before mu: see Unfollow)
	return replayPlan(name, head, msgs, req)
}

// decodeEntries turns stream entries into messages, oldest first, leaving
// out those older than the history age.
func (l *Log) decodeEntries(name, epoch string, entries []any, reversed bool) []*broker.Message {
	cutoff := time.Time{}
	if age := l.retention(name).HistoryAge; age > 0 {
		cutoff = l.opts.Now().Add(-age)
	}
	msgs := make([]*broker.Message, 0, len(entries))
	for _, e := range entries {
		m := decodeEntry(name, epoch, e)
		if m == nil {
			continue
		}
		msgs = append(msgs, m)
	}
	if reversed {
		for i, j := 0, len(msgs)-1; i < j; i, j = i+1, j-1 {
			msgs[i], msgs[j] = msgs[j], msgs[i]
		}
	}
	for len(msgs) > 0 && !cutoff.IsZero() && msgs[0].Time.Before(cutoff) {
		msgs = msgs[1:]
	}
	return msgs
}

// decodeEntry reads one XRANGE entry: id "<seq>-1", fields t, e, k, d.
func decodeEntry(name, epoch string, e any) *broker.Message {
	pair, ok := e.([]any)
	if !ok || len(pair) != 2 {
		return nil
	}
	id, _ := pair[0].(string)
	seqStr, _, _ := strings.Cut(id, "-")
	seq, err := strconv.ParseUint(seqStr, 10, 64)
	if err != nil {
		return nil
	}
	fields, _ := pair[1].([]any)
	m := &broker.Message{Channel: name, Epoch: epoch, Seq: seq}
	for i := 0; i+1 < len(fields); i += 2 {
		k, _ := fields[i].(string)
		v, _ := fields[i+1].(string)
		switch k {
		case "t":
			us, _ := strconv.ParseInt(v, 10, 64)
			m.Time = time.UnixMicro(us).UTC()
		case "e":
			m.Event = v
		case "k":
			kind, _ := strconv.Atoi(v)
			m.Kind = broker.Kind(kind)
		case "d":
			m.Data = []byte(v)
		}
	}
	return m
}

// replayPlan applies the broker's replay rule to the contiguous tail of
// a channel's history that was read.
func replayPlan(name string, head broker.Position, msgs []*broker.Message, req broker.ReadRequest) (broker.ReadResult, error) {
	// The entries read are the newest ones, ending at head; anything
	// missing at their end was trimmed meanwhile and reads as older.
	for len(msgs) > 0 && msgs[len(msgs)-1].Seq > head.Seq {
		msgs = msgs[:len(msgs)-1]
	}
	return broker.PlanReplay(name, head, len(msgs), func(i int) *broker.Message { return msgs[i] }, req)
}

// Info implements broker.Log.
func (l *Log) Info(ctx context.Context, name string) (broker.ChannelInfo, error) {
	v, err := infoScript.Run(ctx, l.rdb, l.infoKeys(name)).Slice()
	if errors.Is(err, redis.Nil) {
		return broker.ChannelInfo{}, broker.ErrNotFound
	}
	if err != nil {
		return broker.ChannelInfo{}, l.unavailable(err)
	}
	return infoFrom(name, v)
}

// infoKeys are the info script's keys for channel ch.
func (l *Log) infoKeys(ch string) []string {
	return []string{l.chanKey(ch, "m"), l.chanKey(ch, "s")}
}

// infoFrom reads the info script's reply: epoch, seq, last time (µs),
// messages, bytes.
func infoFrom(name string, v []any) (broker.ChannelInfo, error) {
	if len(v) != 5 {
		return broker.ChannelInfo{}, fmt.Errorf("redis: unexpected info reply %v", v)
	}
	epoch := fmt.Sprint(v[0])
	seq, _ := strconv.ParseUint(fmt.Sprint(v[1]), 10, 64)
	us, _ := strconv.ParseInt(fmt.Sprint(v[2]), 10, 64)
	n, _ := v[3].(int64)
	bytes, _ := v[4].(int64)
	ci := broker.ChannelInfo{Name: name, Epoch: epoch, LastSeq: seq, Messages: int(n), Bytes: bytes, Published: seq}
	if seq > 0 {
		ci.LastID = broker.Position{Epoch: ci.Epoch, Seq: seq}.String()
		ci.LastPublish = time.UnixMicro(us).UTC()
	}
	return ci, nil
}

// List implements broker.Log.
func (l *Log) List(ctx context.Context) ([]broker.ChannelInfo, error) {
	names, err := l.channelNames(ctx)
	if err != nil {
		return nil, l.unavailable(err)
	}
	var infos []*redis.Cmd
	for try := 0; len(names) > 0; try++ {
		pipe := l.rdb.Pipeline()
		infos = make([]*redis.Cmd, len(names))
		for i, name := range names {
			infos[i] = infoScript.EvalSha(ctx, pipe, l.infoKeys(name))
		}
		_, err := pipe.Exec(ctx)
		if err == nil || errors.Is(err, redis.Nil) {
			break
		}
		if try == 0 && redis.HasErrorPrefix(err, "NOSCRIPT") {
			// Redis restarted (or SCRIPT FLUSH): load them and ask again.
			if err := l.loadScripts(ctx); err != nil {
				return nil, l.unavailable(err)
			}
			continue
		}
		return nil, l.unavailable(err)
	}
	out := make([]broker.ChannelInfo, 0, len(names))
	var gone []any
	for i, name := range names {
		v, err := infos[i].Slice()
		if errors.Is(err, redis.Nil) {
			gone = append(gone, name) // expired
			continue
		}
		if err != nil {
			return nil, l.unavailable(err)
		}
		ci, err := infoFrom(name, v)
		if err != nil {
			return nil, err
		}
		out = append(out, ci)
	}
	if len(gone) > 0 && l.cluster == nil {
		l.rdb.SRem(ctx, l.key("channels"), gone...)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// channelNames lists the channels Redis holds: the channels set on a
// single Redis, a SCAN of every master's meta keys on Redis Cluster.
func (l *Log) channelNames(ctx context.Context) ([]string, error) {
	if l.cluster == nil {
		return l.rdb.SMembers(ctx, l.key("channels")).Result()
	}
	var mu sync.Mutex
	var names []string
	match := escapeGlob(l.opts.Prefix) + "{*}:m"
	err := l.cluster.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
		it := m.Scan(ctx, 0, match, 1000).Iterator()
		for it.Next(ctx) {
			rest := strings.TrimPrefix(it.Val(), l.opts.Prefix+"{")
			name, ok := strings.CutSuffix(rest, "}:m")
			if ok && broker.ValidateChannel(name) == nil {
				mu.Lock()
				names = append(names, name)
				mu.Unlock()
			}
		}
		return it.Err()
	})
	return names, err
}

// ChannelCount is the number of channels, as of the last heartbeat.
func (l *Log) ChannelCount() int { return int(l.channels.Load()) }

// Delete implements broker.Log: every node following the channel hears of
// it over Pub/Sub and ends the subscriptions that named it. On Redis
// Cluster the notice goes out on sharded Pub/Sub (nodes following it by
// name) and on classic Pub/Sub (nodes following it only through a
// pattern; the others drop that copy): deletes are rare, so it is not
// worth asking whether any pattern is followed.
func (l *Log) Delete(ctx context.Context, name string) error {
	how := "P"
	if l.cluster != nil {
		how = "SP"
	}
	n, err := deleteScript.Run(ctx, l.rdb, l.channelKeys(name), name, l.pubsubChannel(name), how).Int()
	if err != nil {
		return l.unavailable(err)
	}
	if n == 0 {
		return broker.ErrNotFound
	}
	return nil
}

// Close implements broker.Log: queued appends are sent, this node leaves
// the counts, and the connections close.
func (l *Log) Close() error {
	l.qmu.RLock()
	closed := l.closed
	l.qmu.RUnlock()
	if closed {
		return nil
	}
	// Members still held here leave (normally the registry has left
	// them all), while the publisher takes their events.
	if l.refusing() == nil {
		pctx, pcancel := context.WithTimeout(context.Background(), 5*time.Second)
		l.reapPresence(pctx, l.node, nil)
		l.reapLifecycle(pctx, l.node, nil)
		pcancel()
	}
	l.qmu.Lock()
	if l.closed {
		l.qmu.Unlock()
		return nil
	}
	l.closed = true
	l.closing.Store(true)
	close(l.queue)
	l.qmu.Unlock()
	<-l.pubDone // the publisher sends what was queued
	l.cancel()
	l.ps.Close()
	l.mu.Lock()
	for _, sh := range l.shards {
		sh.close()
	}
	l.mu.Unlock()
	l.wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if l.refusing() == nil {
		// (Redis not answering: the others take this node out once it
		// has been silent for NodeTimeout.)
		reapScript.Run(ctx, l.rdb, l.countKeys(l.node), l.node, l.key("counts"), time.Now().Add(time.Hour).UnixMilli())
	}
	if l.pub != l.rdb {
		l.pub.Close()
	}
	return l.rdb.Close()
}
