package redislog_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/broker/brokertest"
	"github.com/pushctl/pushctl/internal/redistest"
)

// chanOffNode finds a channel name of the form base.N whose slot is not
// served by avoid.
func chanOffNode(t *testing.T, c *redistest.Cluster, p, base string, avoid *redistest.Server) string {
	for i := 1; i < 100; i++ {
		ch := fmt.Sprintf("%s.%d", base, i)
		if c.Owner(t, c.Slot(t, p+"{"+ch+"}:m")) != avoid {
			return ch
		}
	}
	t.Fatal("no channel")
	return ""
}

func nextData(t *testing.T, s *broker.Subscription, within time.Duration) (string, []*broker.Gap, error) {
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	var gaps []*broker.Gap
	for {
		evs, err := s.Next(ctx, nil)
		if err != nil {
			return "", gaps, err
		}
		for _, e := range evs {
			if e.Gap != nil {
				gaps = append(gaps, e.Gap)
				continue
			}
			return string(e.Msg.Data), gaps, nil
		}
	}
}

// A channel on hold whose connection ends before its resync: followed by
// name and through a pattern on Redis Cluster, its shard's connection
// breaks and cannot resubscribe (ACL: -ssubscribe), the subscriber by
// name leaves (the shard has no channel left and ends), and the classic
// connection, which carries it now, never broke. The pattern subscriber
// must still get what is published next. (With the hold cleared only by
// a resync of the connection that carried the channel, nothing was
// delivered again: the heartbeat now asks for a resync of channels on
// hold for over 3 s.)
func TestHeldChannelWhoseConnectionEnded(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	p := newPrefix()
	o := brokertest.Options{HistorySize: 100}
	a := open(t, c.URL(), p, o)
	b := open(t, c.URL(), p, o)
	x := c.Owner(t, c.Slot(t, p+"{=}:counts"))
	ch := chanOffNode(t, c, p, "room", x)
	y := c.Owner(t, c.Slot(t, p+"{"+ch+"}:m"))
	pat := subscribe(t, b, broker.SubscribeOptions{Channels: []string{"room.*"}})
	exact, err := b.Subscribe(bg(t), broker.SubscribeOptions{Channels: []string{ch}})
	if err != nil {
		t.Fatal(err)
	}
	publish(t, a, ch, "1")
	for _, s := range []*broker.Subscription{pat, exact} {
		if d, _, err := nextData(t, s, 10*time.Second); err != nil || d != "1" {
			t.Fatalf("sub: %q %v", d, err)
		}
	}
	ry := redisClient(t, y)
	if err := ry.Do(bg(t), "ACL", "SETUSER", "default", "-ssubscribe").Err(); err != nil {
		t.Fatal(err)
	}
	if err := ry.Do(bg(t), "CLIENT", "KILL", "TYPE", "pubsub").Err(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "B notices its shard connection broke", func() error {
		if err := b.Health(); err == nil || !strings.Contains(err.Error(), "shard") {
			return fmt.Errorf("B health %v", err)
		}
		return nil
	})
	exact.Close()
	if err := ry.Do(bg(t), "ACL", "SETUSER", "default", "+@all").Err(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "B healthy again", b.Health)
	publish(t, a, ch, "2")
	d, gaps, err := nextData(t, pat, 5*time.Second)
	if err != nil || d != "2" {
		t.Errorf("pattern subscriber on B: got %q gaps %v err %v; want 2", d, gaps, err)
	}
}
