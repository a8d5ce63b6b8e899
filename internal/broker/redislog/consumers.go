package redislog

import "github.com/redis/go-redis/v9"

// What durable consumers on Redis (consumer.RedisEngine) share with the
// log: its client (single Redis or Cluster) and its key prefix. Their
// keys are in slots of their own ({c!NAME}); the lease TTL is LeaseTTL.

// Client is the log's Redis client.
func (l *Log) Client() redis.UniversalClient { return l.rdb }

// Prefix starts every key of the log.
func (l *Log) Prefix() string { return l.opts.Prefix }
