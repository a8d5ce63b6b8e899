package cmdutil

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/pushctl/pushctl/internal/client"
	"github.com/pushctl/pushctl/internal/wire"
)

// Reconnects reports a subscription's lost connections at a rate people
// can read: the loss at once, then at most one line per Every while the
// broker stays away, and the recovery with how long it took. Connections
// that never existed are not reported here: the subscription ends with
// "cannot reach …" instead.
type Reconnects struct {
	W      io.Writer
	Prefix string        // "pushctl: "
	Every  time.Duration // default 30s
	Now    func() time.Time

	mu       sync.Mutex
	lostAt   time.Time
	lastLine time.Time
}

// Status is a client.SubscribeOptions.OnStatus.
func (r *Reconnects) Status(s client.Status) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now
	if r.Now != nil {
		now = r.Now
	}
	every := r.Every
	if every <= 0 {
		every = 30 * time.Second
	}
	t := now()
	if s.Err != nil {
		s.Err = SubscribeErr(s.Err)
	}
	switch s.State {
	case client.StateReconnecting:
		switch {
		case s.Attempt == 1:
			r.lostAt, r.lastLine = t, t
			fmt.Fprintf(r.W, "%sconnection lost (%v); reconnecting\n", r.Prefix, s.Err)
		case t.Sub(r.lastLine) >= every:
			r.lastLine = t
			fmt.Fprintf(r.W, "%sstill reconnecting after %s, %s (%v)\n", r.Prefix, t.Sub(r.lostAt).Round(time.Second), Plural(s.Attempt, "attempt"), s.Err)
		}
	case client.StateLive:
		if s.Attempt > 0 {
			fmt.Fprintf(r.W, "%sreconnected after %s, resuming after %s\n", r.Prefix, Plural(s.Attempt, "attempt"), s.Cursor)
		}
	}
}

// Plural is n and the noun, with an s unless n is 1: "1 message",
// "2 messages".
func Plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// SubscribeErr words a broker's refusal as it applies to subscribing: the
// broker's broker_unavailable message speaks of publishing ("nothing was
// published"), which a subscriber did not try.
func SubscribeErr(err error) error {
	var ae *client.APIError
	if errors.As(err, &ae) && ae.Code == wire.CodeUnavailable {
		return fmt.Errorf("the broker cannot reach its storage (Redis) (%s)", ae.Code)
	}
	return err
}
