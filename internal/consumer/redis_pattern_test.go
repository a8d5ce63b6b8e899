package consumer

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/pushctl/pushctl/internal/broker/redislog"
	"github.com/pushctl/pushctl/internal/redistest"
)

// On Redis Cluster a publish goes out where patterns are heard only when
// its node read that some node follows a pattern; a node can read that
// just before a pattern is followed. Here the read is made to say "none"
// (the pattern's entry taken out of Redis for a moment) while a pattern
// consumer is fed: the feeding node does not hear the first message of a
// new channel the pattern matches, nor the next message of a channel its
// replay read, and first hears each past a hole. The consumer must still
// keep every message published since it was created, in order, with no
// gap.
func TestRedisClusterPatternConsumerKeepsWhatItDidNotHear(t *testing.T) {
	ns := redisNodes(t, redistest.StartCluster(t, 3).URL(), 2)
	l := ns[0].b.Log().(*redislog.Log)
	rdb, routes := l.Client(), l.Prefix()+"{=}:routes"
	ctx := context.Background()
	redisPublish(t, ns[0].b, "pc.old", 0, 0) // before the consumer: not kept
	c := redisOpen(t, ns[1], "pc", Config{Filter: "pc.*"})
	// Fed, and live: once the feeding node's pattern is known, a message
	// of another channel is heard and kept.
	deadline := time.Now().Add(10 * time.Second)
	for n, _ := rdb.HGet(ctx, routes, "pc.*").Int(); n != 1; n, _ = rdb.HGet(ctx, routes, "pc.*").Int() {
		if time.Now().After(deadline) {
			t.Fatalf("pattern followed by %d nodes, want 1: the feeding node", n)
		}
		<-time.After(10 * time.Millisecond)
	}
	redisPublish(t, ns[0].b, "pc.warm", 1, 1)
	waitInfo(t, c, "the warm-up message kept", func(i Info) bool { return i.Pending == 1 })
	if err := rdb.HDel(ctx, routes, "pc.*").Err(); err != nil {
		t.Fatal(err)
	}
	// Sharded Pub/Sub only: not heard.
	redisPublish(t, ns[0].b, "pc.new", 1, 1)
	redisPublish(t, ns[0].b, "pc.old", 1, 1)
	if err := rdb.HIncrBy(ctx, routes, "pc.*", 1).Err(); err != nil {
		t.Fatal(err)
	}
	redisPublish(t, ns[0].b, "pc.new", 2, 3)
	redisPublish(t, ns[0].b, "pc.old", 2, 3)
	waitInfo(t, c, "7 kept", func(i Info) bool { return i.Pending >= 7 })
	got := map[string][]string{}
	for _, d := range fetchAll(t, c, 7, 10) {
		if d.Msg == nil {
			t.Fatalf("a gap: %+v", d)
		}
		got[d.Msg.Channel] = append(got[d.Msg.Channel], string(d.Msg.Data))
	}
	if fmt.Sprint(got) != "map[pc.new:[1 2 3] pc.old:[1 2 3] pc.warm:[1]]" {
		t.Fatalf("kept %v", got)
	}
}
