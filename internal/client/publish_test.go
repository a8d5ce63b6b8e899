package client_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pushctl/pushctl/internal/client"
)

// outcomeServer answers publishes like a node whose Redis stalled: 503
// outcome_unknown for the first fail requests, then an ack; it records
// each request's idempotency key and body.
type outcomeServer struct {
	mu     sync.Mutex
	fail   int
	keys   []string
	bodies []string
}

func (s *outcomeServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	s.mu.Lock()
	s.keys = append(s.keys, r.Header.Get("Idempotency-Key"))
	s.bodies = append(s.bodies, string(body))
	n := len(s.keys)
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	if n <= s.fail {
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, `{"error":{"code":"outcome_unknown","message":"the broker's storage (Redis) did not answer in time"}}`)
		return
	}
	io.WriteString(w, `{"channel":"c","id":"e-1","seq":1,"duplicate":true}`)
}

// TestKeyedPublishRetriesAnUnknownOutcome: a keyed publish answered 503
// outcome_unknown is sent again with the same key and body until the
// broker answers (it stores a key once, so this cannot store it twice); an
// unkeyed one is not (it could be), and the retries end.
func TestKeyedPublishRetriesAnUnknownOutcome(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	s := &outcomeServer{fail: 2}
	srv := httptest.NewServer(s)
	defer srv.Close()
	c, err := client.New(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	ack, err := c.Publish(ctx, "c", []byte("once"), client.PublishOptions{Key: "k1"})
	if err != nil {
		t.Fatalf("keyed publish: %v", err)
	}
	if !ack.Duplicate || ack.Seq != 1 {
		t.Fatalf("ack %+v", ack)
	}
	if strings.Join(s.keys, ",") != "k1,k1,k1" || strings.Join(s.bodies, ",") != "once,once,once" {
		t.Fatalf("requests: keys %q bodies %q", s.keys, s.bodies)
	}

	u := &outcomeServer{fail: 1}
	srv2 := httptest.NewServer(u)
	defer srv2.Close()
	c2, err := client.New(srv2.URL)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c2.Publish(ctx, "c", []byte("x"), client.PublishOptions{}); err == nil || !strings.Contains(err.Error(), "outcome_unknown") {
		t.Fatalf("unkeyed publish: %v, want the outcome_unknown error", err)
	}
	if len(u.keys) != 1 {
		t.Fatalf("an unkeyed publish was sent %d times", len(u.keys))
	}

	f := &outcomeServer{fail: 100}
	srv3 := httptest.NewServer(f)
	defer srv3.Close()
	c3, err := client.New(srv3.URL)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c3.Publish(ctx, "c", []byte("x"), client.PublishOptions{Key: "k"}); err == nil || !strings.Contains(err.Error(), "outcome_unknown") {
		t.Fatalf("publish never answered: %v, want outcome_unknown", err)
	}
	if len(f.keys) != 4 {
		t.Fatalf("a publish never answered was sent %d times, want 4", len(f.keys))
	}
}
