package backend

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/redistest"
)

// TestOpenEveryKind: one constructor opens each kind, and each keeps what
// its spec says (a namespace's retention included).
func TestOpenEveryKind(t *testing.T) {
	rs := redistest.Start(t, redistest.Options{})
	few := func(ch string) (broker.Retention, bool) {
		return broker.Retention{HistorySize: 2}, strings.HasPrefix(ch, "few.")
	}
	for _, c := range []struct {
		spec Spec
		kind string
	}{
		{Spec{}, Memory},
		{Spec{URL: "memory", Dir: t.TempDir()}, Bolt},
		{Spec{URL: rs.URL()}, Redis},
	} {
		c.spec.RetentionFor = few
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		op, err := Open(ctx, c.spec)
		cancel()
		if err != nil {
			t.Fatalf("%s: %v", c.kind, err)
		}
		if op.Kind != c.kind {
			t.Errorf("%+v opened %s, want %s", c.spec, op.Kind, c.kind)
		}
		for i := 0; i < 5; i++ {
			if _, _, err := op.Broker.Publish(context.Background(), &broker.Message{Channel: "few.a", Data: []byte("x")}); err != nil {
				t.Fatal(err)
			}
		}
		info, err := op.Broker.Channel(context.Background(), "few.a")
		if err != nil || info.Messages != 2 {
			t.Errorf("%s: few.a keeps %d messages (%v), want 2", c.kind, info.Messages, err)
		}
		if (op.Counters != nil) != (c.kind == Redis) {
			t.Errorf("%s: counters %v", c.kind, op.Counters != nil)
		}
		op.Broker.Close()
	}
	for _, bad := range []Spec{
		{URL: "redis://x:1/0", Dir: "/tmp"},
		{URL: "redis://x:1/0", MaxBytes: 1},
		{URL: "nats://x"},
	} {
		if _, err := Kind(bad); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
	if got := Redacted("redis://u:secret@h:1/0"); strings.Contains(got, "secret") {
		t.Errorf("Redacted: %s", got)
	}
}
