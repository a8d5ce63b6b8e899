// Package redisreply tells Redis's error replies apart for the code that
// keeps pushctl's state in Redis (internal/broker/redislog and
// internal/consumer): those by which Redis refuses a command for a
// passing reason, so that nothing ran and the same command may be sent
// again in a moment (Transient: Redis is unavailable for now, as when it
// is unreachable), and the others, which are not an outage (a script's
// own error, a wrong command).
package redisreply

import (
	"errors"
	"strings"

	"github.com/redis/go-redis/v9"
)

// Is reports whether err is an error reply from Redis (it answered), not
// a failure to reach it (a refused or broken connection, a timeout).
func Is(err error) bool {
	var r redis.Error
	return errors.As(err, &r)
}

// Transient reports whether err is an error reply by which Redis refused
// to run a command for a passing reason; nothing ran:
//
//   - LOADING: restarted, it is loading its data (seconds to minutes
//     with a large AOF or RDB); it accepts connections meanwhile;
//   - BUSY: a script has run longer than busy-reply-threshold;
//   - MASTERDOWN, READONLY, NOREPLICAS: a replica that lost its master
//     (replica-serve-stale-data no), a node just made a replica by a
//     failover, too few replicas for min-replicas-to-write;
//   - CLUSTERDOWN, TRYAGAIN, MOVED, ASK: a Redis Cluster failing over or
//     moving slots (go-redis follows MOVED and ASK a few times first);
//   - ERR max number of clients reached.
//
// Codes are matched whole: BUSYKEY and BUSYGROUP are not BUSY.
func Transient(err error) bool {
	msg, ok := reply(err)
	if !ok {
		return false
	}
	if strings.HasPrefix(msg, "ERR max number of clients reached") {
		return true
	}
	switch code(msg) {
	case "LOADING", "BUSY", "MASTERDOWN", "READONLY", "NOREPLICAS", "CLUSTERDOWN", "TRYAGAIN", "MOVED", "ASK":
		return true
	}
	return false
}

// Moving reports whether err is an error reply by which a Redis Cluster
// said that the command's slot is moving between shards (resharding, or
// adding a shard): TRYAGAIN, a command on several keys of a slot whose
// keys are split between the two while they move; MOVED and ASK, a slot
// served elsewhere (go-redis follows them a few times before it gives
// up). Nothing ran. It concerns that slot's keys only: the shards answer
// everything else, so it says nothing about Redis's health. It is
// Transient too.
func Moving(err error) bool {
	msg, ok := reply(err)
	if !ok {
		return false
	}
	switch code(msg) {
	case "TRYAGAIN", "MOVED", "ASK":
		return true
	}
	return false
}

// StoreRefused reports whether err is an error reply by which Redis
// refused a write because it cannot keep more data; nothing ran (a
// script's first write refused ends it before it changed anything, and
// Redis lets a script that has written go on), and nothing will until
// an operator acts:
//
//   - OOM: used memory is over maxmemory and the policy is noeviction
//     (what docs/cluster.md advises, so that history is never evicted);
//   - MISCONF: a background save failed and stop-writes-on-bgsave-error
//     is on (a full or failing disk).
//
// Callers answer it as the durable store's own full disk
// (broker.ErrStore: 507 store_failed), not as an outage: every node
// shares the same Redis, so another node would be refused too.
func StoreRefused(err error) bool {
	msg, ok := reply(err)
	if !ok {
		return false
	}
	switch code(msg) {
	case "OOM", "MISCONF":
		return true
	}
	return false
}

// reply is err's text when it is an error reply.
func reply(err error) (string, bool) {
	var r redis.Error
	if !errors.As(err, &r) {
		return "", false
	}
	return r.Error(), true
}

// code is an error reply's code, its first word. Some Redis-compatible
// servers (KVRocks) put ERR before it.
func code(msg string) string {
	c, _, _ := strings.Cut(strings.TrimPrefix(msg, "ERR "), " ")
	return c
}
