package redislog_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/broker/brokertest"
	"github.com/pushctl/pushctl/internal/broker/redislog"
	"github.com/pushctl/pushctl/internal/redistest"
)

// redisCPU is redis-server's CPU time so far, in µs (INFO cpu).
func redisCPU(b testing.TB, rdb *redis.Client) float64 {
	info, err := rdb.Info(context.Background(), "cpu").Result()
	if err != nil {
		b.Fatal(err)
	}
	total := 0.0
	for _, line := range strings.Split(info, "\n") {
		k, v, _ := strings.Cut(strings.TrimSpace(line), ":")
		if k == "used_cpu_user" || k == "used_cpu_sys" {
			f, _ := strconv.ParseFloat(v, 64)
			total += f * 1e6
		}
	}
	return total
}

// BenchmarkRedisPublish measures redis-server's CPU time per publish
// (redis-µs/op) and Redis commands per publish (cmds/op) on a channel
// with a full history of 1000, one subscriber on another node: publishes
// one at a time (each its own script call) and streamed (as many in flight
// as an NDJSON stream keeps, sent together).
//
// With PUSHCTL_COST_REDIS=host:port it uses that redis-server instead of
// starting one: scripts/redis-cost.sh runs one under callgrind to count
// its instructions per publish, which, unlike CPU time, does not move
// with whatever else the machine is doing.
func BenchmarkRedisPublish(b *testing.B) {
	addr := os.Getenv("PUSHCTL_COST_REDIS")
	if addr == "" {
		addr = redistest.Start(b, redistest.Options{}).Addr()
	}
	url := "redis://" + addr + "/0"
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	for _, mode := range []string{"one-at-a-time", "streamed"} {
		b.Run(mode, func(b *testing.B) {
			p := newPrefix()
			a := open(b, url, p, brokertest.Options{})
			other := open(b, url, p, brokertest.Options{})
			s, err := other.Subscribe(context.Background(), broker.SubscribeOptions{Channels: []string{"cost"}, QueueSize: 1 << 22})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			data := []byte(strings.Repeat("x", 100))
			for i := 0; i < 1100; i++ { // a full history
				if _, _, err := a.Publish(context.Background(), &broker.Message{Channel: "cost", Data: data}); err != nil {
					b.Fatal(err)
				}
			}
			rdb.ConfigResetStat(context.Background())
			cpu0 := redisCPU(b, rdb)
			b.ResetTimer()
			if mode == "one-at-a-time" {
				for i := 0; i < b.N; i++ {
					if _, _, err := a.Publish(context.Background(), &broker.Message{Channel: "cost", Data: data}); err != nil {
						b.Fatal(err)
					}
				}
			} else {
				waits := make(chan func() (*broker.Message, int, error), 1024)
				done := make(chan error, 1)
				go func() {
					var first error
					for w := range waits {
						if _, _, err := w(); err != nil && first == nil {
							first = err
						}
					}
					done <- first
				}()
				for i := 0; i < b.N; i++ {
					w, err := broker.StartPublish(context.Background(), a, &broker.Message{Channel: "cost", Data: data})
					if err != nil {
						b.Fatal(err)
					}
					waits <- w
				}
				close(waits)
				if err := <-done; err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			cpu1 := redisCPU(b, rdb)
			b.ReportMetric((cpu1-cpu0)/float64(b.N), "redis-µs/op")
			calls := 0
			for name, n := range commandCalls(b, []*redis.Client{rdb}) {
				if !strings.HasPrefix(name, "info") && !strings.HasPrefix(name, "config") {
					calls += n
				}
			}
			b.ReportMetric(float64(calls)/float64(b.N), "cmds/op")
		})
	}
}

// Publishes sent together in one script call (a batch larger than the
// history, and one over the history's bytes) keep the newest messages,
// and the channel's byte count stays exact.
func TestBatchTrimsHistory(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	for _, tc := range []struct {
		name  string
		o     brokertest.Options
		bytes int64
		keep  int
	}{
		{"size", brokertest.Options{HistorySize: 5}, 0, 5},
		{"bytes", brokertest.Options{HistorySize: 1000}, 75, 7},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPrefix()
			hub := broker.NewHub()
			l, err := redislog.Open(bg(t), redislog.Options{URL: srv.URL(), Prefix: p, Retention: broker.Retention{HistorySize: tc.o.HistorySize, HistoryBytes: tc.bytes}}, hub)
			if err != nil {
				t.Fatal(err)
			}
			b := broker.New(hub, l, broker.CoreOptions{})
			defer b.Close()
			for round := 0; round < 2; round++ {
				var datas []string
				for i := 0; i < 20; i++ {
					datas = append(datas, fmt.Sprintf("m%09d", round*20+i))
				}
				publishBatch(t, b, "trim", datas)
				info, err := b.Channel(bg(t), "trim")
				if err != nil {
					t.Fatal(err)
				}
				if info.Messages != tc.keep || info.Bytes != int64(10*tc.keep) || info.LastSeq != uint64(20*(round+1)) {
					t.Fatalf("round %d: %+v, want %d messages of 10 bytes", round, info, tc.keep)
				}
				s := subscribe(t, b, broker.SubscribeOptions{Channels: []string{"trim"}, Last: -1})
				msgs, _ := events(t, s, tc.keep)
				for i, m := range msgs {
					if want := fmt.Sprintf("m%09d", 20*(round+1)-tc.keep+i); string(m.Data) != want {
						t.Fatalf("round %d: message %d is %s, want %s", round, i, m.Data, want)
					}
				}
				s.Close()
			}
		})
	}
}

// BenchmarkRedisClusterPublish streams publishes over 30 channels through
// one node on a Redis Cluster of 1 and of 3 shards, and reports each
// shard's CPU time per publish (shard-µs/op, the busiest shard's;
// total-µs/op, all shards'): the work spreads over the shards, so the
// busiest shard, which bounds the cluster's rate, does a third of it.
func BenchmarkRedisClusterPublish(b *testing.B) {
	for _, shards := range []int{1, 3} {
		b.Run(strconv.Itoa(shards)+"-shards", func(b *testing.B) {
			c := redistest.StartCluster(b, shards)
			a := open(b, c.URL(), newPrefix(), brokertest.Options{})
			clients := make([]*redis.Client, shards)
			for i, s := range c.Servers {
				clients[i] = redis.NewClient(&redis.Options{Addr: s.Addr()})
				defer clients[i].Close()
			}
			cpu := func() []float64 {
				out := make([]float64, shards)
				for i, rc := range clients {
					out[i] = redisCPU(b, rc)
				}
				return out
			}
			data := []byte(strings.Repeat("x", 100))
			before := cpu()
			b.ResetTimer()
			waits := make(chan func() (*broker.Message, int, error), 1024)
			done := make(chan error, 1)
			go func() {
				var first error
				for w := range waits {
					if _, _, err := w(); err != nil && first == nil {
						first = err
					}
				}
				done <- first
			}()
			for i := 0; i < b.N; i++ {
				w, err := broker.StartPublish(context.Background(), a, &broker.Message{Channel: "spread.c" + strconv.Itoa(i%30), Data: data})
				if err != nil {
					b.Fatal(err)
				}
				waits <- w
			}
			close(waits)
			if err := <-done; err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			after := cpu()
			busiest, total := 0.0, 0.0
			for i := range after {
				d := after[i] - before[i]
				total += d
				busiest = max(busiest, d)
			}
			b.ReportMetric(busiest/float64(b.N), "shard-µs/op")
			b.ReportMetric(total/float64(b.N), "total-µs/op")
		})
	}
}
