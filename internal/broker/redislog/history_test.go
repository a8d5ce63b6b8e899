package redislog_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/broker/brokertest"
	"github.com/pushctl/pushctl/internal/redistest"
)

// history subscribes to ch from the oldest retained message and returns
// the n messages replayed.
func history(t *testing.T, b broker.Broker, ch string, n int) []*broker.Message {
	t.Helper()
	s := subscribe(t, b, broker.SubscribeOptions{Channels: []string{ch}, Last: -1})
	defer s.Close()
	msgs, gaps := events(t, s, n)
	if len(gaps) != 0 {
		t.Fatalf("replaying %s: gaps %v", ch, gaps)
	}
	return msgs
}

// The stream is trimmed a node at a time, so it may hold a few entries
// older than the history: they are never read, counted or replayed, and
// the stream does not grow past the history by more than a node.
func TestHistoryIsExactWhileTheStreamIsTrimmedByNodes(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer rdb.Close()
	p := newPrefix()
	b := open(t, srv.URL(), p, brokertest.Options{HistorySize: 30})
	data := strings.Repeat("x", 10)
	for i := 1; i <= 1000; i++ {
		publish(t, b, "h", fmt.Sprintf("%s%04d", data, i))
	}
	ci, err := b.Channel(bg(t), "h")
	if err != nil {
		t.Fatal(err)
	}
	if ci.Messages != 30 || ci.Bytes != 30*14 || ci.LastSeq != 1000 {
		t.Fatalf("channel info: %d messages, %d bytes, last %d; want 30, %d, 1000", ci.Messages, ci.Bytes, ci.LastSeq, 30*14)
	}
	msgs := history(t, b, "h", 30)
	if msgs[0].Seq != 971 || msgs[29].Seq != 1000 {
		t.Fatalf("history %d..%d, want 971..1000", msgs[0].Seq, msgs[29].Seq)
	}
	// A resume from before the history starts at the history.
	s := subscribe(t, b, broker.SubscribeOptions{Channels: []string{"h"}, From: broker.Cursor{"h": {Epoch: msgs[0].Epoch, Seq: 500}}})
	got, gaps := events(t, s, 30)
	if len(gaps) != 1 || gaps[0].To.Seq != 970 || got[0].Seq != 971 {
		t.Fatalf("resume from 500: gaps %v, first %d; want one gap to 970, then 971", gaps, got[0].Seq)
	}
	n, err := rdb.XLen(context.Background(), p+"{h}:s").Result()
	if err != nil {
		t.Fatal(err)
	}
	if n < 30 || n > 30+100 {
		t.Fatalf("the stream holds %d entries for a history of 30", n)
	}
}

// A channel written by a version without the sizes list (meta without
// f) is taken over by the next publish: its history and byte count go
// on exactly.
func TestHistoryOfAnOlderVersionIsTakenOver(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer rdb.Close()
	p := newPrefix()
	b := open(t, srv.URL(), p, brokertest.Options{HistorySize: 10})
	for i := 1; i <= 6; i++ {
		publish(t, b, "old", fmt.Sprintf("m%d", i)) // 2 bytes each
	}
	ctx := context.Background()
	// What an older version left: the same stream and meta, no f, no sizes.
	if err := rdb.HDel(ctx, p+"{old}:m", "f").Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.Del(ctx, p+"{old}:z").Err(); err != nil {
		t.Fatal(err)
	}
	if msgs := history(t, b, "old", 6); msgs[0].Seq != 1 || string(msgs[5].Data) != "m6" {
		t.Fatalf("before the takeover: %d..%d", msgs[0].Seq, msgs[5].Seq)
	}
	for i := 7; i <= 15; i++ {
		publish(t, b, "old", fmt.Sprintf("m%d", i)) // 2 or 3 bytes
	}
	ci, err := b.Channel(bg(t), "old")
	if err != nil {
		t.Fatal(err)
	}
	// m6..m15 remain: m6-m9 2 bytes, m10-m15 3 bytes.
	if ci.Messages != 10 || ci.Bytes != 4*2+6*3 {
		t.Fatalf("after the takeover: %d messages, %d bytes; want 10, 26", ci.Messages, ci.Bytes)
	}
	if msgs := history(t, b, "old", 10); msgs[0].Seq != 6 || string(msgs[9].Data) != "m15" {
		t.Fatalf("after the takeover: %d..%d", msgs[0].Seq, msgs[9].Seq)
	}
}

// pttls are the expiries left on a channel's keys: meta, stream, and
// sizes when the channel has a sizes list (with a bytes bound only).
func pttls(t *testing.T, rdb *redis.Client, p, ch string) []time.Duration {
	t.Helper()
	var out []time.Duration
	for _, part := range []string{"m", "s", "z"} {
		d, err := rdb.PTTL(context.Background(), p+"{"+ch+"}:"+part).Result()
		if err != nil {
			t.Fatal(err)
		}
		if d == -2 && part == "z" {
			continue // no such key
		}
		out = append(out, d)
	}
	return out
}

// A channel kept with no age limit (history-age -1: a Durable Stream, or
// a namespace that says so) does not expire in Redis however long it is
// idle; others expire after twice max(age, 1h) idle. A channel that had
// an expiry loses it at its next publish once its rules say none.
func TestChannelWithoutAgeLimitDoesNotExpire(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer rdb.Close()
	p := newPrefix()
	b := open(t, srv.URL(), p, brokertest.Options{RetentionFor: func(ch string) (broker.Retention, bool) {
		if strings.HasPrefix(ch, "keep.") {
			// (With a bytes bound: the sizes list does not expire either.)
			return broker.Retention{HistorySize: 100, HistoryAge: -1, HistoryBytes: 1 << 20}, true
		}
		return broker.Retention{}, false
	}})
	publish(t, b, "keep.a", "x")
	publish(t, b, "other", "x")
	keepA := pttls(t, rdb, p, "keep.a")
	if len(keepA) != 3 {
		t.Fatalf("keep.a has %d keys, want meta, stream and sizes", len(keepA))
	}
	for i, d := range keepA {
		if d != -1 {
			t.Fatalf("keep.a key %d expires in %s", i, d)
		}
	}
	for i, d := range pttls(t, rdb, p, "other") {
		if d <= time.Hour {
			t.Fatalf("other key %d: expiry %s, want about 2h", i, d)
		}
	}
	// keep.b published first under a default retention, then under none.
	before := open(t, srv.URL(), p, brokertest.Options{})
	publish(t, before, "keep.b", "x")
	if d := pttls(t, rdb, p, "keep.b")[0]; d <= 0 {
		t.Fatalf("keep.b under the default: expiry %s", d)
	}
	publish(t, b, "keep.b", "y")
	for i, d := range pttls(t, rdb, p, "keep.b") {
		if d != -1 {
			t.Fatalf("keep.b key %d still expires in %s", i, d)
		}
	}
}
