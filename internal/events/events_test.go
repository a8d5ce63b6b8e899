package events

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
)

// A fake log: numbers each event channel's messages.
type fakeLog struct {
	mu   sync.Mutex
	seqs map[string]uint64
}

func (f *fakeLog) publish(_ context.Context, m *broker.Message) (func() (*broker.Message, error), error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seqs[m.Channel]++
	m.Seq, m.Epoch = f.seqs[m.Channel], "e"
	return func() (*broker.Message, error) { return m, nil }, nil
}

// On one node the Emitter decides occupancy: the first subscription of a
// channel occupies it, the last vacates it, and a channel's events reach
// the sinks in their order, numbered 1, 2, 3….
func TestEmitterOccupancyAndOrder(t *testing.T) {
	f := &fakeLog{seqs: map[string]uint64{}}
	e := New(Config{Node: "n1", Publish: f.publish, Connections: true})
	var mu sync.Mutex
	var got []string
	e.AddSink(func(ev Event) {
		mu.Lock()
		defer mu.Unlock()
		if ev.Channel == "a" {
			got = append(got, ev.Name+":"+ev.UserID)
			if ev.Seq != uint64(len(got)) || ev.Node != "n1" || ev.TimeMs == 0 {
				t.Errorf("event %d: %+v", len(got), ev)
			}
		}
	})
	s1 := e.Subscribe("a", "u1")
	s2 := e.Subscribe("a", "u2")
	e.Subscribe("b", "u1")
	e.Unsubscribe("a", "u1", s1)
	e.Unsubscribe("a", "u2", s2)
	e.Connection(Event{Name: ConnectionOpened, ConnectionID: "1"})
	e.Close()
	want := "channel_occupied: subscribed:u1 subscribed:u2 unsubscribed:u1 unsubscribed:u2 channel_vacated:"
	if s := strings.Join(got, " "); s != want {
		t.Fatalf("channel a:\n got %s\nwant %s", s, want)
	}
	if f.seqs[Connections] != 1 || f.seqs[ChannelOf("b")] != 2 {
		t.Fatalf("other channels: %v", f.seqs)
	}
	if p, d, fl := e.Counts(); p != 9 || d != 0 || fl != 0 {
		t.Fatalf("counts %d %d %d", p, d, fl)
	}
}

// Reserved event channels of a channel's events can be parsed back.
func TestEventMessageRoundTrip(t *testing.T) {
	ev := Event{Name: Subscribed, Channel: "chat.1", UserID: "u", Node: "n", TimeMs: time.Now().UnixMilli()}
	m := ev.Message()
	if m.Channel != "$events.channel.chat.1" || m.Event != Subscribed || broker.ValidateChannel(m.Channel) != nil {
		t.Fatalf("message %+v", m)
	}
	m.Seq, m.Epoch = 7, "x"
	back, err := FromMessage(m)
	if err != nil || back.Seq != 7 || back.Epoch != "x" || back.UserID != "u" || back.Channel != "chat.1" {
		t.Fatalf("back %+v %v", back, err)
	}
}

// A shared log whose holds wait for a gate.
type gatedShared struct {
	entered chan struct{} // a hold reached Occupy
	gate    chan struct{} // Occupy(hold) returns once closed
	mu      sync.Mutex
	held    int
}

func (g *gatedShared) Occupy(_ context.Context, _, _ string, hold bool, _ *broker.Message) (bool, error) {
	if hold {
		g.entered <- struct{}{}
		<-g.gate
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if hold {
		g.held++
	} else {
		g.held--
	}
	return false, nil
}
func (g *gatedShared) StartRecord(context.Context, string, string, string, string, bool, *broker.Message) (func() (bool, error), error) {
	return func() (bool, error) { return false, nil }, nil
}
func (g *gatedShared) Member(context.Context, string, string, string, string, bool, *broker.Message) (bool, error) {
	return false, nil
}
func (g *gatedShared) WatchLifecycle(func(node, kind, key, info string) error, func()) {}

// Shared, a subscription is counted for the cluster only once the log
// has recorded this node's hold; Held waits for that, so that nothing
// tells a client it is subscribed before the cluster counts it (else the
// other nodes' last unsubscribes, recorded first, vacate the channel under
// it: vacated and occupied again from two nodes).
func TestEmitterHeldWaitsForTheSharedHold(t *testing.T) {
	f := &fakeLog{seqs: map[string]uint64{}}
	g := &gatedShared{entered: make(chan struct{}, 1), gate: make(chan struct{})}
	e := New(Config{Node: "n1", Publish: f.publish, Shared: g})
	var open sync.Once
	defer e.Close()
	defer open.Do(func() { close(g.gate) })
	e.Subscribe("a", "u1")
	e.Subscribe("a", "u2") // not the first here, but counted by the same hold
	<-g.entered
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	for i := 0; i < 2; i++ {
		if err := e.Held(gone, "a"); err == nil {
			t.Fatal("Held returned before the shared log recorded the hold")
		}
	}
	open.Do(func() { close(g.gate) })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.Held(ctx, "a"); err != nil {
		t.Fatalf("Held after the hold: %v", err)
	}
	g.mu.Lock()
	held := g.held
	g.mu.Unlock()
	if held != 1 {
		t.Fatalf("holds recorded when Held returned: %d", held)
	}
	if err := e.Held(gone, "b"); err != nil {
		t.Fatalf("Held of a channel with nothing pending: %v", err)
	}
}
