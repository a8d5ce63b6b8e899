package redislog_test

import (
	"errors"
	"slices"
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
