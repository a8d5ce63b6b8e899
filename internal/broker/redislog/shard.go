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
// may only name channels of one slot. After the connection broke the
// shard does not let go-redis resubscribe (it would name every channel in
// one command) but builds a new connection, moves channels whose slot now
// has another master, and resynchronizes its channels from their streams.
//
// Lock order: Log.mu, then shard.mu.
type shard struct {
	l    *Log
	addr string

	mu     sync.Mutex
	client *redis.Client
	ps     *redis.PubSub
	chans  map[string]bool // Pub/Sub channel names subscribed here
	done   bool
}

// shardFor returns the shard serving channel's slot, starting it the first
// time. Called with l.mu held.
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
	sh := &shard{l: l, addr: addr, client: c, ps: c.SSubscribe(ctx), chans: map[string]bool{}}
	l.shards[addr] = sh
	l.wg.Add(1)
	go sh.run()
	return sh, nil
}

func (s *shard) side() string { return "shard " + s.addr }

func (s *shard) pubsub() *redis.PubSub {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ps
}

func (s *shard) subscribe(ctx context.Context, name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.chans[name] = true
	return s.ps.SSubscribe(ctx, name)
}

// unsubscribe forgets name first, so the server's sunsubscribe reply is
// not taken for a slot moving away.
func (s *shard) unsubscribe(ctx context.Context, name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.chans, name)
	s.ps.SUnsubscribe(ctx, name)
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

// run is the one reader of the shard's connection.
func (s *shard) run() {
	l := s.l
	defer l.wg.Done()
	broken := false
	backoff := 50 * time.Millisecond
	for {
		ps := s.pubsub()
		msg, err := ps.Receive(l.ctx)
		if err == nil {
			if sub, ok := msg.(*redis.Subscription); ok && sub.Kind == "sunsubscribe" && s.has(sub.Channel) {
				// The server dropped a channel still followed: its slot
				// moved to another master.
				err = errSlotMoved
			}
		}
		if err != nil {
			if l.ctx.Err() != nil || s.closed() {
				return
			}
			// Its channels wait for the resync that follows the rebuild
			// (this shard's, or the one's a channel moved to).
			l.hold(s.has)
			if err != errSlotMoved {
				broken = true
				l.setHealth(s.side(), err)
				select {
				case <-l.ctx.Done():
					return
				case <-time.After(backoff):
				}
				backoff = min(2*backoff, 2*time.Second)
			}
			if err := s.rebuild(); err != nil {
				broken = true
				l.setHealth(s.side(), err)
				// A connection made before the failure (go-redis would
				// reconnect it with only some channels, and no resync
				// asked) is closed: the next receive fails, and the
				// rebuild is tried again after the backoff.
				s.breakConn()
			}
			continue
		}
		switch m := msg.(type) {
		case *redis.Message:
			l.dispatch(m, true)
		case *redis.Pong:
			if m.Payload != "resync" {
				l.pong(m.Payload)
				continue
			}
			if err := l.resync(s.has); err != nil {
				l.setHealth(s.side(), err)
				s.breakConn() // try again on a new connection
				continue
			}
			if broken {
				broken = false
				backoff = 50 * time.Millisecond
				l.setHealth(s.side(), nil)
			}
		}
	}
}

var errSlotMoved = errors.New("slot moved")

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

// rebuild replaces the connection: every channel of the shard is looked
// up again (a failover or a resharding may have given its slot to
// another master) and subscribed where its slot is now; a PING then asks
// run to resynchronize the channels from their streams.
func (s *shard) rebuild() error {
	l := s.l
	ctx, cancel := context.WithTimeout(l.ctx, 5*time.Second)
	defer cancel()
	l.cluster.ReloadState(ctx)
	l.mu.Lock()
	defer l.mu.Unlock()
	s.mu.Lock()
	names := sortedKeys(s.chans)
	s.mu.Unlock()
	var moved []*shard
	for _, n := range names {
		ch, _ := l.channelOf(n)
		to, err := l.shardFor(ctx, ch)
		if err != nil {
			return err
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
	for _, to := range moved {
		// The channels that moved (on hold since this connection broke:
		// run) are resynchronized by their new shard.
		to.pubsub().Ping(ctx, "resync")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ps.Close()
	if len(s.chans) == 0 {
		// Nothing is served here any more (its master failed over):
		// the shard ends.
		s.done = true
		delete(l.shards, s.addr)
		l.setHealth(s.side(), nil)
		return nil
	}
	s.ps = s.client.SSubscribe(ctx)
	for _, n := range sortedKeys(s.chans) {
		if err := s.ps.SSubscribe(ctx, n); err != nil {
			return err
		}
	}
	if f := l.opts.beforeResync; f != nil {
		ps := s.ps
		go func() {
			f("shard")
			ps.Ping(l.ctx, "resync")
		}()
		return nil
	}
	return s.ps.Ping(ctx, "resync")
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
