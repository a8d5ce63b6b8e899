package redislog_test

import (
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/pushctl/pushctl/internal/redistest"
)

func redisClient(t *testing.T, srv *redistest.Server) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	t.Cleanup(func() { c.Close() })
	return c
}
