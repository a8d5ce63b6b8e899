package redislog

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/redistest"
	"github.com/redis/go-redis/v9"
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
	publishUnheard(t, ctx, l, "j", "2")
	if _, _, err := b.Publish(ctx, &broker.Message{Channel: "j", Data: []byte("3")}); err != nil {
		t.Fatal(err)
	}
	expectMessages(t, ctx, s, "1", "2", "3")
}

// publishUnheard appends data to channel ch's stream and sends it on
// sharded Pub/Sub, where nodes on a single Redis do not listen: a
// message whose Pub/Sub copy was lost.
func publishUnheard(t *testing.T, ctx context.Context, l *Log, ch, data string) {
	t.Helper()
	keys, args := l.publishArgs([]*broker.Message{{Channel: ch, Event: "message", Data: []byte(data)}}, 0)
	args[howArg] = "S"
	if err := publishScript.Run(ctx, l.rdb, keys, args...).Err(); err != nil {
		t.Fatal(err)
	}
}

// expectMessages takes the messages want from s, in order, with no gap
// notice (the stream holds every one).
func expectMessages(t *testing.T, ctx context.Context, s *broker.Subscription, want ...string) {
	t.Helper()
	var got []string
	for len(got) < len(want) {
		evs, err := s.Next(ctx, nil)
		if err != nil {
			t.Fatalf("after %v: %v", got, err)
		}
		for _, e := range evs {
			if e.Gap != nil {
				t.Fatalf("gap %s -> %s though the stream holds the messages (after %v)", e.Gap.From, e.Gap.To, got)
			}
			got = append(got, string(e.Msg.Data))
		}
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("got %v, want %v", got, want)
	}
}

// FuzzDecodeBatch: whatever arrives on a Pub/Sub channel (another
// program may publish there) is decoded or refused, never a panic; what
// the publish script sends decodes to what was published; a batch sent
// again ("R") decodes as Late messages.
func FuzzDecodeBatch(f *testing.F) {
	f.Add("B e1 7 1700000000000000 1\n1 - 7 5\nmessagehello")
	f.Add("B e1 7 1700000000000000 2\n2 abcd:3:9 0 2\n{}1 - 1 1\nab")
	f.Add("B e1 7 17 1\n1 - 99 1\nx")
	f.Add("B e1 7 17 1\n1 - -1 0\nx")
	f.Add("B e1 7 17 1\n300 - 0 1\nx")
	f.Add("B e1 0 17 1\n1 - 0 1\nx")
	f.Add("B e1 18446744073709551615 17 2\n1 - 0 0\n1 - 0 0\n")
	f.Add("R e1 7 1700000000000000 1\n1 - 7 5\nmessagehello")
	f.Add("D")
	f.Add("")
	l := &Log{node: "abcd"}
	f.Fuzz(func(t *testing.T, p string) {
		msgs, err := l.decodeBatch("c", p)
		if err != nil {
			return
		}
		for i, m := range msgs {
			if m.Channel != "c" || len(m.Event)+len(m.Data) > len(p) || i > 0 && m.Seq != msgs[i-1].Seq+1 || m.Late != (p[0] == 'R') {
				t.Fatalf("decoded %+v from %q", m, p)
			}
		}
		// Encoding them again as the script does gives the same messages.
		again, err := l.decodeBatch("c", encodeForTest(msgs))
		if err != nil || len(again) != len(msgs) {
			t.Fatalf("round trip of %q: %+v, %v", p, again, err)
		}
		for i, m := range msgs {
			a := again[i]
			if a.Seq != m.Seq || a.Event != m.Event || string(a.Data) != string(m.Data) || !a.Time.Equal(m.Time) ||
				a.Kind != m.Kind || a.Origin != m.Origin || a.OriginSeq != m.OriginSeq {
				t.Fatalf("round trip of %q: %+v, want %+v", p, a, m)
			}
		}
	})
}

func encodeForTest(msgs []*broker.Message) string {
	m0 := msgs[0]
	out := "B " + m0.Epoch + " " + strconv.FormatUint(m0.Seq, 10) + " " + strconv.FormatInt(m0.Time.UnixMicro(), 10) + " " +
		strconv.Itoa(len(msgs)) + "\n"
	for _, m := range msgs {
		origin := "-"
		if m.Origin != 0 {
			origin = "abcd:" + strconv.FormatUint(m.Origin, 10) + ":" + strconv.FormatUint(m.OriginSeq, 10)
		}
		out += strconv.Itoa(int(m.Kind)) + " " + origin + " " + strconv.Itoa(len(m.Event)) + " " + strconv.Itoa(len(m.Data)) + "\n" + m.Event + string(m.Data)
	}
	return out
}

