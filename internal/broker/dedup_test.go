package broker_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
)

// A key is remembered for DedupWindow: within it a publish is a
// duplicate, after it the same key is stored again.
func TestIdempotencyKeyWindow(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	b := broker.NewMemory(broker.MemoryOptions{Now: func() time.Time { return now }})
	t.Cleanup(func() { b.Close() })
	ctx := context.Background()
	publish := func(key string) *broker.Message {
		t.Helper()
		m, _, err := b.Publish(ctx, &broker.Message{Channel: "w", Data: []byte("x"), Key: key})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	first := publish("k")
	now = now.Add(broker.DedupWindow - time.Second)
	if m := publish("k"); !m.Duplicate || m.Seq != first.Seq {
		t.Fatalf("within the window: seq %d duplicate=%v", m.Seq, m.Duplicate)
	}
	now = now.Add(2 * time.Second)
	if m := publish("k"); m.Duplicate || m.Seq != first.Seq+1 {
		t.Fatalf("after the window: seq %d duplicate=%v", m.Seq, m.Duplicate)
	}
	// A deleted channel forgets its keys with its history.
	if err := b.DeleteChannel(ctx, "w"); err != nil {
		t.Fatal(err)
	}
	if m := publish("k"); m.Duplicate || m.Seq != 1 {
		t.Fatalf("after a delete: seq %d duplicate=%v", m.Seq, m.Duplicate)
	}
}

func TestValidateKey(t *testing.T) {
	for _, k := range []string{"a", "order-17", strings.Repeat("x", broker.MaxKeyLen), "~!#"} {
		if err := broker.ValidateKey(k); err != nil {
			t.Errorf("%q: %v", k, err)
		}
	}
	for _, k := range []string{"", "a b", "tab\t", "é", strings.Repeat("x", broker.MaxKeyLen+1), "nul\x00", "del\x7f"} {
		if err := broker.ValidateKey(k); err == nil {
			t.Errorf("%q accepted", k)
		}
	}
}
