package redislog

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pushctl/pushctl/internal/broker"
)

// Lifecycle events across nodes (broker.LifecycleLog). A channel's
// occupancy lives in a hash in its event channel's slot (the presence
// hash of the event channel, which has no members: h:<node> a node's
// hold, n the holding nodes), changed only by occupyScript, which appends
// channel_occupied or channel_vacated in the same step when the count
// goes 0→1 or 1→0: one event per change for the cluster. Each node lists
// its holds (life:o:<node>). A channel's presence members are counted
// per node in the same hash by memberScript, which appends member_added
// and member_removed in the same step (life:m:<node> lists the event
// channels where a node holds members). Its connections and subscriptions are
// recorded in the same hash of their event channel (r:<node>:<kind>:<key>,
// kind "c" or "s"; the connections' in $events.connections's), by
// recordScript, which appends the connection's or subscription's event in
// the same step: recorded and told are one. When a node stops beating,
// the others end its members, then its subscriptions and holds, channel by channel, then
// its connections, each end also one step (the record deleted, the end
// appended, nothing when another node deleted it first: told once),
// before they take its counts out.

var _ broker.LifecycleLog = (*Log)(nil)

// occupyScript: ARGV node, unused, unused, "1" hold / "0" release, call
// id, then publish()'s. Returns {0} (nothing changed) or {1, publish()'s
// reply…}; a call sent again returns the first copy's reply.
var occupyScript = redis.NewScript(luaLib + luaPublish + luaPresence + `
local p, node = KEYS[1], ARGV[1]
local again = replied(p)
if again then return again end
local hold = 'h:' .. node
if ARGV[4] == '1' then
  if redis.call('HSETNX', p, hold, 1) == 0 then return reply(p, {0}) end
  if redis.call('HINCRBY', p, 'n', 1) > 1 then return reply(p, {0}) end
else
  if redis.call('HDEL', p, hold) == 0 then return reply(p, {0}) end
  if redis.call('HINCRBY', p, 'n', -1) > 0 then return reply(p, {0}) end
  redis.call('HDEL', p, 'n')
end
local r = announce(p)
return reply(p, {1, r[1], r[2], r[3], r[4]})
`)

// recordScript: ARGV node, "<kind>:<key>", info, "1" record / "0" end,
// call id, then publish()'s. Records (or ends) a connection or
// subscription of node and appends its event; ending one not recorded
// appends nothing. Returns {0} or {1, publish()'s reply…}; a call sent
// again returns the first copy's reply. The hash's r counts its records
// (member holds included, see memberScript): a hash with records is
// kept (see luaPresence's reply).
var recordScript = redis.NewScript(luaLib + luaPublish + luaPresence + `
local p, node = KEYS[1], ARGV[1]
local again = replied(p)
if again then return again end
local f = 'r:' .. node .. ':' .. ARGV[2]
if ARGV[4] == '1' then
  -- Recorded once: a record made again (a node back from the dead
  -- records what it holds, some of which may still be there) appends
  -- nothing when it is there already.
  if redis.call('HSETNX', p, f, ARGV[3]) == 0 then return reply(p, {0}) end
  redis.call('HINCRBY', p, 'r', 1)
elseif redis.call('HDEL', p, f) == 0 then
  return reply(p, {0})
elseif redis.call('HINCRBY', p, 'r', -1) <= 0 then
  redis.call('HDEL', p, 'r')
end
local r = announce(p)
return reply(p, {1, r[1], r[2], r[3], r[4]})
`)

// memberScript: ARGV node, member id, info, "1" hold / "0" release,
// call id, then publish()'s. A node's hold of a presence member is
// recorded in the hash of the channel's event channel (r:<node>:m:<id>,
// with info for a reaper; mc:<id> how many nodes hold the member, mk:<node>
// how many members the node holds there), and member_added is appended
// in the same step when the member's count goes 0→1, member_removed when
// it goes 1→0: one event per change for the cluster, none lost between
// deciding and appending. Holding what node holds, or releasing what it
// does not, changes nothing. Returns {0, k} or {1, publish()'s reply…,
// k}, k the members node still holds there; a call sent again returns
// the first copy's reply.
var memberScript = redis.NewScript(luaLib + luaPublish + luaPresence + `
local p, node, id = KEYS[1], ARGV[1], ARGV[2]
local again = replied(p)
if again then return again end
local f, c, k = 'r:' .. node .. ':m:' .. id, 'mc:' .. id, 'mk:' .. node
local held
if ARGV[4] == '1' then
  if redis.call('HSETNX', p, f, ARGV[3]) == 0 then
    return reply(p, {0, tonumber(redis.call('HGET', p, k) or '0')})
  end
  redis.call('HINCRBY', p, 'r', 1)
  held = redis.call('HINCRBY', p, k, 1)
  if redis.call('HINCRBY', p, c, 1) > 1 then return reply(p, {0, held}) end
else
  if redis.call('HDEL', p, f) == 0 then
    return reply(p, {0, tonumber(redis.call('HGET', p, k) or '0')})
  end
  if redis.call('HINCRBY', p, 'r', -1) <= 0 then redis.call('HDEL', p, 'r') end
  held = redis.call('HINCRBY', p, k, -1)
  if held <= 0 then redis.call('HDEL', p, k) end
  if redis.call('HINCRBY', p, c, -1) > 0 then return reply(p, {0, held}) end
  redis.call('HDEL', p, c)
end
local r = announce(p)
return reply(p, {1, r[1], r[2], r[3], r[4], held})
`)

