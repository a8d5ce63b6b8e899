package redislog

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/pushctl/pushctl/internal/broker"
)

// Lifecycle events across nodes (broker.LifecycleLog). A channel's
// occupancy lives in a hash in its event channel's slot (the presence
// hash of the event channel, which has no members: h:<node> a node's
// hold, n the holding nodes), changed only by occupyScript, which appends
// channel_occupied or channel_vacated in the same step when the count
// goes 0→1 or 1→0: one event per change for the cluster. Each node lists
// its holds, connections and subscriptions; when it stops beating, the
// others end them (the hash fields claimed one at a time, so that each is
// told once) before they take its counts out.

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

func init() { scripts = append(scripts, occupyScript) }

// lifeKey is the hash of node's tracked things of a kind ("o" holds,
// "c" connections, "s" subscriptions).
func (l *Log) lifeKey(node, kind string) string { return l.key("life:" + kind + ":" + node) }

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

// Track implements broker.LifecycleLog: the changes in one round trip.
func (l *Log) Track(ctx context.Context, changes []broker.Tracked) error {
	_, err := l.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, c := range changes {
			if c.Open {
				p.HSet(ctx, l.lifeKey(l.node, c.Kind), c.Key, c.Info)
			} else {
				p.HDel(ctx, l.lifeKey(l.node, c.Kind), c.Key)
			}
		}
		return nil
	})
	if err != nil {
		return l.unavailable(err)
	}
	return nil
}

// reapLifecycle ends what node tracked: its subscriptions, then its
// occupancy holds (so a channel's unsubscribes come before its vacated),
// then its connections. Each subscription and connection is claimed
// (HDEL) before it is told, so two reapers tell it once.
func (l *Log) reapLifecycle(ctx context.Context, node string) error {
	l.presenceMu.Lock()
	lost := l.lifeLost
	l.presenceMu.Unlock()
	if lost == nil {
		return nil
	}
	for _, kind := range []string{"s", "o", "c"} {
		key := l.lifeKey(node, kind)
		all, err := l.rdb.HGetAll(ctx, key).Result()
		if err != nil {
			return err
		}
		for k, info := range all {
			if kind != "o" {
				n, err := l.rdb.HDel(ctx, key, k).Result()
				if err != nil {
					return err
				}
				if n == 0 {
					continue // another node told it
				}
			}
			if err := lost(node, kind, k, info); err != nil {
				return fmt.Errorf("%s %s of node %s: %w", kind, k, node, err)
			}
		}
		if kind == "o" {
			if err := l.rdb.Del(ctx, key).Err(); err != nil {
				return err
			}
		}
	}
	return nil
}

// rejoinLifecycle asks the events to hold this node's channels again.
func (l *Log) rejoinLifecycle() {
	l.presenceMu.Lock()
	rejoin := l.lifeRejoin
	l.presenceMu.Unlock()
	if rejoin != nil {
		rejoin()
	}
}
