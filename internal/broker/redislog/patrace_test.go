package redislog_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/broker/brokertest"
	"github.com/pushctl/pushctl/internal/broker/redislog"
	"github.com/pushctl/pushctl/internal/redistest"
)

// sinceRound is one subscription to a pattern with Since while messages
// 1..each of a new channel it matches are published on another node.
type sinceRound struct {
	ch     string
	base   uint64 // the channel's last seq before the round
	since  time.Time
	starts []time.Time // when each publish started
	got    []string    // the data received, in order
	seqs   []uint64
	gaps   []broker.Gap
	// marker: once every message came, one more is published, which
	// must be the next event (nothing came twice meanwhile).
	marker bool
}

// collect reads s until the round's last message (each channel comes in
// order: what is missing then is missing for good), checking order and
// repeats.
func (r *sinceRound) collect(t *testing.T, ctx context.Context, s *broker.Subscription) {
	t.Helper()
	last := r.base + uint64(len(r.starts))
	for len(r.seqs) == 0 || r.seqs[len(r.seqs)-1] < last {
		evs, err := s.Next(ctx, nil)
		if err != nil {
			t.Fatalf("%s: after %v (gaps %v): %v", r.ch, r.got, r.gaps, err)
		}
		for _, e := range evs {
			if e.Gap != nil {
				r.gaps = append(r.gaps, *e.Gap)
				continue
			}
			if e.Msg.Channel != r.ch {
				t.Fatalf("%s: message of %s", r.ch, e.Msg.Channel)
			}
			if len(r.seqs) > 0 && e.Msg.Seq <= r.seqs[len(r.seqs)-1] {
				t.Fatalf("%s: seq %d after %v: out of order or repeated", r.ch, e.Msg.Seq, r.seqs)
			}
			r.got = append(r.got, string(e.Msg.Data))
			r.seqs = append(r.seqs, e.Msg.Seq)
		}
	}
}

// lost describes the first message whose publish started at or after
// Since and that reached the subscription neither itself nor as part of
// a gap notice ("" when there is none).
func (r *sinceRound) lost() string {
	for i, start := range r.starts {
		seq := r.base + uint64(i+1)
		if start.Before(r.since) || slices.Contains(r.seqs, seq) {
			continue
		}
		if slices.ContainsFunc(r.gaps, func(g broker.Gap) bool { return g.From.Seq < seq && seq <= g.To.Seq }) {
			continue
		}
		return fmt.Sprintf("%s: got %v (gaps %v); message %d's publish started %v after Since",
			r.ch, r.got, r.gaps, seq, start.Sub(r.since))
	}
	return ""
}