func init() { scripts = append(scripts, occupyScript, recordScript, memberScript) }

// lifeKey is the hash of node's occupancy holds ("o": event channel → 1)
// or of the event channels where it holds presence members ("m").
func (l *Log) lifeKey(node, kind string) string { return l.key("life:" + kind + ":" + node) }

// connectionsEvents is the event channel of connection events (whose
// hash holds the connections' records).
const connectionsEvents = broker.ReservedPrefix + "events.connections"

// WatchLifecycle implements broker.LifecycleLog.
func (l *Log) WatchLifecycle(lost func(node, kind, key, info string) error, rejoin func()) {
	l.presenceMu.Lock()
	defer l.presenceMu.Unlock()
	l.lifeLost, l.lifeRejoin = lost, rejoin
}

// Occupy implements broker.LifecycleLog.
func (l *Log) Occupy(ctx context.Context, node, evChannel string, hold bool, ev *broker.Message) (bool, error) {
	self := node == "" || node == l.node
	if self {
		node = l.node
	}
	if self && hold {
		// Listed first, so that a reaper finds every hold.
		if err := l.rdb.HSet(ctx, l.lifeKey(node, "o"), evChannel, 1).Err(); err != nil {
			return false, l.unavailable(err)
		}
	}
	flag := 0
	if hold {
		flag = 1
	}
	vals, err := l.presenceOp(ctx, occupyScript, node, evChannel, "", nil, flag, ev)
	if err != nil {
		return false, err
	}
	if self && !hold {
		l.rdb.HDel(ctx, l.lifeKey(node, "o"), evChannel)
	}
	status, _ := vals[0].(int64)
	return status == 1, nil
}

// Member implements broker.LifecycleLog.
func (l *Log) Member(ctx context.Context, node, evChannel, id, info string, hold bool, ev *broker.Message) (bool, error) {
	self := node == "" || node == l.node
	if self {
		node = l.node
	}
	if self && hold {
		// Listed first, so that a reaper finds every hold.
		if err := l.rdb.HSet(ctx, l.lifeKey(node, "m"), evChannel, 1).Err(); err != nil {
			return false, l.unavailable(err)
		}
	}
	flag := 0
	if hold {
		flag = 1
	}
	if err := l.refusing(); err != nil {
		return false, fmt.Errorf("%w: %v", broker.ErrUnavailable, err)
	}
	ev.Channel = evChannel
	o := &op{m: ev, script: memberScript, args: []any{node, id, info, flag}, res: make(chan opResult, 1)}
	if err := l.submit(ctx, o); err != nil {
		return false, err
	}
	r := <-o.res
	if r.err != nil {
		return false, r.err
	}
	vals := r.vals
	if held, _ := vals[len(vals)-1].(int64); self && !hold && held <= 0 {
		// The caller's calls for one event channel do not overlap, so no
		// hold can have come since. A failure leaves a name a reaper
		// skips.
		l.rdb.HDel(ctx, l.lifeKey(node, "m"), evChannel)
	}
	status, _ := vals[0].(int64)
	return status == 1, nil
}

// StartRecord implements broker.LifecycleLog: the script goes through the
// publisher, pipelined and in line with the event channel's appends.
func (l *Log) StartRecord(ctx context.Context, node, kind, key, info string, open bool, ev *broker.Message) (func() (bool, error), error) {
	if node == "" {
		node = l.node
	}
	if err := l.refusing(); err != nil {
		return nil, fmt.Errorf("%w: %v", broker.ErrUnavailable, err)
	}
	flag := 0
	if open {
		flag = 1
	}
	o := &op{m: ev, script: recordScript, args: []any{node, kind + ":" + key, info, flag}, res: make(chan opResult, 1)}
	if err := l.submit(ctx, o); err != nil {
		return nil, err
	}
	return func() (bool, error) {
		r := <-o.res
		if r.err != nil {
			return false, r.err
		}
		status, _ := r.vals[0].(int64)
		return status == 1, nil
	}, nil
}

