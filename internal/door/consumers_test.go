package door

import (
	"context"
	"testing"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/consumer"
)

// A namespace bounds what durable consumers of its channels keep: a
// consumer created without a bound gets the namespace's, one asking for
// more is refused, a pattern that can match the namespace's channels is
// bound too (the strictest namespace it overlaps), and others keep the
// broker's defaults.
func TestNamespaceBoundsConsumers(t *testing.T) {
	b := broker.NewMemory(broker.MemoryOptions{})
	t.Cleanup(func() { b.Close() })
	d := New(b, Config{Namespaces: []Namespace{
		{Name: "jobs", Patterns: []string{"jobs.>"}, Rules: Rules{ConsumerMaxPending: 3, ConsumerMaxPendingBytes: 1 << 20}},
		{Name: "big", Patterns: []string{"big.>"}, Rules: Rules{ConsumerMaxPending: 500_000}},
	}})
	c := Caller{Client: "x"}
	open := func(name string, cfg consumer.Config) (consumer.Config, string) {
		t.Helper()
		cons, err := d.Consume(context.Background(), c, name, cfg)
		if err != nil {
			return consumer.Config{}, codeOf(err)
		}
		return cons.Config(), "ok"
	}
	for _, tc := range []struct {
		name, filter string
		ask          int
		askBytes     int64
		want         int
		wantBytes    int64
		code         string
	}{
		{"w1", "jobs.mail", 0, 0, 3, 1 << 20, "ok"},
		{"w2", "jobs.mail", 2, 0, 2, 1 << 20, "ok"},
		{"w3", "jobs.mail", 4, 0, 0, 0, "invalid_parameter"},
		{"w4", "jobs.mail", 0, 2 << 20, 0, 0, "invalid_parameter"},
		{"w5", ">", 0, 0, 3, 1 << 20, "ok"},      // can match jobs.*: bound
		{"w6", "jobs.*", 0, 0, 3, 1 << 20, "ok"}, // a pattern inside jobs
		{"w7", "news", 0, 0, consumer.DefaultMaxPending, consumer.DefaultMaxPendingBytes, "ok"},
		{"w8", "big.x", 0, 0, consumer.DefaultMaxPending, consumer.DefaultMaxPendingBytes, "ok"}, // a bound above the default is a ceiling
		{"w9", "big.x", 400_000, 0, 400_000, consumer.DefaultMaxPendingBytes, "ok"},
	} {
		got, code := open(tc.name, consumer.Config{Filter: tc.filter, MaxPending: tc.ask, MaxPendingBytes: tc.askBytes})
		if code != tc.code || (code == "ok" && (got.MaxPending != tc.want || got.MaxPendingBytes != tc.wantBytes)) {
			t.Errorf("%s on %s asking %d/%d: %s max_pending %d bytes %d; want %s %d %d",
				tc.name, tc.filter, tc.ask, tc.askBytes, code, got.MaxPending, got.MaxPendingBytes, tc.code, tc.want, tc.wantBytes)
		}
	}
	// An existing consumer is opened as it is.
	if got, code := open("w1", consumer.Config{Filter: "jobs.mail"}); code != "ok" || got.MaxPending != 3 {
		t.Errorf("reopening w1: %s %d", code, got.MaxPending)
	}
	if r := d.Rules("jobs.mail"); r.ConsumerMaxPending != 3 || r.ConsumerMaxPendingBytes != 1<<20 {
		t.Errorf("rules of jobs.mail: %+v", r)
	}
}
