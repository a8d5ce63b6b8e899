package redislog_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/broker/brokertest"
	"github.com/pushctl/pushctl/internal/redistest"
)

// snapshotBehind is where the tests of Redis going back start: nodes A
// and B on one Redis (each with o), a subscriber on B to "back", messages
// 1-3 published and saved in an RDB snapshot, then 4 and 5 delivered
// after it. It returns the position of 5 and the messages B got.
func snapshotBehind(t *testing.T, o brokertest.Options) (srv *redistest.Server, a, b *broker.Core, live *broker.Subscription, last broker.Position, got []*broker.Message) {
	t.Helper()
	srv = redistest.Start(t, redistest.Options{})
	p := newPrefix()
	a = open(t, srv.URL(), p, o)
	b = open(t, srv.URL(), p, o)
	live = subscribe(t, b, broker.SubscribeOptions{Channels: []string{"back"}})
	for _, d := range []string{"1", "2", "3"} {
		publish(t, a, "back", d)
	}
	if err := redisClient(t, srv).Save(bg(t)).Err(); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"4", "5"} {
		m, _ := publish(t, a, "back", d)
		last = m.Position()
	}
	got, _ = events(t, live, 5)
	inOrder(t, "live subscriber on B", got, 1)
	return srv, a, b, live, last, got
}

// Redis comes back older than what was acknowledged and delivered: it
// restarts from an RDB snapshot taken before the last messages (as after
// a crash with snapshots only, or a failover to a replica that had not
// received them). The channel's positions after the snapshot are given
// again to new messages; a node whose subscribers were past them must
// not take those for messages already delivered: its live subscriber
// and one resuming from its last position get the new message, after a
// gap notice for what Redis lost.
func TestRedisWentBack(t *testing.T) {
	srv, a, b, live, last, _ := snapshotBehind(t, brokertest.Options{})
	srv.Restart() // back from the snapshot: messages 4 and 5 are gone
	var m *broker.Message
	deadline := time.Now().Add(20 * time.Second)
	for {
		var err error
		m, _, err = a.Publish(bg(t), &broker.Message{Channel: "back", Data: []byte("new")})
		if err == nil {
			break
		}
		if !errors.Is(err, broker.ErrUnavailable) || time.Now().After(deadline) {
			t.Fatalf("publish after the restart: %v", err)
		}
		select {
		case <-time.After(50 * time.Millisecond): // the node reconnecting
		}
	}
	t.Logf("published after the restart at %s; delivered up to %s before", m.Position(), last)
	// The live subscriber: a gap notice, then the new message (not taken
	// for one it had).
	msgs, gaps := events(t, live, 1)
	if string(msgs[0].Data) != "new" || len(gaps) == 0 {
		t.Fatalf("live subscriber on B: %q at %s after gaps %v; want \"new\" after a gap notice", msgs[0].Data, msgs[0].Position(), gaps)
	}
	t.Logf("live subscriber on B: gap %s to %s, then %q at %s", gaps[0].From, gaps[0].To, msgs[0].Data, msgs[0].Position())
	if msgs[0].Epoch == last.Epoch {
		t.Errorf("the channel went on in epoch %s: a cursor of it passes over positions given twice", last.Epoch)
	}
	// One resuming from where it was: a gap notice, and the new message
	// among what it is given (what Redis kept may come again after the
	// gap), not the lost ones.
	resumed := subscribe(t, b, broker.SubscribeOptions{Channels: []string{"back"}, From: broker.Cursor{"back": last}})
	msgs, gaps = events(t, resumed, 1)
	for msgs[len(msgs)-1].Seq < m.Seq && len(msgs) < 10 {
		more, g := events(t, resumed, 1)
		msgs, gaps = append(msgs, more...), append(gaps, g...)
	}
	var data []string
	for _, m := range msgs {
		data = append(data, string(m.Data))
	}
	if len(gaps) == 0 || data[len(data)-1] != "new" || slices.Contains(data, "4") || slices.Contains(data, "5") {
		t.Errorf("subscriber resuming from %s: %v after gaps %v; want \"new\" last, after a gap notice", last, data, gaps)
	}
}

