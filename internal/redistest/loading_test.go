package redistest

import (
	"strings"
	"testing"
	"time"
)

// A server restarted by RestartLoading refuses commands with LOADING for
// a while, then has its data (the ballast and what was there before).
func TestRestartLoading(t *testing.T) {
	s := Start(t, Options{AOF: true})
	if reply, err := s.command("SET", "k", "v"); reply != "+OK" {
		t.Fatal(err)
	}
	s.Ballast(30000)
	start := time.Now()
	s.RestartLoading()
	if reply, _ := s.command("GET", "k"); !strings.HasPrefix(reply, "-LOADING") {
		t.Fatalf("GET while loading: %q", reply)
	}
	if err := s.WaitLoaded(60 * time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("loading took %v", time.Since(start))
	for k, want := range map[string]string{"k": "$1", "redistest:ballast:30000": "$1"} {
		if reply, err := s.command("GET", k); err != nil || reply != want {
			t.Fatalf("GET %s after loading: %q %v", k, reply, err)
		}
	}
}

// Busy makes Redis answer BUSY until stopped.
func TestBusy(t *testing.T) {
	s := Start(t, Options{})
	stop := s.Busy()
	if reply, _ := s.command("GET", "k"); !strings.HasPrefix(reply, "-BUSY ") {
		t.Fatalf("GET while busy: %q", reply)
	}
	stop()
	if reply, err := s.command("PING"); reply != "+PONG" {
		t.Fatalf("PING after stop: %q %v", reply, err)
	}
}
