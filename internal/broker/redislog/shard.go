package redislog

import (
	"context"
	"errors"
	"sort"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pushctl/pushctl/internal/broker"
)

// shard is this node's sharded Pub/Sub connection to one Redis Cluster
// master, carrying the followed channels whose slots that master serves.
// Each channel is subscribed with a command of its own: one SSUBSCRIBE
// may only name channels of one slot. The shard's goroutine (run) makes
// the connection (rebuild); after it broke, it does not let go-redis
// resubscribe (it would name every channel in one command) but builds a
// new one, moves channels whose slot now has another master, and
// resynchronizes its channels from their streams. The connection is
// made without l.mu held: a master that does not answer (stopped,
// unreachable) holds up its own channels only, not the node's others.
//
// Lock order: Log.mu, then shard.mu.
type shard struct {
	l    *Log
	addr string

	mu     sync.Mutex
	client *redis.Client
	ps     *redis.PubSub
	chans  map[string]bool // Pub/Sub channel names followed here
	done   bool
	// building is set while the shard has no connection up (a new
	// shard's first is being made, or the one it had broke, and until
	// a rebuild made the next); each rebuild's end, made or failed,
	// closes it (a failed one sets a new one). Meanwhile subscribe and
	// unsubscribe only change chans (nothing is sent on a connection
	// go-redis would make anew, to a master that may not answer, while
	// l.mu is held), and the rebuild installs a connection subscribed
	// to what chans holds then.
	building chan struct{}
	failed   error // why the last rebuild failed (nil: it made the connection)
}

// shardFor returns the shard serving channel's slot, starting it the first
// time (its goroutine makes the connection). Called with l.mu held.
func (l *Log) shardFor(ctx context.Context, channel string) (*shard, error) {
	if l.ctx.Err() != nil {
		return nil, broker.ErrClosed // Close is ending the shards
	}
	c, err := l.cluster.MasterForKey(ctx, l.pubsubChannel(channel))
	if err != nil {
		return nil, err
	}
	addr := c.Options().Addr
	if sh := l.shards[addr]; sh != nil {
		sh.mu.Lock()
		sh.client = c // go-redis may have made a new client for the address
		sh.mu.Unlock()
		return sh, nil
	}
	sh := &shard{l: l, addr: addr, client: c, ps: c.SSubscribe(ctx), chans: map[string]bool{}, building: make(chan struct{})}
	l.shards[addr] = sh
	l.wg.Add(1)
	go sh.run()
	return sh, nil
}

func (s *shard) side() string { return "shard " + s.addr }

// making says the shard has no connection up: it is making one.
func (s *shard) making() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.building != nil
}

func (s *shard) pubsub() *redis.PubSub {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ps
}

// ready returns the shard's connection, for a PING confirming that a
// subscribe took effect, once the rebuild under way (if any) ended; or
// why that rebuild failed.
func (s *shard) ready(ctx context.Context) (*redis.PubSub, error) {
	s.mu.Lock()
	wait := s.building
	s.mu.Unlock()
	if wait != nil {
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-s.l.ctx.Done():
			return nil, broker.ErrClosed
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if wait != nil && s.failed != nil {
		return nil, s.failed
	}
	return s.ps, nil
}

func (s *shard) subscribe(ctx context.Context, name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.chans[name] = true
	if s.building != nil {
		return nil // the rebuild subscribes it
	}
	return s.ps.SSubscribe(ctx, name)
}

// unsubscribe forgets name first, so the server's sunsubscribe reply is
// not taken for a slot moving away.
func (s *shard) unsubscribe(ctx context.Context, name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.chans, name)
	if s.building == nil {
		s.ps.SUnsubscribe(ctx, name)
	}
}

func (s *shard) has(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.chans[name]
}

func (s *shard) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.done = true
	s.ps.Close()
}

var (
	errNew       = errors.New("no connection yet")
	errSlotMoved = errors.New("slot moved")
	errEnded     = errors.New("no channel left")
)

// run is the one reader of the shard's connection, and makes it.
func (s *shard) run() {
	l := s.l
	defer l.wg.Done()
	broken := false
	backoff := 50 * time.Millisecond
	err := errNew // the first connection is made as a rebuild makes one
	for {
		if err != nil {
			if l.ctx.Err() != nil || s.closed() {
				return
			}
			s.broke()
			if err != errNew {
				// Its channels wait for the resync that follows the
				// rebuild (this shard's, or the one's a channel moved
				// to).
				l.hold(s.has)
			}
			if err != errSlotMoved && err != errNew {
				broken = true
				l.setHealth(s.side(), err)
				select {
				case <-l.ctx.Done():
					return
				case <-time.After(backoff):
				}
				backoff = min(2*backoff, 2*time.Second)
			}
			// Failed, it is tried again after the backoff.
			err = s.rebuild(err == errNew)
			continue
		}
		var msg any
		if msg, err = s.pubsub().Receive(l.ctx); err != nil {
			continue
		}
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind == "sunsubscribe" && s.has(m.Channel) {
				// The server dropped a channel still followed: its slot
				// moved to another master.
				err = errSlotMoved
			}
		case *redis.Message:
			l.dispatch(m, true)
		case *redis.Pong:
			if m.Payload != "resync" {
				l.pong(m.Payload)
				continue
			}
			if err = l.resync(s.has); err != nil {
				continue // tried again on a new connection
			}
			if broken {
				broken = false
				backoff = 50 * time.Millisecond
				l.setHealth(s.side(), nil)
			}
		}
	}
}