// The same on Redis Cluster through a failover that loses acknowledged
// writes (replication is asynchronous): the replica stops receiving
// (SIGSTOP, and the master drops its link) after message 3, the master acknowledges 4 and 5 and dies
// (SIGKILL), and the replica takes its slots over (CLUSTER FAILOVER
// TAKEOVER) with 1-3 only. A subscriber on another node that had 5 gets
// a gap notice, then what is published after, in a new epoch.
func TestRedisClusterFailoverLosesWrites(t *testing.T) {
	c := redistest.StartClusterWithReplicas(t, 3)
	p := newPrefix()
	a := open(t, c.URL(), p, brokertest.Options{})
	b := open(t, c.URL(), p, brokertest.Options{})
	// A channel whose master is not the one the nodes were given.
	ch, shard := "", -1
	for i := 0; shard <= 0; i++ {
		ch = "fo" + strconv.Itoa(i)
		owner := c.Owner(t, c.Slot(t, p+"{"+ch+"}:m"))
		shard = slices.Index(c.Servers, owner)
	}
	master, replica := c.Servers[shard], c.Replicas[shard]
	live := subscribe(t, b, broker.SubscribeOptions{Channels: []string{ch}})
	for _, d := range []string{"1", "2", "3"} {
		publish(t, a, ch, d)
	}
	// 1-3 reached the replica: WAIT answers once it acknowledged them.
	if n, err := redisClient(t, master).Wait(bg(t), 1, 10*time.Second).Result(); err != nil || n != 1 {
		t.Fatalf("WAIT: %d %v", n, err)
	}
	// The replica stops, and so does its link: what the master takes
	// now it cannot send (not even into the replica's socket buffer).
	replica.Pause()
	if err := redisClient(t, master).ClientKillByFilter(bg(t), "TYPE", "replica").Err(); err != nil {
		t.Fatal(err)
	}
	var last broker.Position
	for _, d := range []string{"4", "5"} {
		m, _ := publish(t, a, ch, d)
		last = m.Position()
	}
	got, _ := events(t, live, 5)
	inOrder(t, "live subscriber on B", got, 1)
	master.Kill()
	replica.Resume()
	c.Failover(t, shard)

	var m *broker.Message
	eventually(t, "publish after the failover", func() error {
		var err error
		m, _, err = a.Publish(bg(t), &broker.Message{Channel: ch, Data: []byte("new")})
		return err
	})
	t.Logf("published after the failover at %s; delivered up to %s before", m.Position(), last)
	msgs, gaps := events(t, live, 1)
	if string(msgs[0].Data) != "new" || len(gaps) == 0 || msgs[0].Epoch == last.Epoch {
		t.Fatalf("live subscriber on B: %q at %s after %d gap notices; want \"new\" in a new epoch after a gap notice", msgs[0].Data, msgs[0].Position(), len(gaps))
	}
	t.Logf("live subscriber on B: gap %s to %s, then %q at %s", gaps[0].From, gaps[0].To, msgs[0].Data, msgs[0].Position())
}

// Redis restarted with everything it acknowledged (AOF, appendfsync
// always): no channel is taken for one that went back, including one
// whose newest messages are not in its history (published by a node
// that keeps none, after older ones a node with history kept): its
// subscriber on B gets the next message with no gap notice.
func TestRedisRestartNoFalseGap(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{AOF: true})
	p := newPrefix()
	keeps := open(t, srv.URL(), p, brokertest.Options{})
	none := open(t, srv.URL(), p, brokertest.Options{HistorySize: -1})
	b := open(t, srv.URL(), p, brokertest.Options{})
	kept := subscribe(t, b, broker.SubscribeOptions{Channels: []string{"kept"}})
	unkept := subscribe(t, b, broker.SubscribeOptions{Channels: []string{"unkept"}})
	for _, d := range []string{"1", "2"} {
		publish(t, keeps, "kept", d)
		publish(t, keeps, "unkept", d)
	}
	publish(t, none, "unkept", "3") // not in the history
	got, _ := events(t, kept, 2)
	inOrder(t, "subscriber to kept", got, 1)
	got, _ = events(t, unkept, 3)
	inOrder(t, "subscriber to unkept", got, 1)

	srv.Restart()
	for name, s := range map[string]*broker.Subscription{"kept": kept, "unkept": unkept} {
		eventually(t, "publish to "+name+" after the restart", func() error {
			_, _, err := keeps.Publish(bg(t), &broker.Message{Channel: name, Data: []byte("after")})
			return err
		})
		msgs, gaps := events(t, s, 1)
		if string(msgs[0].Data) != "after" || len(gaps) > 0 {
			t.Errorf("subscriber to %s: %q at %s after gaps %v; want \"after\", no gap", name, msgs[0].Data, msgs[0].Position(), gaps)
		}
	}
}

