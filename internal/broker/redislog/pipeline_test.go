package redislog_test

import (
	"fmt"
	"testing"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/broker/redislog"
	"github.com/pushctl/pushctl/internal/redistest"
)

// TestOneChannelsScriptsDoNotHoldUpOthers: a burst of script calls on one
// channel (connection records, one call each) is sent one pipeline at a
// time, but a publish to another channel queued behind them goes out with
// the next pipeline, not after the whole burst. Each channel's own order
// is kept: the records are all there, in order.
func TestOneChannelsScriptsDoNotHoldUpOthers(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	hub := broker.NewHub()
	l, err := redislog.Open(bg(t), redislog.Options{URL: srv.URL(), Prefix: newPrefix()}, hub)
	if err != nil {
		t.Fatal(err)
	}
	b := broker.New(hub, l, broker.CoreOptions{})
	defer b.Close()
	evCh := broker.ReservedPrefix + "events.connections"
	const burst = 600
	var waits []func() (bool, error)
	for i := 0; i < burst; i++ {
		ev := &broker.Message{Channel: evCh, Kind: broker.KindJSON, Data: []byte(fmt.Sprintf(`{"n":%d}`, i))}
		w, err := l.StartRecord(bg(t), "", "c", fmt.Sprint(i), "info", true, ev)
		if err != nil {
			t.Fatal(err)
		}
		waits = append(waits, w)
	}
	if _, _, err := b.Publish(bg(t), &broker.Message{Channel: "other", Data: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	// How many records were appended by the time the publish was: its
	// pipeline was at most a few behind the first.
	info, err := b.Channel(bg(t), evCh)
	if err != nil {
		t.Fatal(err)
	}
	if info.LastSeq > burst/4 {
		t.Fatalf("a publish to another channel waited for %d of the %d records queued before it", info.LastSeq, burst)
	}
	for i, w := range waits {
		if ok, err := w(); err != nil || !ok {
			t.Fatalf("record %d: %v %v", i, ok, err)
		}
	}
	sub, err := b.Subscribe(bg(t), broker.SubscribeOptions{Channels: []string{evCh}, Last: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	for n := 0; n < burst; {
		evs, err := sub.Next(bg(t), nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range evs {
			if ev.Msg == nil {
				continue
			}
			if want := fmt.Sprintf(`{"n":%d}`, n); string(ev.Msg.Data) != want {
				t.Fatalf("event %d is %s, want %s", n, ev.Msg.Data, want)
			}
			n++
		}
	}
}
