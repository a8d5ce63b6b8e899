package redislog_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/broker/brokertest"
	"github.com/pushctl/pushctl/internal/broker/redislog"
	"github.com/pushctl/pushctl/internal/redistest"
)

func TestRedisClusterConformance(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	brokertest.Run(t, func(t *testing.T, o brokertest.Options) broker.Broker {
		return open(t, c.URL(), newPrefix(), o)
	})
}

// Three nodes on a three-shard Redis Cluster: channels spread over the
// shards, each node subscribes on the shard that holds a channel
// (SSUBSCRIBE), and everything published on A reaches subscribers on B
// (by name) and C (by pattern, over classic Pub/Sub), in order.
func TestRedisClusterThreeShards(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	p := newPrefix()
	a, b, cn := open(t, c.URL(), p, brokertest.Options{}), open(t, c.URL(), p, brokertest.Options{}), open(t, c.URL(), p, brokertest.Options{})
	const channels, each = 30, 40
	names := make([]string, channels)
	for i := range names {
		names[i] = fmt.Sprintf("spread.c%d", i)
	}
	waited := make(chan error, 1)
	go func() { waited <- a.WaitSubscribers(bg(t), names[7], 2) }()
	onB := subscribe(t, b, broker.SubscribeOptions{Channels: names})
	onC := subscribe(t, cn, broker.SubscribeOptions{Channels: []string{"spread.*"}})
	if err := <-waited; err != nil {
		t.Fatalf("wait on A for subscribers on B and C: %v", err)
	}

	// B is subscribed to each channel on the master of its slot, and
	// only there; nobody subscribed to them on classic Pub/Sub.
	masters := map[string]int{}
	for _, srv := range c.Servers {
		rdb := redisClient(t, srv)
		for _, name := range names {
			ps := p + "{" + name + "}"
			shardSubs, err := rdb.Do(bg(t), "PUBSUB", "SHARDNUMSUB", ps).Slice()
			if err != nil {
				t.Fatal(err)
			}
			slot, err := rdb.ClusterKeySlot(bg(t), ps).Result()
			if err != nil {
				t.Fatal(err)
			}
			owner := ownerOf(t, rdb, slot)
			want := int64(0)
			if owner == srv.Addr() {
				want = 1
				masters[owner]++
			}
			if got := shardSubs[1].(int64); got != want {
				t.Fatalf("%s on %s: %d sharded subscribers, want %d (slot %d is on %s)", name, srv.Addr(), got, want, slot, owner)
			}
		}
		classic, err := rdb.PubSubNumSub(bg(t), p+"{"+names[0]+"}").Result()
		if err != nil || classic[p+"{"+names[0]+"}"] != 0 {
			t.Fatalf("classic subscribers of %s on %s: %v %v", names[0], srv.Addr(), classic, err)
		}
	}
	if len(masters) != 3 {
		t.Fatalf("the channels landed on %d shards (%v), want all 3", len(masters), masters)
	}

	for i := 0; i < each; i++ {
		for _, name := range names {
			_, n := publish(t, a, name, fmt.Sprint(i))
			if n != 2 {
				t.Fatalf("publish to %s reached %d subscribers, want 2", name, n)
			}
		}
	}
	var fromB []*broker.Message
	for who, s := range map[string]*broker.Subscription{"B": onB, "C": onC} {
		msgs, gaps := events(t, s, channels*each)
		if who == "B" {
			fromB = msgs
		}
		if len(gaps) > 0 {
			t.Fatalf("%s: gaps %v", who, gaps)
		}
		per := map[string][]*broker.Message{}
		for _, m := range msgs {
			per[m.Channel] = append(per[m.Channel], m)
		}
		for _, name := range names {
			inOrder(t, who+" "+name, per[name], 0)
			if len(per[name]) != each {
				t.Fatalf("%s got %d messages on %s, want %d", who, len(per[name]), name, each)
			}
		}
	}

	// Every shard's data lives on its own master; each node lists all.
	for _, srv := range c.Servers {
		keys, err := redisClient(t, srv).Keys(bg(t), p+"{*}:s").Result()
		if err != nil || len(keys) == 0 {
			t.Fatalf("streams on %s: %v %v", srv.Addr(), keys, err)
		}
	}
	list, err := cn.Channels(bg(t))
	if err != nil {
		t.Fatal(err)
	}
	var listed []string
	for _, ci := range list {
		if strings.HasPrefix(ci.Name, "spread.") {
			listed = append(listed, ci.Name)
			if ci.LastSeq != each || ci.Subscribers != 2 {
				t.Fatalf("listed on C: %+v, want %d messages and 2 subscribers", ci, each)
			}
		}
	}
	sort.Strings(listed)
	want := append([]string(nil), names...)
	sort.Strings(want)
	if fmt.Sprint(listed) != fmt.Sprint(want) {
		t.Fatalf("channels listed on C: %v, want %v", listed, want)
	}

	// A position B was given resumes on C.
	var pos broker.Position
	for _, m := range fromB {
		if m.Channel == names[3] && m.Seq == each/2 {
			pos = m.Position()
		}
	}
	again := subscribe(t, cn, broker.SubscribeOptions{Channels: []string{names[3]}, From: broker.Cursor{names[3]: pos}})
	rest, gaps := events(t, again, each/2)
	if len(gaps) > 0 {
		t.Fatalf("resume on C from %v: gaps %v", pos, gaps)
	}
	inOrder(t, "resumed on C", rest, each/2)
	// DELETE on A ends B's subscription, which named the channel.
	if err := a.DeleteChannel(bg(t), names[5]); err != nil {
		t.Fatal(err)
	}
	select {
	case <-onB.Done():
	case <-bg(t).Done():
		t.Fatal("delete on A did not end the subscription on B")
	}
}

