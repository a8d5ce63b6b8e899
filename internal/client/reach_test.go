package client_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pushctl/pushctl/internal/client"
)

// closedURL is a loopback address nothing listens on.
func closedURL(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return "http://" + addr
}

// TestSubscribeNeverAnswered: a broker that never answered ends the
// subscription with an UnreachableError after ConnectTimeout, also when
// the caller's deadline comes first, and reports no reconnects.
func TestSubscribeNeverAnswered(t *testing.T) {
	url := closedURL(t)
	c, err := client.New(url)
	if err != nil {
		t.Fatal(err)
	}
	var statuses []client.State
	o := client.SubscribeOptions{Channels: []string{"x"}, ConnectTimeout: 300 * time.Millisecond,
		OnStatus: func(s client.Status) { statuses = append(statuses, s.State) }}
	err = c.Subscribe(context.Background(), o, func(client.Event) error { return nil })
	var ue *client.UnreachableError
	if !errors.As(err, &ue) || !errors.Is(err, client.ErrUnreachable) || err.Error() != "cannot reach "+url+" (connection refused)" {
		t.Fatalf("error %v", err)
	}
	for _, s := range statuses {
		if s != client.StateConnecting {
			t.Fatalf("statuses %v: a connection that never existed was reported", statuses)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	o.ConnectTimeout = time.Minute
	err = c.Subscribe(ctx, o, func(client.Event) error { return nil })
	if !errors.Is(err, client.ErrUnreachable) || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("deadline before any answer: %v", err)
	}
}

// TestSubscribeTokenExpired: token_expired ends the subscription unless
// RefreshToken gives a new token; then it reconnects with that token.
func TestSubscribeTokenExpired(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		if r.Header.Get("Authorization") != "Bearer fresh" {
			w.Header().Set("Content-Type", "application/x-ndjson")
			w.Write([]byte(`{"type":"error","code":"token_expired","message":"the token expired"}` + "\n"))
			return
		}
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.Write([]byte(`{"type":"message","channel":"x","id":"e-1","seq":1,"event":"message","data":"hi","time":"2026-01-01T00:00:00Z"}` + "\n"))
	}))
	defer srv.Close()
	c, err := client.NewWithOptions(srv.URL, client.Options{Token: "old"})
	if err != nil {
		t.Fatal(err)
	}
	err = c.Subscribe(context.Background(), client.SubscribeOptions{Channels: []string{"x"}}, func(client.Event) error { return nil })
	if !client.IsTokenExpired(err) || calls.Load() != 1 {
		t.Fatalf("without RefreshToken: %v after %d requests", err, calls.Load())
	}
	var got string
	err = c.Subscribe(context.Background(), client.SubscribeOptions{Channels: []string{"x"},
		RefreshToken: func(context.Context) (string, error) { return "fresh", nil }},
		func(ev client.Event) error { got = string(ev.Msg.Data); return client.ErrStop })
	if err != nil || got != "hi" {
		t.Fatalf("with RefreshToken: %v %q", err, got)
	}
	c.SetToken("old")
	err = c.Subscribe(context.Background(), client.SubscribeOptions{Channels: []string{"x"},
		RefreshToken: func(context.Context) (string, error) { return "", errors.New("vault sealed") }},
		func(client.Event) error { return nil })
	var re *client.TokenRefreshError
	if !errors.As(err, &re) || !strings.Contains(err.Error(), "vault sealed") {
		t.Fatalf("failing RefreshToken: %v", err)
	}
}
