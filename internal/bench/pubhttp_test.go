package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestHTTPPublisherKeepsAliveAndRedials: publishes go out on one
// connection while the broker keeps it open, on a new one after a reply
// that closes it, and replies of any framing (length, chunked) are read
// whole; every body arrives once, intact, on the path asked for, with the
// URL's user and password as basic authentication.
func TestHTTPPublisherKeepsAliveAndRedials(t *testing.T) {
	var mu sync.Mutex
	var got []string
	var conns atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		user, pass, _ := r.BasicAuth()
		if err != nil || r.Method != "POST" || r.URL.Path != "/prefix/pub/ch1" || r.Header.Get("Content-Type") != "text/plain" || user != "u" || pass != "p w" {
			http.Error(w, fmt.Sprintf("bad request %s %s %v", r.Method, r.URL.Path, err), 400)
			return
		}
		mu.Lock()
		got = append(got, string(b))
		n := len(got)
		mu.Unlock()
		switch n % 4 {
		case 0:
			w.Header().Set("Connection", "close")
			io.WriteString(w, `{"ok":true}`)
		case 1: // chunked
			io.WriteString(w, `{"ok":`)
			w.(http.Flusher).Flush()
			io.WriteString(w, `true}`)
		default:
			w.Header().Set("Content-Length", "11")
			io.WriteString(w, `{"ok":true}`)
		}
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()

	p, err := newHTTPPublisher(context.Background(), strings.Replace(srv.URL, "://", "://u:p%20w@", 1)+"/prefix/", "ch1")
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	const n = 20
	for i := range n {
		if err := p.publish([]byte(fmt.Sprintf("message %d", i))); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != n {
		t.Fatalf("broker got %d publishes, want %d: %q", len(got), n, got)
	}
	for i, g := range got {
		if want := fmt.Sprintf("message %d", i); g != want {
			t.Fatalf("publish %d arrived as %q, want %q", i, g, want)
		}
	}
	// A reply closing the connection every 4th publish: 5 connections.
	if c := conns.Load(); c != n/4+1 && c != n/4 {
		t.Fatalf("%d connections for %d publishes with a close every 4th, want %d", c, n, n/4+1)
	}
}

// TestHTTPPublisherErrors: a refusal, a connection dropped before the
// reply, an endless reply and a cancelled run are errors that say so;
// after each the next publish works.
func TestHTTPPublisherErrors(t *testing.T) {
	release, held := make(chan struct{}), make(chan struct{})
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.ReadAll(r.Body)
		switch b := calls.Add(1); b {
		case 1:
			http.Error(w, "no", http.StatusInternalServerError)
		case 3:
			c, _, err := http.NewResponseController(w).Hijack()
			if err == nil {
				c.Close()
			}
		case 5:
			w.Header().Set("Content-Type", "text/plain")
			chunk := strings.Repeat("y", 64<<10)
			for range 2 * maxPublishReply / len(chunk) {
				if _, err := io.WriteString(w, chunk); err != nil {
					return
				}
			}
		case 7:
			close(held)
			select {
			case <-release:
			case <-r.Context().Done():
			}
		default:
			io.WriteString(w, `{"ok":true}`)
		}
	}))
	defer srv.Close()
	defer close(release)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p, err := newHTTPPublisher(ctx, srv.URL, "c")
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	expect := func(step, want string) {
		t.Helper()
		err := p.publish([]byte("m"))
		if want == "" && err != nil || want != "" && (err == nil || !strings.Contains(err.Error(), want)) {
			t.Fatalf("%s: publish returned %v, want an error containing %q", step, err, want)
		}
	}
	expect("refused", "publish: HTTP 500")
	expect("after a refusal", "")
	expect("dropped", "connection closed before the reply")
	expect("after a drop", "")
	expect("endless reply", fmt.Sprintf("longer than %d bytes", maxPublishReply))
	expect("after an endless reply", "")

	errc := make(chan error, 1)
	go func() { errc <- p.publish([]byte("m")) }()
	select { // the broker holds the reply back
	case <-held:
	case err := <-errc:
		t.Fatalf("publish returned %v before the reply", err)
	}
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled publish returned %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a cancelled publish still waits for its reply")
	}
	if err := p.publish([]byte("m")); !errors.Is(err, context.Canceled) {
		t.Fatalf("publish after the run's end returned %v", err)
	}

	for _, bad := range []string{"ftp://127.0.0.1/", "http://", "http://[::1"} {
		if _, err := newHTTPPublisher(context.Background(), bad, "c"); err == nil {
			t.Fatalf("%q accepted", bad)
		}
	}
}
