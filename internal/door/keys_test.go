package door

import (
	"context"
	"testing"

	"github.com/golang-jwt/jwt/v5"

	"github.com/pushctl/pushctl/internal/auth"
	"github.com/pushctl/pushctl/internal/broker"
)

// Idempotency keys are the publisher's: a key another token's subject
// used does not make a publish a duplicate (nobody can suppress another's
// message by guessing its key), the same subject's does, and callers
// without a token share one scope.
func TestIdempotencyKeysAreThePublishers(t *testing.T) {
	b := broker.NewMemory(broker.MemoryOptions{})
	t.Cleanup(func() { b.Close() })
	d := New(b, Config{})
	as := func(sub string) Caller {
		return Caller{Client: "x", ID: &auth.Identity{Claims: &auth.Claims{RegisteredClaims: jwt.RegisteredClaims{Subject: sub}}}}
	}
	publish := func(c Caller, key string) *broker.Message {
		t.Helper()
		m, _, err := d.Publish(context.Background(), c, &broker.Message{Channel: "deploys", Data: []byte("x"), Key: key})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	first := publish(as("ci"), "deploy-42")
	if m := publish(as("mallory"), "deploy-42"); m.Duplicate {
		t.Fatal("another subject's key made a publish a duplicate")
	}
	if m := publish(as("ci"), "deploy-42"); !m.Duplicate || m.ID() != first.ID() {
		t.Fatalf("the same subject again: %s duplicate=%v", m.ID(), m.Duplicate)
	}
	anon := publish(Caller{Client: "y"}, "deploy-42")
	if anon.Duplicate {
		t.Fatal("a caller without a token shares the token holder's scope")
	}
	if m := publish(Caller{Client: "z"}, "deploy-42"); !m.Duplicate || m.ID() != anon.ID() {
		t.Fatalf("callers without a token: %s duplicate=%v", m.ID(), m.Duplicate)
	}
	if _, _, err := d.Publish(context.Background(), as("ci"), &broker.Message{Channel: "deploys", Data: []byte("x"), Key: "has space"}); codeOf(err) != "invalid_parameter" {
		t.Fatalf("an invalid key: %v", err)
	}
}