// ownerOf is the address of the master serving slot.
func ownerOf(t *testing.T, rdb *redis.Client, slot int64) string {
	t.Helper()
	shards, err := rdb.ClusterSlots(bg(t)).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range shards {
		if int64(s.Start) <= slot && slot <= int64(s.End) {
			return s.Nodes[0].Addr
		}
	}
	t.Fatalf("no master serves slot %d", slot)
	return ""
}

// A shard restarted without persistence lost its channels: their
// subscribers are told of the gap; channels on the other shards go on
// without one.
func TestRedisClusterShardRestart(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	p := newPrefix()
	a, b := open(t, c.URL(), p, brokertest.Options{}), open(t, c.URL(), p, brokertest.Options{})
	victim := c.Servers[1]
	rdb := redisClient(t, victim)
	var names []string
	lost := map[string]bool{}
	for i := 0; i < 12; i++ {
		name := fmt.Sprintf("r%d", i)
		names = append(names, name)
		slot, err := rdb.ClusterKeySlot(bg(t), p+"{"+name+"}").Result()
		if err != nil {
			t.Fatal(err)
		}
		lost[name] = ownerOf(t, rdb, slot) == victim.Addr()
	}
	if n := len(lostNames(lost)); n == 0 || n == len(names) {
		t.Fatalf("%d of %d channels on the shard to restart; the test needs some on it and some elsewhere", n, len(names))
	}
	s := subscribe(t, b, broker.SubscribeOptions{Channels: names})
	last := map[string]*broker.Message{}
	for _, name := range names {
		last[name], _ = publish(t, a, name, "before")
	}
	events(t, s, len(names))

	victim.Kill()
	eventually(t, "node B reports the shard down", func() error {
		if b.Health() == nil {
			return fmt.Errorf("healthy")
		}
		return nil
	})
	victim.Restart()
	if err := victim.WaitLog("Cluster state changed: ok", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	// Healthy means resubscribed and resynchronized: what is published
	// from now on comes over the new connection.
	eventually(t, "node B healthy again", func() error { return b.Health() })
	for _, name := range names {
		eventually(t, "publish to "+name+" after the restart", func() error {
			_, _, err := a.Publish(bg(t), &broker.Message{Channel: name, Data: []byte("after")})
			return err
		})
	}
	msgs, gaps := events(t, s, len(names))
	gapped := map[string]bool{}
	for _, g := range gaps {
		if !lost[g.Channel] || g.From != last[g.Channel].Position() || g.To.Epoch == last[g.Channel].Epoch {
			t.Fatalf("unexpected gap %+v (channel on the restarted shard: %v)", g, lost[g.Channel])
		}
		gapped[g.Channel] = true
	}
	for _, name := range names {
		if lost[name] != gapped[name] {
			t.Fatalf("%s: gap %v, lost with the shard %v", name, gapped[name], lost[name])
		}
	}
	for _, m := range msgs {
		if string(m.Data) != "after" {
			t.Fatalf("after the restart %s got %q", m.Channel, m.Data)
		}
	}
}

func lostNames(lost map[string]bool) (out []string) {
	for name, l := range lost {
		if l {
			out = append(out, name)
		}
	}
	return out
}

// On Redis Cluster a node that follows a channel only through a pattern
// hears of its deletion too (the notice went out on sharded Pub/Sub
// only, which pattern followers do not read): the channel made anew
// after it starts cleanly, without a gap notice for the old incarnation,
// as on a single Redis and on a node following it by name.
func TestRedisClusterPatternNodeHearsDelete(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	p := newPrefix()
	a, b := open(t, c.URL(), p, brokertest.Options{}), open(t, c.URL(), p, brokertest.Options{})
	s := subscribe(t, b, broker.SubscribeOptions{Channels: []string{"gone.*"}})
	for round := 0; round < 3; round++ {
		for _, data := range []string{"old", "new"} {
			if _, _, err := a.Publish(bg(t), &broker.Message{Channel: "gone.x", Data: []byte(data)}); err != nil {
				t.Fatal(err)
			}
			msgs, gaps := events(t, s, 1)
			if string(msgs[0].Data) != data || msgs[0].Seq != 1 || len(gaps) != 0 {
				t.Fatalf("round %d: %q seq %d after gaps %v; want %q seq 1 and no gap", round, msgs[0].Data, msgs[0].Seq, gaps, data)
			}
			if err := a.DeleteChannel(bg(t), "gone.x"); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// A channel's slot moved between shards in the middle of publishing (as
// redis-cli --cluster reshard moves a slot's keys, in batches): a publish
// while the channel's keys are split between the two shards is refused by
// Redis before it writes anything and sent again until the slot has
// moved, the node meanwhile not degraded (a slot moving is not an
// outage, and other channels go on); every key moves without
// clashing with one made meanwhile, and its history and byte count are
// exact. (With the sizes list's key not among the script's keys, the
// list moved first made the script fail after its XADD, and every later
// publish failed on the stream's top id; the list left behind was made
// anew on the importing shard and its move then failed with BUSYKEY.)
func TestRedisClusterSlotMovingMidPublish(t *testing.T) {
	for _, tc := range []struct {
		name         string
		first, later []string // key kinds moved before and after the publish
	}{
		{"sizes list first", []string{"z"}, []string{"m", "s"}},
		{"sizes list last", []string{"m", "s"}, []string{"z"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := redistest.StartCluster(t, 3)
			ctx := bg(t)
			p := newPrefix()
			hub := broker.NewHub()
			l, err := redislog.Open(ctx, redislog.Options{URL: c.URL(), Prefix: p, Retention: broker.Retention{HistorySize: 100, HistoryBytes: 1 << 20}}, hub)
			if err != nil {
				t.Fatal(err)
			}
			b := broker.New(hub, l, broker.CoreOptions{})
			t.Cleanup(func() { b.Close() })
			publish(t, b, "mig", "one")
			want := []string{"one"}
			key := func(kind string) string { return p + "{mig}:" + kind }
			slot := c.Slot(t, key("m"))
			owner := c.Owner(t, slot)
			dst := c.Servers[(slices.Index(c.Servers, owner)+1)%len(c.Servers)]
			src := c.StartMove(t, slot, dst)
			move := func(kinds []string) {
				t.Helper()
				var keys []string
				for _, k := range kinds {
					keys = append(keys, key(k))
				}
				c.Migrate(t, src, dst, keys...)
			}
			move(tc.first)
			// A publish while the keys are split: Redis refuses it
			// (TRYAGAIN) before it runs; the node sends it again until
			// the keys are together, and meanwhile is not degraded
			// (other channels' slots are not moving).
			tryagain := func() int { return tryAgains(t, src) }
			done := make(chan error, 1)
			go func() {
				_, _, err := b.Publish(ctx, &broker.Message{Channel: "mig", Data: []byte("two")})
				done <- err
			}()
			// (go-redis sends a refused command again a few times
			// itself before it returns the error.)
			deadline := time.Now().Add(20 * time.Second)
			for tryagain() < 10 {
				if err := l.Health(); err != nil {
					t.Fatalf("health while a slot moves: %v", err)
				}
				if time.Now().After(deadline) {
					t.Fatal("the publish was not refused with TRYAGAIN ten times while the keys were split")
				}
				select {
				case err := <-done:
					t.Fatalf("publish while the keys are split: %v, before they moved", err)
				case <-time.After(5 * time.Millisecond): // polling Redis's error counts
				}
			}
			move(tc.later)
			c.FinishMove(t, slot, src, dst)
			if err := <-done; err != nil {
				t.Fatalf("publish sent again once the slot moved: %v", err)
			}
			want = append(want, "two")
			publish(t, b, "mig", "three")
			publish(t, b, "mig", "four")
			want = append(want, "three", "four")
			s := subscribe(t, b, broker.SubscribeOptions{Channels: []string{"mig"}, Last: -1})
			msgs, gaps := events(t, s, len(want))
			bytes := 0
			for i, m := range msgs {
				if string(m.Data) != want[i] || m.Seq != uint64(i+1) {
					t.Fatalf("history %d: %q seq %d, want %q seq %d (gaps %v)", i, m.Data, m.Seq, want[i], i+1, gaps)
				}
				bytes += len(m.Data)
			}
			inf, err := b.Channel(ctx, "mig")
			if err != nil || inf.Messages != len(want) || inf.Bytes != int64(bytes) {
				t.Fatalf("channel %+v %v, want %d messages, %d bytes", inf, err, len(want), bytes)
			}
		})
	}
}

// tryAgains is how many commands srv has refused with TRYAGAIN.
func tryAgains(t *testing.T, srv *redistest.Server) int {
	t.Helper()
	info, err := redisClient(t, srv).Info(bg(t), "errorstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "errorstat_TRYAGAIN:count="); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	return 0
}

// While one channel's slot moves between shards (its keys split: Redis
// refuses its publishes with TRYAGAIN until they are together again; a
// channel with a long history takes a while), the node's other channels
// publish as usual, and the node is neither stalled nor degraded however
// long the move takes; the waiting publish goes through once the keys
// are together, in order, stored once. (Before, the waiting publish held
// up every later one on the node, and after StallAfter the node refused
// every publish: "a redis cluster slot has been moving".)
func TestRedisClusterSlotMovingOtherChannelsGoOn(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	ctx := bg(t)
	p := newPrefix()
	const stallAfter = 200 * time.Millisecond
	hub := broker.NewHub()
	l, err := redislog.Open(ctx, redislog.Options{URL: c.URL(), Prefix: p, StallAfter: stallAfter,
		Retention: broker.Retention{HistorySize: 100, HistoryBytes: 1 << 20}}, hub)
	if err != nil {
		t.Fatal(err)
	}
	b := broker.New(hub, l, broker.CoreOptions{})
	t.Cleanup(func() { b.Close() })
	key := func(ch, kind string) string { return p + "{" + ch + "}:" + kind }
	slot := c.Slot(t, key("mig", "m"))
	other := ""
	for i := 0; other == ""; i++ {
		if ch := fmt.Sprintf("other%d", i); c.Slot(t, key(ch, "m")) != slot {
			other = ch
		}
	}
	publish(t, b, "mig", "one")
	publish(t, b, other, "o0")
	owner := c.Owner(t, slot)
	dst := c.Servers[(slices.Index(c.Servers, owner)+1)%len(c.Servers)]
	src := c.StartMove(t, slot, dst)
	c.Migrate(t, src, dst, key("mig", "z"))
	done := make(chan error, 1)
	go func() {
		_, _, err := b.Publish(ctx, &broker.Message{Channel: "mig", Data: []byte("two")})
		done <- err
	}()
	eventually(t, "the publish to mig refused with TRYAGAIN", func() error {
		if n := tryAgains(t, src); n < 3 {
			return fmt.Errorf("%d TRYAGAIN", n)
		}
		return nil
	})
	// Longer than StallAfter, the other channel publishes as usual: one
	// publish each time mig's is refused again.
	want := []string{"o0"}
	for start := time.Now(); time.Since(start) < 4*stallAfter; {
		n := tryAgains(t, src)
		eventually(t, "mig's publish sent again", func() error {
			if tryAgains(t, src) == n {
				return errors.New("not yet")
			}
			return nil
		})
		d := fmt.Sprintf("o%d", len(want))
		if _, _, err := b.Publish(ctx, &broker.Message{Channel: other, Data: []byte(d)}); err != nil {
			t.Fatalf("publish to %s while mig's slot moves: %v", other, err)
		}
		want = append(want, d)
		if err := l.Health(); err != nil {
			t.Fatalf("health while mig's slot moves: %v", err)
		}
		select {
		case err := <-done:
			t.Fatalf("the publish to mig returned (%v) while its keys were split", err)
		default:
		}
	}
	c.Migrate(t, src, dst, key("mig", "m"), key("mig", "s"))
	c.FinishMove(t, slot, src, dst)
	if err := <-done; err != nil {
		t.Fatalf("publish to mig once its slot moved: %v", err)
	}
	publish(t, b, "mig", "three")
	for ch, want := range map[string][]string{"mig": {"one", "two", "three"}, other: want} {
		s := subscribe(t, b, broker.SubscribeOptions{Channels: []string{ch}, Last: -1})
		msgs, gaps := events(t, s, len(want))
		for i, m := range msgs {
			if string(m.Data) != want[i] || m.Seq != uint64(i+1) {
				t.Fatalf("%s's history %d: %q seq %d, want %q seq %d (gaps %v)", ch, i, m.Data, m.Seq, want[i], i+1, gaps)
			}
		}
		if inf, err := b.Channel(ctx, ch); err != nil || inf.Messages != len(want) {
			t.Fatalf("%s: %+v %v, want %d messages", ch, inf, err, len(want))
		}
	}
}

// pushctl's own slot ({=}: the nodes, the counts, the pattern routes) left
// half moved (an operator's reshard stopped between two MIGRATEs): every
// heartbeat and pattern subscription is refused with TRYAGAIN for good.
// That is not a slot passing between shards: /healthz must say the node
// is degraded (1de0960 ignored TRYAGAIN altogether, and the node stayed
// healthy while it could not heartbeat).
func TestRedisClusterControlSlotLeftHalfMoved(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	ctx := bg(t)
	p := newPrefix()
	hub := broker.NewHub()
	l, err := redislog.Open(ctx, redislog.Options{URL: c.URL(), Prefix: p, Heartbeat: 100 * time.Millisecond}, hub)
	if err != nil {
		t.Fatal(err)
	}
	b := broker.New(hub, l, broker.CoreOptions{})
	t.Cleanup(func() { b.Close() })
	publish(t, b, "x", "one")
	slot := c.Slot(t, p+"{=}:nodes")
	owner := c.Owner(t, slot)
	dst := c.Servers[(slices.Index(c.Servers, owner)+1)%len(c.Servers)]
	// One key moved, the others not: the slot stays like this.
	c.Migrate(t, c.StartMove(t, slot, dst), dst, p+"{=}:nodes")
	// Subscribing to a pattern writes the {=} keys: refused while the
	// slot stays like this; so is every heartbeat. A passing split is
	// not an outage, but one that lasts is: the node says so.
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := b.Subscribe(sctx, broker.SubscribeOptions{Channels: []string{"pat.*"}}); err == nil {
		t.Fatal("pattern subscribe succeeded while pushctl's own slot is half moved")
	}
	eventually(t, "the node reports the slot left half moved", func() error {
		if l.Health() == nil {
			return errors.New("healthy")
		}
		return nil
	})
	t.Logf("health: %v", l.Health())
}
