package cmdutil

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/pushctl/pushctl/internal/client"
)

// TestReconnectsRateLimited: a long outage prints the loss, then at most
// one line per Every, then the recovery; not one line per attempt.
func TestReconnectsRateLimited(t *testing.T) {
	var buf bytes.Buffer
	now := time.Unix(0, 0)
	r := &Reconnects{W: &buf, Prefix: "pushctl: ", Every: 30 * time.Second, Now: func() time.Time { return now }}
	lost := errors.New("broker closed the stream")
	for a := 1; a <= 120; a++ { // ten minutes of attempts every 5s
		r.Status(client.Status{State: client.StateReconnecting, Attempt: a, Err: lost})
		now = now.Add(5 * time.Second)
	}
	r.Status(client.Status{State: client.StateLive, Attempt: 120, Cursor: "news=e-4"})
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 1+19+1 { // the loss, 30s … 9m30s, the recovery
		t.Fatalf("%d lines:\n%s", len(lines), buf.String())
	}
	if lines[0] != "pushctl: connection lost (broker closed the stream); reconnecting" ||
		lines[1] != "pushctl: still reconnecting after 30s, 7 attempts (broker closed the stream)" ||
		lines[len(lines)-1] != "pushctl: reconnected after 120 attempts, resuming after news=e-4" {
		t.Fatalf("lines:\n%s", buf.String())
	}
	buf.Reset()
	r.Status(client.Status{State: client.StateReconnecting, Attempt: 1, Err: &client.APIError{Status: 503, Code: "broker_unavailable", Message: "nothing was published"}})
	if got := buf.String(); got != "pushctl: connection lost (the broker cannot reach its storage (Redis) (broker_unavailable)); reconnecting\n" {
		t.Fatalf("%q", got)
	}
}

func TestPlural(t *testing.T) {
	if Plural(1, "channel") != "1 channel" || Plural(0, "channel") != "0 channels" || Plural(2, "subscriber") != "2 subscribers" {
		t.Fatal(Plural(1, "channel"), Plural(0, "channel"))
	}
}
