package redislog_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/broker/brokertest"
	"github.com/pushctl/pushctl/internal/redistest"
)

// chanOn finds a channel name base.N whose slot the server on serves.
func chanOn(t *testing.T, c *redistest.Cluster, p, base string, on *redistest.Server) string {
	t.Helper()
	for i := 1; i < 1000; i++ {
		ch := fmt.Sprintf("%s.%d", base, i)
		if c.Owner(t, c.Slot(t, p+"{"+ch+"}:m")) == on {
			return ch
		}
	}
	t.Fatalf("no channel %s.N on %s", base, on.Addr())
	return ""
}

// One master stopped does not hold up the channels of another: B's
// Pub/Sub connections to masters X and Y are killed and X is stopped
// (SIGSTOP) at once. While X's shard tries, again and again, to make a
// new connection to X (each attempt waits for X to answer), Y's shard
// comes back and its resync takes its own channel, not X's, so what is
// published on Y's channel reaches B's subscriber while X is still
// stopped. (The rebuild of X's shard held the node's lock while it
// waited for X: Y's shard could neither rebuild nor dispatch, and B
// delivered nothing on any shard.)
//
// The masters serve their slots even while one of them is down
// (cluster-require-full-coverage no): with the default, the others
// refuse every command once they take X for failed (2 s here, the
// cluster-node-timeout of redistest), and Y's channel could not be
// published nor resynchronized either.
func TestHeldChannelOfAStoppedMaster(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	for _, s := range c.Servers {
		if err := redisClient(t, s).ConfigSet(bg(t), "cluster-require-full-coverage", "no").Err(); err != nil {
			t.Fatal(err)
		}
	}
	p := newPrefix()
	o := brokertest.Options{HistorySize: 100}
	a := open(t, c.URL(), p, o)
	b := open(t, c.URL(), p, o)
	control := c.Owner(t, c.Slot(t, p+"{=}:counts")) // the heartbeats' and the classic connection's
	var x, y *redistest.Server
	for _, s := range c.Servers {
		switch {
		case s == control:
		case x == nil:
			x = s
		default:
			y = s
		}
	}
	chX, chY := chanOn(t, c, p, "x", x), chanOn(t, c, p, "y", y)
	subX := subscribe(t, b, broker.SubscribeOptions{Channels: []string{chX}})
	subY := subscribe(t, b, broker.SubscribeOptions{Channels: []string{chY}})
	for ch, s := range map[string]*broker.Subscription{chX: subX, chY: subY} {
		publish(t, a, ch, "1")
		if d, _, err := nextData(t, s, 10*time.Second); err != nil || d != "1" {
			t.Fatalf("%s: %q %v", ch, d, err)
		}
	}
	for _, s := range []*redistest.Server{x, y} {
		if err := redisClient(t, s).Do(bg(t), "CLIENT", "KILL", "TYPE", "pubsub").Err(); err != nil {
			t.Fatal(err)
		}
	}
	x.Pause()
	defer x.Resume()
	eventually(t, "publish to "+chY, func() error {
		_, _, err := a.Publish(bg(t), &broker.Message{Channel: chY, Data: []byte("2")})
		return err
	})
	if d, gaps, err := nextData(t, subY, 4*time.Second); err != nil || d != "2" {
		t.Fatalf("%s on B while %s is stopped: got %q gaps %v err %v; want 2", chY, x.Addr(), d, gaps, err)
	}
}