// A pipeline has one script call per channel, publishes of a channel go
// in one call up to maxCallBytes of data, and a presence change is a call
// of its own: what does not fit waits for the next pipeline, with every
// later op of its channel, in order; other channels' ops go on.
func TestPlanGroupsByChannel(t *testing.T) {
	l := &Log{opts: Options{Prefix: "p:"}}
	l.opts.fill()
	big := make([]byte, 1<<20)
	pub := func(ch string, data []byte) *op { return &op{m: &broker.Message{Channel: ch, Data: data}} }
	var ops []*op
	for i := 0; i < 20; i++ {
		ops = append(ops, pub("a", big), pub("b", []byte("x")))
	}
	calls, rest := l.plan(ops, nil)
	if len(calls) != 2 || len(calls[0].ops) != 8 || len(calls[1].ops) != 20 || len(rest) != 12 {
		t.Fatalf("%d calls, %d ops left (want a call of 8 publishes to a, its data bounded by %d bytes, and all 20 of b)", len(calls), len(rest), maxCallBytes)
	}
	for _, o := range rest {
		if o.m.Channel != "a" {
			t.Fatalf("a publish to %s left for later", o.m.Channel)
		}
	}
	if calls[0].id == calls[1].id || calls[0].channel != "a" || calls[1].channel != "b" {
		t.Fatalf("calls %+v %+v", calls[0], calls[1])
	}
	presence := &op{m: &broker.Message{Channel: "b"}, script: presenceAddScript, args: []any{"n", "id", "", 10}}
	bAfter := pub("b", nil)
	calls, rest = l.plan([]*op{pub("a", nil), pub("b", nil), presence, pub("a", nil), bAfter, pub("c", nil)}, nil)
	if len(calls) != 3 || len(calls[0].ops) != 2 || len(rest) != 2 || rest[0] != presence || rest[1] != bAfter {
		t.Fatalf("a presence change after a publish of its channel: %d calls, %d left; want it and b's later publish in the next pipeline, a and c now", len(calls), len(rest))
	}
	calls, rest = l.plan([]*op{presence, pub("a", nil), pub("a", nil), pub("b", nil)}, nil)
	if len(calls) != 2 || len(rest) != 1 || calls[0].script != presenceAddScript || len(calls[1].ops) != 2 {
		t.Fatalf("publishes after a presence change: %d calls, %d left", len(calls), len(rest))
	}

	// At most maxBatch ops in a pipeline.
	ops = ops[:0]
	for i := 0; i < maxBatch+10; i++ {
		ops = append(ops, pub(fmt.Sprint("ch", i), nil))
	}
	calls, rest = l.plan(ops, nil)
	if len(calls) != maxBatch || len(rest) != 10 || rest[0] != ops[maxBatch] {
		t.Fatalf("%d calls, %d left of %d ops", len(calls), len(rest), len(ops))
	}
}

// failNextXRange makes the next XRANGE a client sends fail, as when Redis
// does not answer in time.
type failNextXRange struct{ armed atomic.Bool }

func (f *failNextXRange) DialHook(next redis.DialHook) redis.DialHook { return next }

func (f *failNextXRange) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if cmd.Name() == "xrange" && f.armed.CompareAndSwap(true, false) {
			cmd.SetErr(errors.New("test: i/o timeout"))
			return cmd.Err()
		}
		return next(ctx, cmd)
	}
}

func (f *failNextXRange) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// A message missed over Pub/Sub whose refill fails (Redis did not
// answer the XRANGE in time) is not skipped with a gap notice while the
// stream holds it: the channel waits for a resync, which delivers the
// missed message and the one heard, in order. (Before, the subscriber
// got a gap notice for message 2, then 3.)
func TestFailedRefillWaitsForResync(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	b, l := openCore(t, ctx, Options{URL: srv.URL(), Prefix: "refail:"})
	s, err := b.Subscribe(ctx, broker.SubscribeOptions{Channels: []string{"j"}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, _, err := b.Publish(ctx, &broker.Message{Channel: "j", Data: []byte("1")}); err != nil {
		t.Fatal(err)
	}
	expectNext(t, ctx, s, "1")
	publishUnheard(t, ctx, l, "j", "2")
	fail := &failNextXRange{}
	fail.armed.Store(true)
	l.rdb.AddHook(fail)
	if _, _, err := b.Publish(ctx, &broker.Message{Channel: "j", Data: []byte("3")}); err != nil {
		t.Fatal(err)
	}
	// The node has heard 3 (and tried to refill 2) once this PING's
	// answer is back.
	if err := l.ping(ctx, l.ps); err != nil {
		t.Fatal(err)
	}
	if fail.armed.Load() {
		t.Fatal("no refill was tried")
	}
	if evs, _ := s.TryNext(nil); len(evs) > 0 {
		t.Fatalf("before the resync: %+v (gap %+v)", evs[0].Msg, evs[0].Gap)
	}
	// The heartbeat asks for the resync after 3 s; the test asks now.
	if err := l.resync(l.onClassic); err != nil {
		t.Fatal(err)
	}
	expectMessages(t, ctx, s, "2", "3")
}