// The restart from an older snapshot with eight publishers going on
// through it (each publish sent again until Redis is back): B's
// subscriber gets every message acknowledged after the restart, each
// once, after one gap notice for what Redis lost. (Messages of the old
// epoch heard after the node moved the channel on were taken for an
// epoch change back and forth, each time refilling the whole history:
// up to 2,130 delivered twice.)
func TestRedisWentBackUnderLoad(t *testing.T) {
	srv, a, _, live, _, _ := snapshotBehind(t, brokertest.Options{HistorySize: 1 << 20, QueueSize: 1 << 20})
	wentBackUnderLoad(t, a, live, "back", srv.Restart)
}

// wentBackUnderLoad runs eight publishers on a's channel ch through
// restart, Redis coming back older than what live had.
func wentBackUnderLoad(t *testing.T, a *broker.Core, live *broker.Subscription, ch string, restart func()) {
	var restarted atomic.Bool
	var mu sync.Mutex
	acked := map[string]bool{} // published after the restart, acknowledged
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var n atomic.Int64
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				after := restarted.Load()
				d := fmt.Sprintf("n%d", n.Add(1))
				_, _, err := a.Publish(bg(t), &broker.Message{Channel: ch, Data: []byte(d)})
				if err == nil && after {
					mu.Lock()
					acked[d] = true
					mu.Unlock()
				}
				if err != nil {
					<-time.After(time.Millisecond) // Redis restarting: publish again
				}
			}
		}()
	}
	restart()
	restarted.Store(true)
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		k := len(acked)
		mu.Unlock()
		if k >= 3000 {
			break
		}
		if time.Now().After(deadline) {
			close(stop)
			wg.Wait()
			t.Fatalf("%d publishes acknowledged in 30 s after the restart", k)
		}
		<-time.After(10 * time.Millisecond) // polling the count
	}
	close(stop)
	wg.Wait()
	mu.Lock()
	want := len(acked)
	mu.Unlock()
	seen := map[string]int{}
	var gaps []*broker.Gap
	var epochs []string
	missing := want
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for missing > 0 {
		evs, err := live.Next(ctx, nil)
		if err != nil {
			break
		}
		for _, e := range evs {
			if e.Gap != nil {
				gaps = append(gaps, e.Gap)
				continue
			}
			d := string(e.Msg.Data)
			seen[d]++
			if len(epochs) == 0 || epochs[len(epochs)-1] != e.Msg.Epoch {
				epochs = append(epochs, e.Msg.Epoch)
			}
			if acked[d] && seen[d] == 1 {
				missing--
			}
		}
	}
	var dups []string
	for d, c := range seen {
		if c > 1 {
			dups = append(dups, d)
		}
	}
	var lost []string
	for d := range acked {
		if seen[d] == 0 {
			lost = append(lost, d)
		}
	}
	sort.Strings(lost)
	var gs []string
	for _, g := range gaps {
		gs = append(gs, g.From.String()+"->"+g.To.String())
	}
	t.Logf("acked after restart %d; epochs seen %v; gaps %v; delivered twice %d; lost %d", want, epochs, gs, len(dups), len(lost))
	if len(lost) > 0 || len(dups) > 0 || len(gaps) == 0 {
		t.Fatalf("lost %v (of %d acknowledged after the restart), delivered twice %v, gaps %v", head(lost), want, head(dups), gs)
	}
}

