package redislog

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pushctl/pushctl/internal/broker"
)

// Deliveries across nodes (broker.DeliveryLog): one node holds a
// consumer's lease (key wh:<name>:lease, the holder's token, expiring
// after NodeTimeout unless renewed) and stores the positions up to which
// it delivered (hash wh:<name>:pos: a field per event channel, "<epoch>-
// <seq>", and "*", the time in Unix microseconds from which the channels
// it does not name are read). Both keys are in the {=} slot, so that a
// script checks the lease and stores the positions in one step: a node
// that lost its lease cannot move them.

var _ broker.DeliveryLog = (*Log)(nil)

// leaseScript: KEYS lease; ARGV token, ttl ms. 1 taken, 2 renewed, 0 held
// by another.
var leaseScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 2
end
return 0
`)

// leaseLeftScript: KEYS lease; ARGV token. The ms left, or 0.
var leaseLeftScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local t = redis.call('PTTL', KEYS[1])
if t < 0 then return 0 end
return t
`)

// dropLeaseScript: KEYS lease; ARGV token.
var dropLeaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
`)

// savePositionsScript: KEYS lease, pos; ARGV token, then field, value
// pairs. 1 stored, 0 the lease is another's.
var savePositionsScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i+1]) end
return 1
`)

// dropPositions: KEYS positions. ARGV channel, position pairs: each
// field deleted if it still holds that position.
var dropPositionsScript = redis.NewScript(`
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i+1] then redis.call('HDEL', KEYS[1], ARGV[i]) end
end
return 0
`)

func init() {
	scripts = append(scripts, leaseScript, leaseLeftScript, dropLeaseScript, savePositionsScript, dropPositionsScript)
}

func (l *Log) leaseKey(name string) string { return l.key("wh:" + name + ":lease") }
func (l *Log) posKey(name string) string   { return l.key("wh:" + name + ":pos") }

// LeaseTTL implements broker.DeliveryLog.
func (l *Log) LeaseTTL() time.Duration { return l.opts.NodeTimeout }

// TakeLease implements broker.DeliveryLog.
func (l *Log) TakeLease(ctx context.Context, name, token string) (bool, error) {
	n, err := leaseScript.Run(ctx, l.rdb, []string{l.leaseKey(name)}, token, l.opts.NodeTimeout.Milliseconds()).Int()
	if err != nil {
		return false, l.unavailable(err)
	}
	return n > 0, nil
}

// LeaseLeft implements broker.DeliveryLog.
func (l *Log) LeaseLeft(ctx context.Context, name, token string) (time.Duration, error) {
	ms, err := leaseLeftScript.Run(ctx, l.rdb, []string{l.leaseKey(name)}, token).Int64()
	if err != nil {
		return 0, l.unavailable(err)
	}
	return time.Duration(ms) * time.Millisecond, nil
}

// DropLease implements broker.DeliveryLog.
func (l *Log) DropLease(ctx context.Context, name, token string) error {
	if err := dropLeaseScript.Run(ctx, l.rdb, []string{l.leaseKey(name)}, token).Err(); err != nil && !errors.Is(err, redis.Nil) {
		return l.unavailable(err)
	}
	return nil
}

// Positions implements broker.DeliveryLog.
func (l *Log) Positions(ctx context.Context, name string, since time.Time) (broker.Cursor, time.Time, error) {
	key := l.posKey(name)
	if err := l.rdb.HSetNX(ctx, key, broker.SinceKey, since.UnixMicro()).Err(); err != nil {
		return nil, time.Time{}, l.unavailable(err)
	}
	all, err := l.rdb.HGetAll(ctx, key).Result()
	if err != nil {
		return nil, time.Time{}, l.unavailable(err)
	}
	c := make(broker.Cursor, len(all))
	var from time.Time
	for k, v := range all {
		if k == broker.SinceKey {
			us, _ := strconv.ParseInt(v, 10, 64)
			from = time.UnixMicro(us).UTC()
			continue
		}
		if p, err := broker.ParsePosition(v); err == nil {
			c[k] = p
		}
	}
	if err := l.dropGone(ctx, key, c); err != nil {
		return nil, time.Time{}, err
	}
	return c, from, nil
}

// dropGone drops from c, and from the positions stored in key, the
// channels that no longer exist (expired or deleted: a position names
// an epoch gone with them, and a channel made again is read from the
// start time), so the hash keeps one field per channel that exists, not
// per channel ever sent.
func (l *Log) dropGone(ctx context.Context, key string, c broker.Cursor) error {
	names := make([]string, 0, len(c))
	for ch := range c {
		names = append(names, ch)
	}
	for len(names) > 0 {
		batch := names[:min(len(names), 1000)]
		names = names[len(batch):]
		pipe := l.rdb.Pipeline()
		exists := make([]*redis.IntCmd, len(batch))
		for i, ch := range batch {
			exists[i] = pipe.Exists(ctx, l.chanKey(ch, "m"))
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return l.unavailable(err)
		}
		var gone []any
		for i, ch := range batch {
			if exists[i].Val() == 0 {
				gone = append(gone, ch, c[ch].String())
				delete(c, ch)
			}
		}
		if len(gone) > 0 {
			// Each only if still the position read: one the holder
			// stored since (the channel made again) stays.
			if err := dropPositionsScript.Run(ctx, l.rdb, []string{key}, gone...).Err(); err != nil {
				return l.unavailable(err)
			}
		}
	}
	return nil
}

// SavePositions implements broker.DeliveryLog.
func (l *Log) SavePositions(ctx context.Context, name, token string, c broker.Cursor) error {
	if len(c) == 0 {
		return nil
	}
	args := make([]any, 0, 1+2*len(c))
	args = append(args, token)
	for ch, p := range c {
		args = append(args, ch, p.String())
	}
	n, err := savePositionsScript.Run(ctx, l.rdb, []string{l.leaseKey(name), l.posKey(name)}, args...).Int()
	if err != nil {
		return l.unavailable(err)
	}
	if n == 0 {
		return broker.ErrLeaseLost
	}
	return nil
}