// publishRound publishes "1".."each" to ch on a, one after the other,
// recording when each started; the result comes on the channel returned.
func publishRound(ctx context.Context, a broker.Broker, r *sinceRound) <-chan error {
	done := make(chan error, 1)
	go func() {
		for i := range r.starts {
			r.starts[i] = time.Now()
			if _, _, err := a.Publish(ctx, &broker.Message{Channel: r.ch, Data: []byte(fmt.Sprint(i + 1))}); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	return done
}

// patternSinceRaces subscribes on node b to a pattern with Since (taken
// just before) while node a publishes the first messages of a new
// channel the pattern matches, rounds times. Every message whose publish
// started after Since must reach the subscription, in order and once,
// or be named by a gap notice. settle, when set, runs before each round.
// It returns the rounds that lost one silently, each described.
func patternSinceRaces(t *testing.T, a, b broker.Broker, rounds int, settle func()) []string {
	t.Helper()
	var bad []string
	for n := range rounds {
		if settle != nil {
			settle()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		r := &sinceRound{ch: fmt.Sprintf("q%d.x", n), starts: make([]time.Time, 3)}
		r.since = time.Now()
		published := publishRound(ctx, a, r)
		s, err := b.Subscribe(ctx, broker.SubscribeOptions{Channels: []string{fmt.Sprintf("q%d.*", n)}, Since: r.since})
		if err != nil {
			cancel()
			t.Fatalf("round %d: subscribe: %v", n, err)
		}
		if err := <-published; err != nil {
			cancel()
			t.Fatalf("round %d: publish: %v", n, err)
		}
		r.collect(t, ctx, s)
		s.Close()
		cancel()
		if l := r.lost(); l != "" {
			bad = append(bad, fmt.Sprintf("round %d: %s", n, l))
		}
	}
	return bad
}

// noPatternFollowed waits until no node follows a pattern, as in a quiet
// cluster: then a node publishes on sharded Pub/Sub only until it reads
// that one does.
func noPatternFollowed(t *testing.T, c *redistest.Cluster, prefix string) func() {
	rdb := clusterClient(t, c)
	return func() {
		eventually(t, "no pattern followed", func() error {
			n, err := rdb.HLen(bg(t), prefix+"{=}:routes").Result()
			if err == nil && n != 0 {
				err = fmt.Errorf("%d patterns followed", n)
			}
			return err
		})
	}
}

// A pattern subscription with Since made on one node while another
// publishes the first messages of a new channel it matches gets all of
// them. On Redis Cluster the publishing node decides, per batch, whether
// to publish on classic Pub/Sub too (where patterns are heard) from a
// read that can come just before the pattern is registered, and the
// subscription's replay can list the channels before the channel exists:
// the subscription then first hears the channel at seq 2. Here the race
// is left to chance, round after round.
func TestRedisClusterPatternSinceMissesNoFirstMessage(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	p := newPrefix()
	a, b := open(t, c.URL(), p, brokertest.Options{}), open(t, c.URL(), p, brokertest.Options{})
	if bad := patternSinceRaces(t, a, b, 40, noPatternFollowed(t, c, p)); len(bad) > 0 {
		t.Fatalf("%d of 40 rounds lost messages silently:\n%s", len(bad), strings.Join(bad, "\n"))
	}
}

// The same race on a single Redis, where every publish goes out on
// classic Pub/Sub and the channel list is updated by the publish script.
func TestRedisPatternSinceMissesNoFirstMessage(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	p := newPrefix()
	a, b := open(t, srv.URL(), p, brokertest.Options{}), open(t, srv.URL(), p, brokertest.Options{})
	if bad := patternSinceRaces(t, a, b, 40, nil); len(bad) > 0 {
		t.Fatalf("%d of 40 rounds lost messages silently:\n%s", len(bad), strings.Join(bad, "\n"))
	}
}

// The window of TestRedisClusterPatternSinceMissesNoFirstMessage, made to
// happen every round: node A reads that no node follows a pattern, then
// (held there by a test hook) waits while node B subscribes to the
// pattern with Since and replays; A then publishes message 1 on sharded
// Pub/Sub only. B must still get message 1, before 2. The channel is new
// (the replay does not list it), or holds a message from before Since
// (the replay reads it and finds nothing to hand out: B must not take
// message 2 for the next one). Node A sends message 1 again for B when
// it reads, before message 2, that a pattern is followed now; with that
// turned off, B first hears the channel at message 2 and catches up by
// itself.
func TestRedisClusterPatternSinceCatchesUp(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	p := newPrefix()
	a, b := open(t, c.URL(), p, brokertest.Options{}), open(t, c.URL(), p, brokertest.Options{})
	la := a.Log().(*redislog.Log)
	settle := noPatternFollowed(t, c, p)
	for _, tc := range []struct{ existing, resend bool }{{false, true}, {true, true}, {false, false}, {true, false}} {
		existing := tc.existing
		name := map[bool]string{false: "new channel", true: "existing channel"}[existing]
		if !tc.resend {
			name += ", not sent again"
		}
		t.Run(name, func(t *testing.T) {
			la.SetSOnlyResend(tc.resend)
			defer la.SetSOnlyResend(true)
			const rounds = 10
			var bad []string
			for n := range rounds {
				settle()
				r := &sinceRound{ch: fmt.Sprintf("h%v%v%d.x", existing, tc.resend, n), starts: make([]time.Time, 3)}
				if existing {
					publish(t, a, r.ch, "0")
					r.base = 1
				}
				if l := heldRound(t, a, b, la, r, strings.TrimSuffix(r.ch, "x")+"*", 30*time.Second); l != "" {
					bad = append(bad, fmt.Sprintf("round %d: %s", n, l))
				}
			}
			if len(bad) > 0 {
				t.Fatalf("%d of %d rounds lost messages:\n%s", len(bad), rounds, strings.Join(bad, "\n"))
			}
		})
	}
}

// heldRound is one round of TestRedisClusterPatternSinceCatchesUp; it
// describes what went wrong ("": nothing). Every message must have come
// within the deadline.
func heldRound(t *testing.T, a, b broker.Broker, la *redislog.Log, r *sinceRound, pat string, within time.Duration) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	read, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	la.SetAfterCounts(func(mode string, chans []string) {
		if mode == "S" && slices.Contains(chans, r.ch) {
			once.Do(func() { close(read); <-release })
		}
	})
	defer la.SetAfterCounts(nil)
	r.since = time.Now()
	published := publishRound(ctx, a, r)
	select {
	case <-read:
	case <-ctx.Done():
		t.Fatalf("node A never read that no pattern is followed before publishing %s", r.ch)
	}
	s, err := b.Subscribe(ctx, broker.SubscribeOptions{Channels: []string{pat}, Since: r.since})
	close(release)
	if err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	defer s.Close()
	if err := <-published; err != nil {
		t.Fatalf("publish: %v", err)
	}
	r.collect(t, ctx, s)
	if l := r.lost(); l != "" {
		return l
	}
	if len(r.gaps) > 0 {
		return fmt.Sprintf("%s: gaps %v, though the channel holds every message", r.ch, r.gaps)
	}
	if len(r.got) != len(r.starts) {
		return fmt.Sprintf("%s: got %v, want only the messages published after Since", r.ch, r.got)
	}
	if r.marker {
		m, _ := publish(t, a, r.ch, "marker")
		evs, err := s.Next(ctx, nil)
		if err != nil {
			return fmt.Sprintf("%s: waiting for the marker: %v", r.ch, err)
		}
		if e := evs[0]; e.Msg == nil || e.Msg.Seq != m.Seq || string(e.Msg.Data) != "marker" {
			return fmt.Sprintf("%s: after %v the next event is %+v, want the marker (seq %d)", r.ch, r.got, e, m.Seq)
		}
	}
	return ""
}

// The window of TestRedisClusterPatternSinceCatchesUp for a channel that
// then receives nothing more: node A reads that no pattern is followed,
// node B subscribes to the pattern with Since and replays (the channel is
// new: not listed; or it holds a message from before Since, read), then
// A publishes one message on sharded Pub/Sub only, and nothing after it.
// B hears no later message that would make it catch up: A must make the
// message heard where patterns are (it reads, after the publish, that a
// pattern is followed now). B gets it within a few seconds, once.
func TestRedisClusterPatternSinceGetsLoneMessage(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	p := newPrefix()
	a, b := open(t, c.URL(), p, brokertest.Options{}), open(t, c.URL(), p, brokertest.Options{})
	la := a.Log().(*redislog.Log)
	settle := noPatternFollowed(t, c, p)
	for _, existing := range []bool{false, true} {
		name := map[bool]string{false: "new channel", true: "existing channel"}[existing]
		t.Run(name, func(t *testing.T) {
			for n := range 5 {
				settle()
				r := &sinceRound{ch: fmt.Sprintf("l%v%d.x", existing, n), starts: make([]time.Time, 1), marker: true}
				if existing {
					publish(t, a, r.ch, "0")
					r.base = 1
				}
				if l := heldRound(t, a, b, la, r, strings.TrimSuffix(r.ch, "x")+"*", 10*time.Second); l != "" {
					t.Fatalf("round %d: %s", n, l)
				}
			}
		})
	}
}