func head(s []string) []string {
	if len(s) > 10 {
		return s[:10]
	}
	return s
}

// The node's first resync after the restart fails (the new epoch's write
// refused: Redis over maxmemory), and a batch reusing the lost positions
// is heard before the next one: its messages at positions delivered are
// later ones (their time), so Redis went back all the same. (They were
// dropped as delivered, the rest delivered in the old epoch, and the
// next resync found nothing wrong: n4 and n5 lost without a notice.)
func TestRedisWentBackResyncFailed(t *testing.T) {
	srv, a, _, live, _, _ := snapshotBehind(t, brokertest.Options{})
	rc := redisClient(t, srv)

	srv.Restart() // back from the snapshot: 4 and 5 are gone
	if err := rc.ConfigSet(bg(t), "maxmemory", "1").Err(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "B's resync refused", func() error {
		s, err := rc.Info(bg(t), "errorstats").Result()
		if err != nil {
			return err
		}
		if !strings.Contains(s, "errorstat_OOM") {
			return errors.New("no OOM yet")
		}
		return nil
	})
	if err := rc.ConfigSet(bg(t), "maxmemory", "0").Err(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "A publishes", func() error {
		_, _, err := a.Publish(bg(t), &broker.Message{Channel: "probe", Data: []byte("x")})
		return err
	})
	publishBatch(t, a, "back", []string{"n4", "n5", "n6", "n7"})
	var data []string
	var gaps []*broker.Gap
	for len(data) == 0 || data[len(data)-1] != "n7" {
		msgs, g := events(t, live, 1)
		gaps = append(gaps, g...)
		for _, m := range msgs {
			data = append(data, string(m.Data))
		}
	}
	var gs []string
	for _, g := range gaps {
		gs = append(gs, g.From.String()+"->"+g.To.String())
	}
	if len(gaps) == 0 || !slices.Contains(data, "n4") || !slices.Contains(data, "n5") {
		t.Fatalf("live subscriber on B got %v after gaps %v; want a gap notice, then n4 to n7", data, gs)
	}
}

// Two nodes with subscribers past what Redis kept: whichever moves the
// channel on first, the other sees the new epoch as a move (rebaseScript
// notes the epoch it retired) and gives its subscriber a gap notice to
// the last message both have, not the whole history again.
func TestRedisWentBackTwoNodes(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	p := newPrefix()
	a := open(t, srv.URL(), p, brokertest.Options{})
	b := open(t, srv.URL(), p, brokertest.Options{})
	c := open(t, srv.URL(), p, brokertest.Options{})
	subs := map[string]*broker.Subscription{
		"B": subscribe(t, b, broker.SubscribeOptions{Channels: []string{"back"}}),
		"C": subscribe(t, c, broker.SubscribeOptions{Channels: []string{"back"}}),
	}
	for _, d := range []string{"1", "2", "3"} {
		publish(t, a, "back", d)
	}
	if err := redisClient(t, srv).Save(bg(t)).Err(); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"4", "5"} {
		publish(t, a, "back", d)
	}
	for who, s := range subs {
		got, _ := events(t, s, 5)
		inOrder(t, who, got, 1)
	}
	srv.Restart()
	eventually(t, "B and C resynced", func() error {
		if b.Health() != nil || c.Health() != nil {
			return errors.New("not yet")
		}
		return nil
	})
	eventually(t, "publish", func() error {
		_, _, err := a.Publish(bg(t), &broker.Message{Channel: "back", Data: []byte("new")})
		return err
	})
	for who, s := range subs {
		var data []string
		var gs []string
		for len(data) == 0 || data[len(data)-1] != "new" {
			msgs, g := events(t, s, 1)
			for _, x := range g {
				gs = append(gs, x.From.String()+"->"+x.To.String())
			}
			for _, m := range msgs {
				data = append(data, string(m.Data))
			}
		}
		t.Logf("%s: %v after gaps %v", who, data, gs)
		if slices.Contains(data, "1") {
			t.Errorf("%s's subscriber got %v again after gaps %v", who, data, gs)
		}
	}
}

