package redislog_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/broker/brokertest"
	"github.com/pushctl/pushctl/internal/broker/redislog"
	"github.com/pushctl/pushctl/internal/redistest"
)

var prefixes atomic.Int64

// open makes a broker node on url with its own key prefix per test (nodes
// of one test share prefix).
func open(t *testing.T, url, prefix string, o brokertest.Options) *broker.Core {
	t.Helper()
	hub := broker.NewHub()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, err := redislog.Open(ctx, redislog.Options{URL: url, Prefix: prefix, HistorySize: o.HistorySize,
		HistoryAge: o.HistoryAge, Now: o.Now}, hub)
	if err != nil {
		t.Fatal(err)
	}
	b := broker.New(hub, l, broker.CoreOptions{QueueSize: o.QueueSize})
	t.Cleanup(func() { b.Close() })
	return b
}

func newPrefix() string { return fmt.Sprintf("t%d:", prefixes.Add(1)) }

func TestRedisConformance(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	brokertest.Run(t, func(t *testing.T, o brokertest.Options) broker.Broker {
		return open(t, srv.URL(), newPrefix(), o)
	})
}
