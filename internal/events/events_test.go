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