// No new epoch when nothing was lost: Pub/Sub connections killed three
// times while a history of 3 is trimmed past the node's position, with
// batches larger than the history (messages that leave at once are not
// stored).
func TestRedisNoNewEpochWhenTrimmed(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	p := newPrefix()
	o := brokertest.Options{HistorySize: 3}
	a := open(t, srv.URL(), p, o)
	b := open(t, srv.URL(), p, o)
	live := subscribe(t, b, broker.SubscribeOptions{Channels: []string{"ok"}})
	publishBatch(t, a, "ok", []string{"1", "2", "3", "4", "5", "6", "7"})
	got, _ := events(t, live, 7)
	epoch := got[0].Epoch
	rc := redisClient(t, srv)
	for round := 0; round < 3; round++ {
		if err := rc.Do(bg(t), "CLIENT", "KILL", "TYPE", "pubsub").Err(); err != nil {
			t.Fatal(err)
		}
		var batch []string
		for i := 0; i < 5+round; i++ {
			batch = append(batch, fmt.Sprintf("r%d-%d", round, i))
		}
		eventually(t, "A healthy", a.Health)
		publishBatch(t, a, "ok", batch)
		last := batch[len(batch)-1]
		for {
			msgs, gaps := events(t, live, 1)
			for _, g := range gaps {
				if g.To.Epoch != epoch {
					t.Fatalf("round %d: gap %s -> %s: a new epoch though nothing was lost", round, g.From, g.To)
				}
			}
			if string(msgs[len(msgs)-1].Data) == last {
				if msgs[len(msgs)-1].Epoch != epoch {
					t.Fatalf("round %d: epoch changed", round)
				}
				break
			}
		}
	}
}

// Many positions given again before the node compares: the snapshot is
// 300 messages behind what B delivered, and A publishes 300 new ones
// before B gets back in (its ACL user, gone with the restart, is made
// again only then). B's subscriber gets one gap notice to the last
// message both have (3), then the 300 new ones in order, and not 1-3
// again. (The last shared message was looked for among the 256 before
// the position only: B gave 1-3 again after a gap to the new epoch's 0.)
func TestRedisWentBackManyPositionsReused(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	p := newPrefix()
	a := open(t, srv.URL(), p, brokertest.Options{})
	userB := func() {
		if err := redisClient(t, srv).Do(bg(t), "ACL", "SETUSER", "nodeb", "on", ">pw", "~*", "&*", "+@all").Err(); err != nil {
			t.Fatal(err)
		}
	}
	userB()
	b := open(t, fmt.Sprintf("redis://nodeb:pw@127.0.0.1:%d/0", srv.Port), p, brokertest.Options{})
	live := subscribe(t, b, broker.SubscribeOptions{Channels: []string{"back"}})
	for _, d := range []string{"1", "2", "3"} {
		publish(t, a, "back", d)
	}
	if err := redisClient(t, srv).Save(bg(t)).Err(); err != nil {
		t.Fatal(err)
	}
	var lost, again []string
	for i := 0; i < 300; i++ {
		lost = append(lost, fmt.Sprintf("lost%d", i))
		again = append(again, fmt.Sprintf("new%d", i))
	}
	publishBatch(t, a, "back", lost)
	got, _ := events(t, live, 303)
	inOrder(t, "B", got[:3], 1)
	srv.Restart()
	eventually(t, "A healthy", a.Health)
	publishBatch(t, a, "back", again)
	userB()
	var data []string
	var gaps []*broker.Gap
	for len(data) < len(again) {
		msgs, g := events(t, live, 1)
		gaps = append(gaps, g...)
		for _, m := range msgs {
			data = append(data, string(m.Data))
		}
	}
	if len(gaps) != 1 || gaps[0].To.Seq != 3 || gaps[0].To.Epoch == got[0].Epoch || !slices.Equal(data, again) {
		t.Fatalf("B's subscriber: %d messages, first %v, after gaps %v; want one gap to the new epoch's 3, then new0…new299", len(data), data[:min(5, len(data))], gaps)
	}
}
