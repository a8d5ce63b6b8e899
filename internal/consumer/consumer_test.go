package consumer_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/broker/boltlog"
	"github.com/pushctl/pushctl/internal/consumer"
	"github.com/pushctl/pushctl/internal/wire"
)

func publish(t *testing.T, b broker.Broker, ch string, n int) {
	t.Helper()
	for i := 1; i <= n; i++ {
		if _, _, err := b.Publish(context.Background(), &broker.Message{Channel: ch, Data: []byte(fmt.Sprint(i))}); err != nil {
			t.Fatal(err)
		}
	}
}

// fetchN fetches until n deliveries arrived (each wait bounded).
func fetchN(t *testing.T, c *consumer.Consumer, n, max int) []consumer.Delivery {
	t.Helper()
	var out []consumer.Delivery
	deadline := time.Now().Add(10 * time.Second)
	for len(out) < n {
		if time.Now().After(deadline) {
			t.Fatalf("got %d of %d deliveries", len(out), n)
		}
		ds, err := c.Fetch(context.Background(), min(max, n-len(out)), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, ds...)
	}
	return out
}

func ids(ds []consumer.Delivery) []string {
	var out []string
	for _, d := range ds {
		out = append(out, d.ID)
	}
	return out
}

func open(t *testing.T, m *consumer.Manager, name string, cfg consumer.Config) *consumer.Consumer {
	t.Helper()
	c, err := m.Open(name, cfg, true)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// waitKept waits until the consumer keeps n messages (its broker
// subscription is asynchronous).
func waitKept(t *testing.T, c *consumer.Consumer, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Wait(ctx, func(i consumer.Info) bool { return i.Pending >= n }); err != nil {
		t.Fatalf("consumer keeps %d of %d messages", c.Info().Pending, n)
	}
}

// A message refused every time is delivered max_deliveries times, then
// published to the dead-letter channel and counted; the others, acked,
// are delivered once each.
func TestNackRedeliversThenDeadLetters(t *testing.T) {
	b := broker.NewMemory(broker.MemoryOptions{})
	defer b.Close()
	m := consumer.NewManager(b, consumer.Options{})
	defer m.Close()
	dl, err := b.Subscribe(context.Background(), broker.SubscribeOptions{Channels: []string{"_dead.w"}})
	if err != nil {
		t.Fatal(err)
	}
	c := open(t, m, "w", consumer.Config{Filter: "jobs", MaxDeliveries: 3})
	publish(t, b, "jobs", 5)
	seen := map[string]int{}
	for done := 0; done < 5; {
		ds := fetchN(t, c, 1, 1)
		d := ds[0]
		seen[string(d.Msg.Data)]++
		if string(d.Msg.Data) == "3" {
			if _, _, err := c.Nack(d.ID, 0); err != nil {
				t.Fatal(err)
			}
			if d.Count == 3 {
				done++
			}
			continue
		}
		if n, err := c.Ack([]string{d.ID}); err != nil || n != 1 {
			t.Fatalf("ack %s: %d %v", d.ID, n, err)
		}
		done++
	}
	for k, v := range seen {
		if k == "3" && v != 3 || k != "3" && v != 1 {
			t.Errorf("message %s delivered %d times", k, v)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	evs, err := dl.Next(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	var dead struct {
		Consumer   string `json:"consumer"`
		Deliveries int    `json:"deliveries"`
		Message    struct {
			Channel string `json:"channel"`
			Data    string `json:"data"`
		} `json:"message"`
	}
	if err := json.Unmarshal(evs[0].Msg.Data, &dead); err != nil {
		t.Fatal(err)
	}
	if dead.Consumer != "w" || dead.Deliveries != 3 || dead.Message.Channel != "jobs" || dead.Message.Data != "3" {
		t.Errorf("dead letter %s", evs[0].Msg.Data)
	}
	inf := c.Info()
	if inf.DeadLettered != 1 || inf.Acked != 4 || inf.Pending != 0 || inf.Redelivered != 2 {
		t.Errorf("counters %+v", inf)
	}
}

// A delivery not acknowledged within the ack wait goes to the next
// fetcher (a work queue member that died).
func TestAckWaitRedelivers(t *testing.T) {
	b := broker.NewMemory(broker.MemoryOptions{})
	defer b.Close()
	m := consumer.NewManager(b, consumer.Options{})
	defer m.Close()
	c := open(t, m, "w", consumer.Config{Filter: "jobs", AckWait: 200 * time.Millisecond})
	publish(t, b, "jobs", 2)
	first := fetchN(t, c, 2, 10) // taken by a client that dies
	again := fetchN(t, c, 2, 10)
	for i := range again {
		if again[i].Msg != first[i].Msg || again[i].Count != 2 {
			t.Errorf("redelivery %d: %+v after %+v", i, again[i], first[i])
		}
	}
	// The dead client's late ack still counts (the work was done); the
	// second ack of the same message is a no-op.
	if n, _ := c.Ack(ids(first)); n != 2 {
		t.Errorf("late ack removed %d", n)
	}
	if n, _ := c.Ack(ids(again)); n != 0 {
		t.Errorf("second ack removed %d", n)
	}
}

// Ordered mode (max_inflight 1): the next message waits for the previous
// one's acknowledgement, and a refused message comes back before later ones.
func TestOrdered(t *testing.T) {
	b := broker.NewMemory(broker.MemoryOptions{})
	defer b.Close()
	m := consumer.NewManager(b, consumer.Options{})
	defer m.Close()
	c := open(t, m, "o", consumer.Config{Filter: "jobs", MaxInflight: 1})
	publish(t, b, "jobs", 3)
	waitKept(t, c, 3)
	d := fetchN(t, c, 1, 10)
	if ds, _ := c.Fetch(context.Background(), 10, 0); len(ds) != 0 {
		t.Fatalf("second delivery while one is in flight: %v", ids(ds))
	}
	c.Nack(d[0].ID, 50*time.Millisecond)
	d2 := fetchN(t, c, 1, 10)
	if d2[0].Msg != d[0].Msg {
		t.Fatalf("after a delayed nack got %s, want %s again", d2[0].Msg.Data, d[0].Msg.Data)
	}
	c.Ack(ids(d2))
	for want := 2; want <= 3; want++ {
		d := fetchN(t, c, 1, 10)
		if string(d[0].Msg.Data) != fmt.Sprint(want) {
			t.Fatalf("got %s, want %d", d[0].Msg.Data, want)
		}
		c.Ack(ids(d))
	}
}

// Past max_pending, messages are not kept: the consumer is told with one
// gap that counts them, never a silent skip.
func TestMaxPendingIsACountedGap(t *testing.T) {
	for name, cfg := range map[string]consumer.Config{
		"messages": {Filter: "jobs", MaxPending: 3},
		"bytes":    {Filter: "jobs", MaxPendingBytes: 3}, // "1", "2", "3"
	} {
		t.Run(name, func(t *testing.T) { testMaxPending(t, cfg) })
	}
}

func testMaxPending(t *testing.T, cfg consumer.Config) {
	b := broker.NewMemory(broker.MemoryOptions{})
	defer b.Close()
	m := consumer.NewManager(b, consumer.Options{})
	defer m.Close()
	c := open(t, m, "p", cfg)
	publish(t, b, "jobs", 10)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Wait(ctx, func(i consumer.Info) bool { return i.Lost >= 7 }); err != nil {
		t.Fatalf("lost %d, want 7", c.Info().Lost)
	}
	ds := fetchN(t, c, 4, 10)
	var msgs []string
	var gap *consumer.Delivery
	for i := range ds {
		if ds[i].Gap != nil {
			gap = &ds[i]
			continue
		}
		msgs = append(msgs, string(ds[i].Msg.Data))
	}
	if fmt.Sprint(msgs) != "[1 2 3]" || gap == nil || gap.Lost != 7 || gap.Gap.From.Seq != 3 || gap.Gap.To.Seq != 10 {
		t.Fatalf("messages %v gap %+v", msgs, gap)
	}
	if inf := c.Info(); inf.Gaps != 1 || inf.Lost != 7 {
		t.Errorf("counters %+v", inf)
	}
}

// With bbolt, a consumer's position and pending messages survive a
// restart: what was acknowledged is not delivered again, what was
// delivered and not acknowledged is, and messages published while no one
// fetched are all there.
func TestBoltSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	openAll := func() (*broker.Core, *consumer.Manager) {
		b, err := boltlog.OpenBroker(boltlog.Options{Dir: dir})
		if err != nil {
			t.Fatal(err)
		}
		st, err := consumer.OpenBolt(dir, false)
		if err != nil {
			t.Fatal(err)
		}
		return b, consumer.NewManager(b, consumer.Options{Store: st})
	}
	b, m := openAll()
	c := open(t, m, "w", consumer.Config{Filter: "jobs"})
	publish(t, b, "jobs", 10)
	ds := fetchN(t, c, 4, 4)
	c.Ack(ids(ds[:2])) // 1, 2 done; 3, 4 in flight
	m.Close()
	b.Close()

	b, m = openAll()
	defer b.Close()
	defer m.Close()
	c, err := m.Open("w", consumer.Config{}, false)
	if err != nil {
		t.Fatal(err)
	}
	publish(t, b, "jobs", 2) // 11, 12 after the restart (data "1", "2" again)
	got := fetchN(t, c, 10, 100)
	var data []string
	for _, d := range got {
		data = append(data, string(d.Msg.Data)+"@"+fmt.Sprint(d.Msg.Seq))
	}
	want := "[3@3 4@4 5@5 6@6 7@7 8@8 9@9 10@10 1@11 2@12]"
	if fmt.Sprint(data) != want {
		t.Fatalf("after restart got %v, want %s", data, want)
	}
	if got[0].Count != 2 {
		t.Errorf("message 3's delivery count after restart %d, want 2", got[0].Count)
	}
}

// A pattern consumer keeps each channel's position: after a restart
// (bbolt) it goes on with the channels it knew and takes a channel that
// appeared since from its first message.
func TestPatternConsumerAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	openAll := func() (*broker.Core, *consumer.Manager) {
		b, err := boltlog.OpenBroker(boltlog.Options{Dir: dir})
		if err != nil {
			t.Fatal(err)
		}
		st, err := consumer.OpenBolt(dir, false)
		if err != nil {
			t.Fatal(err)
		}
		return b, consumer.NewManager(b, consumer.Options{Store: st})
	}
	b, m := openAll()
	c := open(t, m, "p", consumer.Config{Filter: "jobs.*"})
	publish(t, b, "jobs.a", 2)
	publish(t, b, "jobs.b", 1)
	publish(t, b, "other", 1)
	ds := fetchN(t, c, 3, 10)
	c.Ack(ids(ds))
	m.Close()
	b.Close()

	b, m = openAll()
	defer b.Close()
	defer m.Close()
	c, err := m.Open("p", consumer.Config{Filter: "jobs.*"}, false)
	if err != nil {
		t.Fatal(err)
	}
	publish(t, b, "jobs.c", 1)
	publish(t, b, "jobs.a", 1)
	got := fetchN(t, c, 2, 10)
	var seen []string
	for _, d := range got {
		seen = append(seen, d.Msg.Channel+"@"+fmt.Sprint(d.Msg.Seq))
	}
	if fmt.Sprint(seen) != "[jobs.c@1 jobs.a@3]" {
		t.Fatalf("after restart %v", seen)
	}
	if ds, _ := c.Fetch(context.Background(), 10, 0); len(ds) != 0 {
		t.Errorf("more: %v", ids(ds))
	}
}

// A manager that cannot keep consumers refuses them with a stable code.
func TestUnavailable(t *testing.T) {
	b := broker.NewMemory(broker.MemoryOptions{})
	defer b.Close()
	m := consumer.NewManager(b, consumer.Options{Unavailable: "not here"})
	defer m.Close()
	_, err := m.Open("w", consumer.Config{Filter: "jobs"}, true)
	var e *wire.Error
	if !errors.As(err, &e) || e.Code != wire.CodeConsumersUnavailable || e.Message != "not here" {
		t.Fatalf("open: %v", err)
	}
}

// A full pattern consumer whose channels take turns keeps one gap notice
// per channel, however many messages it loses.
func TestOverflowGapsPerChannel(t *testing.T) {
	b := broker.NewMemory(broker.MemoryOptions{})
	defer b.Close()
	m := consumer.NewManager(b, consumer.Options{})
	defer m.Close()
	c := open(t, m, "p", consumer.Config{Filter: "jobs.*", MaxPending: 2})
	publish(t, b, "jobs.a", 1)
	publish(t, b, "jobs.b", 1)
	for i := 0; i < 50; i++ {
		publish(t, b, "jobs.a", 1)
		publish(t, b, "jobs.b", 1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Wait(ctx, func(i consumer.Info) bool { return i.Lost >= 100 }); err != nil {
		t.Fatalf("lost %d", c.Info().Lost)
	}
	ds, err := c.Fetch(context.Background(), 100, 0)
	if err != nil {
		t.Fatal(err)
	}
	gaps := map[string]uint64{}
	for _, d := range ds {
		if d.Gap != nil {
			gaps[d.Gap.Channel] += d.Lost
		}
	}
	if len(ds) != 4 || gaps["jobs.a"] != 50 || gaps["jobs.b"] != 50 {
		t.Fatalf("%d deliveries, gaps %v", len(ds), gaps)
	}
}

// A delivery id kept from before the consumer was deleted and made again
// names an entry number the new consumer reuses: acking it must not
// remove a message nobody was given (nor one whose current delivery came
// after a later count than the id's).
func TestStaleAckAfterRecreateRemovesNothing(t *testing.T) {
	b := broker.NewMemory(broker.MemoryOptions{})
	defer b.Close()
	m := consumer.NewManager(b, consumer.Options{})
	defer m.Close()
	cfg := consumer.Config{Filter: "jobs"}
	c := open(t, m, "w", cfg)
	publish(t, b, "jobs", 1)
	old := fetchN(t, c, 1, 1)[0]
	if old.ID != "1.1" {
		t.Fatalf("first delivery id %s", old.ID)
	}
	if err := m.Delete("w"); err != nil {
		t.Fatal(err)
	}
	c = open(t, m, "w", cfg)
	publish(t, b, "jobs", 1)
	waitKept(t, c, 1)
	if n, err := c.Ack([]string{old.ID, "1.2"}); err != nil || n != 0 {
		t.Fatalf("stale ack of a message never delivered: removed %d, %v", n, err)
	}
	if ok, _, _ := c.Nack(old.ID, 0); ok {
		t.Fatal("stale nack of a message never delivered counted")
	}
	d := fetchN(t, c, 1, 1)[0]
	if d.ID != "1.1" || string(d.Msg.Data) != "1" {
		t.Fatalf("the new message: %s %q", d.ID, d.Msg.Data)
	}
	if n, _ := c.Ack([]string{"1.2"}); n != 0 {
		t.Fatal("an ack with a count later than any delivery removed the message")
	}
	if n, err := c.Ack([]string{d.ID}); err != nil || n != 1 {
		t.Fatalf("ack of the delivery: %d %v", n, err)
	}
	if i := c.Info(); i.Counters.Acked != 1 || i.Counters.Delivered != 1 {
		t.Fatalf("counters %+v", i.Counters)
	}
}