func (s *shard) closed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.done
}

func (s *shard) breakConn() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ps.Close()
}

// broke closes the shard's connection, which broke (or is replaced, or
// is a new shard's placeholder): subscribe and unsubscribe only change
// chans until the rebuild installs the next one. (Left open, go-redis
// would make it anew, with every channel in one command, whenever it is
// written to.)
func (s *shard) broke() {
	s.mu.Lock()
	ps := s.ps
	if s.building == nil {
		s.building = make(chan struct{})
	}
	s.mu.Unlock()
	ps.Close() // (not under s.mu: it waits while go-redis makes the connection anew for a PING sent on it, say)
}

// rebuild makes the shard's connection: every channel of the shard is
// looked up again (a failover or a resharding may have given its slot to
// another master) and subscribed where its slot is now; a PING then asks
// run to resynchronize the channels from their streams. Where the
// channels go is decided with l.mu held; the connection is made without
// it (a master that does not answer takes up to 5 s), and installed
// subscribed to the channels followed here once it is made: those
// followed meanwhile too, not those left. first: the shard's first
// connection, not one made anew after a failure.
func (s *shard) rebuild(first bool) error {
	l := s.l
	ctx, cancel := context.WithTimeout(l.ctx, 5*time.Second)
	defer cancel()
	if !first {
		l.cluster.ReloadState(ctx)
	}
	client, names, moved, err := s.plan(ctx)
	for _, to := range moved {
		// The channels that moved (on hold since this connection broke:
		// run) are resynchronized by their new shard: now, or once its
		// own rebuild is done.
		to.askResync(ctx)
	}
	if err == errEnded {
		return err
	}
	if f := l.opts.beforeDial; f != nil && !first {
		f()
	}
	var ps *redis.PubSub
	if err == nil {
		ps = client.SSubscribe(ctx)
		for _, n := range names {
			if err = ps.SSubscribe(ctx, n); err != nil {
				break
			}
		}
	}
	return s.install(ctx, ps, names, err, first)
}

// plan decides, with l.mu held, where the shard's channels are
// subscribed: those whose slot has another master now move to its shard
// (moved); it returns the client and channels of the new connection.
// When no channel is left, the shard ends (errEnded).
func (s *shard) plan(ctx context.Context) (client *redis.Client, names []string, moved []*shard, err error) {
	l := s.l
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ctx.Err() != nil {
		return nil, nil, nil, broker.ErrClosed
	}
	s.mu.Lock()
	all := sortedKeys(s.chans)
	s.mu.Unlock()
	for _, n := range all {
		ch, _ := l.channelOf(n)
		to, err := l.shardFor(ctx, ch)
		if err != nil {
			return nil, nil, moved, err
		}
		if to == s {
			continue
		}
		s.mu.Lock()
		delete(s.chans, n)
		s.mu.Unlock()
		if r := l.refs[ch]; r != nil {
			r.shard = to
		}
		if err := to.subscribe(ctx, n); err != nil {
			to.breakConn()
		}
		moved = append(moved, to)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.chans) == 0 {
		// Nothing is served here any more (its master failed over):
		// the shard ends.
		s.done = true
		s.endBuild()
		delete(l.shards, s.addr)
		l.setHealth(s.side(), nil)
		return nil, nil, moved, errEnded
	}
	return s.client, sortedKeys(s.chans), moved, nil
}

// install ends a rebuild. A connection made (ps, subscribed to names;
// err nil) is subscribed to the channels followed here since plan, and
// unsubscribed from those left, then becomes the shard's; a PING asks
// run for the resync.
func (s *shard) install(ctx context.Context, ps *redis.PubSub, names []string, err error, first bool) error {
	l := s.l
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil && (s.done || l.ctx.Err() != nil) {
		err = broker.ErrClosed
	}
	if err == nil {
		was := make(map[string]bool, len(names))
		for _, n := range names {
			was[n] = true
			if !s.chans[n] {
				ps.SUnsubscribe(ctx, n)
			}
		}
		for _, n := range sortedKeys(s.chans) {
			if !was[n] {
				if err = ps.SSubscribe(ctx, n); err != nil {
					break
				}
			}
		}
	}
	s.failed = err
	s.endBuild()
	if err != nil {
		if ps != nil {
			ps.Close()
		}
		s.building = make(chan struct{}) // still no connection up
		return err
	}
	s.ps = ps
	if f := l.opts.beforeResync; f != nil && !first {
		go func() {
			f("shard")
			ps.Ping(l.ctx, "resync")
		}()
		return nil
	}
	return ps.Ping(ctx, "resync")
}

// endBuild wakes whoever waits for the rebuild under way (ready).
// Called with s.mu held.
func (s *shard) endBuild() {
	if s.building != nil {
		close(s.building)
		s.building = nil
	}
}

// askResync asks the shard's connection for a resync, unless it has none
// up: the rebuild that makes the next one asks then.
func (s *shard) askResync(ctx context.Context) {
	s.mu.Lock()
	ps, building := s.ps, s.building != nil
	s.mu.Unlock()
	if !building {
		ps.Ping(ctx, "resync")
	}
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