// records lists node's records of a kind in an event channel's hash:
// key → info.
func (l *Log) records(ctx context.Context, evChannel, node, kind string) (map[string]string, error) {
	prefix := "r:" + node + ":" + kind + ":"
	out := map[string]string{}
	it := l.rdb.HScan(ctx, l.presenceKey(evChannel), 0, prefix+"*", 1000).Iterator()
	for it.Next(ctx) {
		f := it.Val()
		if !it.Next(ctx) {
			break
		}
		if k, ok := strings.CutPrefix(f, prefix); ok {
			out[k] = it.Val()
		}
	}
	return out, it.Err()
}

// reapLifecycle ends what node recorded: its presence members (each
// member_removed where node was the member's last holder), then channel
// by channel its subscriptions, then its hold (so a channel's unsubscribes come before
// its vacated), then its connections. Each end deletes the record and
// appends the event in one step (lost calls StartRecord or Member), so two reapers,
// or a reaper that died half-way and the next, tell each once.
func (l *Log) reapLifecycle(ctx context.Context, node string, c *reapClaim) error {
	l.presenceMu.Lock()
	lost := l.lifeLost
	l.presenceMu.Unlock()
	if lost == nil {
		return nil
	}
	// Its presence members first: their member_removed before the
	// channels' unsubscribes and vacated.
	members, err := l.rdb.HKeys(ctx, l.lifeKey(node, "m")).Result()
	if err != nil {
		return err
	}
	for _, evCh := range members {
		ms, err := l.records(ctx, evCh, node, "m")
		if err != nil {
			return err
		}
		for id, info := range ms {
			if err := c.keep(ctx); err != nil {
				return err
			}
			if err := lost(node, "m", id, info); err != nil {
				return fmt.Errorf("member %s of %s held by node %s: %w", id, evCh, node, err)
			}
		}
	}
	held, err := l.rdb.HKeys(ctx, l.lifeKey(node, "o")).Result()
	if err != nil {
		return err
	}
	for _, evCh := range held {
		subs, err := l.records(ctx, evCh, node, "s")
		if err != nil {
			return err
		}
		for k, info := range subs {
			if err := c.keep(ctx); err != nil {
				return err
			}
			if err := lost(node, "s", k, info); err != nil {
				return fmt.Errorf("subscription %s of node %s: %w", k, node, err)
			}
		}
		if err := c.keep(ctx); err != nil {
			return err
		}
		if err := lost(node, "o", evCh, ""); err != nil {
			return fmt.Errorf("hold of %s by node %s: %w", evCh, node, err)
		}
	}
	conns, err := l.records(ctx, connectionsEvents, node, "c")
	if err != nil {
		return err
	}
	for k, info := range conns {
		if err := c.keep(ctx); err != nil {
			return err
		}
		if err := lost(node, "c", k, info); err != nil {
			return fmt.Errorf("connection %s of node %s: %w", k, node, err)
		}
	}
	// Its lists are kept, to expire, not deleted: a node that comes back
	// while this runs lists its holds again in them (and makes them
	// persist again), and should it die for good later the next reaper
	// must find those. A name listed with nothing left under it costs
	// the next reaper one scan.
	for _, kind := range []string{"m", "o"} {
		if err := l.rdb.Expire(ctx, l.lifeKey(node, kind), lifeListsKept).Err(); err != nil {
			return err
		}
	}
	return nil
}

// lifeListsKept is how long a reaped node's lists (life:o, life:m) stay
// unless it comes back.
const lifeListsKept = 24 * time.Hour

// keepLifeLists makes this node's lists persist again (a reaper set them
// to expire while taking it for dead).
func (l *Log) keepLifeLists(ctx context.Context) {
	pipe := l.rdb.Pipeline()
	for _, kind := range []string{"m", "o"} {
		pipe.Persist(ctx, l.lifeKey(l.node, kind))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		l.unavailable(err)
	}
}

// rejoinLifecycle asks the events to hold this node's channels again.
func (l *Log) rejoinLifecycle() {
	l.presenceMu.Lock()
	rejoin := l.lifeRejoin
	l.presenceMu.Unlock()
	ctx, cancel := context.WithTimeout(l.ctx, 5*time.Second)
	l.keepLifeLists(ctx)
	cancel()
	if rejoin != nil {
		rejoin()
	}
}
