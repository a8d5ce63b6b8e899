package redislog_test

import (
	"errors"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/broker/brokertest"
	"github.com/pushctl/pushctl/internal/redistest"
)

// Redis comes back older than what was acknowledged and delivered: it
// restarts from an RDB snapshot taken before the last messages (as after
// a crash with snapshots only, or a failover to a replica that had not
// received them). The channel's positions after the snapshot are given
// again to new messages; a node whose subscribers were past them must
// not take those for messages already delivered: its live subscriber
// and one resuming from its last position get the new message, after a
// gap notice for what Redis lost.
func TestRedisWentBack(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	p := newPrefix()
	a := open(t, srv.URL(), p, brokertest.Options{})
	b := open(t, srv.URL(), p, brokertest.Options{})
	live := subscribe(t, b, broker.SubscribeOptions{Channels: []string{"back"}})
	for _, d := range []string{"1", "2", "3"} {
		publish(t, a, "back", d)
	}
	if err := redisClient(t, srv).Save(bg(t)).Err(); err != nil {
		t.Fatal(err)
	}
	var last broker.Position
	for _, d := range []string{"4", "5"} {
		m, _ := publish(t, a, "back", d)
		last = m.Position()
	}
	got, _ := events(t, live, 5)
	inOrder(t, "live subscriber on B", got, 1)

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
