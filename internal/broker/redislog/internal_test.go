package redislog

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/redistest"
)

// A node that misses a Pub/Sub message (here: published to a Pub/Sub
// channel nobody listens on, as if lost) refills it from the stream when
// the next message shows the jump: subscribers see no gap.
func TestMissedMessageRefilledFromStream(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	hub := broker.NewHub()
	l, err := Open(ctx, Options{URL: srv.URL(), Prefix: "refill:"}, hub)
	if err != nil {
		t.Fatal(err)
	}
	b := broker.New(hub, l, broker.CoreOptions{})
	defer b.Close()
	s, err := b.Subscribe(ctx, broker.SubscribeOptions{Channels: []string{"j"}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, _, err := b.Publish(ctx, &broker.Message{Channel: "j", Data: []byte("1")}); err != nil {
		t.Fatal(err)
	}
	// Message 2 goes to the stream but its Pub/Sub copy is lost.
	keys, args := l.publishArgs(&broker.Message{Channel: "j", Event: "message", Data: []byte("2")}, "refill:nowhere")
	if err := publishScript.Run(ctx, l.rdb, keys, args...).Err(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Publish(ctx, &broker.Message{Channel: "j", Data: []byte("3")}); err != nil {
		t.Fatal(err)
	}
	var got []string
	for len(got) < 3 {
		evs, err := s.Next(ctx, nil)
		if err != nil {
			t.Fatalf("after %v: %v", got, err)
		}
		for _, e := range evs {
			if e.Gap != nil {
				t.Fatalf("gap %+v though the stream holds the message", e.Gap)
			}
			got = append(got, string(e.Msg.Data))
		}
	}
	if got[0] != "1" || got[1] != "2" || got[2] != "3" {
		t.Fatalf("got %v, want 1 2 3", got)
	}
}

// FuzzDecodeMessage: whatever arrives on a Pub/Sub channel (another
// program may publish there) is decoded or refused, never a panic; what
// the publish script sends decodes to what was published.
func FuzzDecodeMessage(f *testing.F) {
	f.Add("M e1 7 1700000000000000 1 - 7\nmessagehello")
	f.Add("M e1 7 1700000000000000 2 abcd:3:9 0\n{}")
	f.Add("M e1 7 17 1 - 99\nx")
	f.Add("M e1 7 17 1 - -1\nx")
	f.Add("M e1 7 17 300 - 0\nx")
	f.Add("D")
	f.Add("")
	l := &Log{node: "abcd"}
	f.Fuzz(func(t *testing.T, p string) {
		m, err := l.decodeMessage("c", p)
		if err != nil {
			return
		}
		if m.Channel != "c" || len(m.Event) > len(p) {
			t.Fatalf("decoded %+v from %q", m, p)
		}
		// Encoding it again as the script does gives the same message.
		again, err := l.decodeMessage("c", encodeForTest(m))
		if err != nil || again.Seq != m.Seq || again.Event != m.Event || string(again.Data) != string(m.Data) || !again.Time.Equal(m.Time) {
			t.Fatalf("round trip of %q: %+v, %v", p, again, err)
		}
	})
}

func encodeForTest(m *broker.Message) string {
	origin := "-"
	if m.Origin != 0 {
		origin = "abcd:" + strconv.FormatUint(m.Origin, 10) + ":" + strconv.FormatUint(m.OriginSeq, 10)
	}
	return "M " + m.Epoch + " " + strconv.FormatUint(m.Seq, 10) + " " + strconv.FormatInt(m.Time.UnixMicro(), 10) + " " +
		strconv.Itoa(int(m.Kind)) + " " + origin + " " + strconv.Itoa(len(m.Event)) + "\n" + m.Event + string(m.Data)
}
