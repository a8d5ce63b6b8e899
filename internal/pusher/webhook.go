package pusher

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"
)

// WebhookEvent is one event of a webhook body.
type WebhookEvent struct {
	Name              string `json:"name"`
	Channel           string `json:"channel"`
	Event             string `json:"event,omitempty"`
	Data              string `json:"data,omitempty"`
	SocketID          string `json:"socket_id,omitempty"`
	UserID            string `json:"user_id,omitempty"`
	SubscriptionCount int    `json:"subscription_count,omitempty"`
}

// Sender POSTs an app's webhooks: events gathered for a moment go in one
// body {time_ms, events}, signed with X-Pusher-Key and X-Pusher-Signature
// (the hex HMAC-SHA256 of the body with the app's secret), retried with
// back-off. channel_vacated and member_removed wait delay first, like
// Pusher's, and are dropped with the channel_occupied or member_added
// that undoes them within it (a quick reconnect is no event).
type Sender struct {
	app    App
	delay  time.Duration
	log    *slog.Logger
	client *http.Client

	mu      sync.Mutex
	closed  bool
	ready   []WebhookEvent
	delayed []delayedEvent
	wake    chan struct{}
	ctx     context.Context
	cancel  context.CancelFunc
	done    chan struct{}
}

type delayedEvent struct {
	ev  WebhookEvent
	due time.Time
}

// Attempts is how many times a webhook body is tried.
const Attempts = 5

// NewSender starts an app's webhook sender (delay 0: Pusher's 3 s; <0 none).
func NewSender(app App, delay time.Duration, log *slog.Logger) *Sender {
	if delay == 0 {
		delay = 3 * time.Second
	}
	if delay < 0 {
		delay = 0
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Sender{app: app, delay: delay, log: log, client: &http.Client{Timeout: 10 * time.Second},
		wake: make(chan struct{}, 1), ctx: ctx, cancel: cancel, done: make(chan struct{})}
	go s.run()
	return s
}

// undoes reports whether b cancels a delayed a.
func undoes(a, b WebhookEvent) bool {
	switch {
	case a.Name == "channel_vacated" && b.Name == "channel_occupied":
		return a.Channel == b.Channel
	case a.Name == "member_removed" && b.Name == "member_added":
		return a.Channel == b.Channel && a.UserID == b.UserID
	}
	return false
}

// Send queues an event.
func (s *Sender) Send(ev WebhookEvent) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	for i, d := range s.delayed {
		if undoes(d.ev, ev) {
			s.delayed = append(s.delayed[:i], s.delayed[i+1:]...)
			return
		}
	}
	if (ev.Name == "channel_vacated" || ev.Name == "member_removed") && s.delay > 0 {
		s.delayed = append(s.delayed, delayedEvent{ev, time.Now().Add(s.delay)})
	} else {
		s.ready = append(s.ready, ev)
	}
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Close sends what is queued (delayed events at once) and stops.
func (s *Sender) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	for _, d := range s.delayed {
		s.ready = append(s.ready, d.ev)
	}
	s.delayed = nil
	close(s.wake)
	s.mu.Unlock()
	<-s.done
	s.cancel()
}

func (s *Sender) run() {
	defer close(s.done)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	open := true
	for {
		s.mu.Lock()
		now := time.Now()
		next := time.Duration(-1)
		kept := s.delayed[:0]
		for _, d := range s.delayed {
			if !d.due.After(now) {
				s.ready = append(s.ready, d.ev)
			} else {
				kept = append(kept, d)
				if w := d.due.Sub(now); next < 0 || w < next {
					next = w
				}
			}
		}
		s.delayed = kept
		batch := s.ready
		s.ready = nil
		s.mu.Unlock()
		for len(batch) > 0 {
			n := min(len(batch), 100)
			s.post(batch[:n])
			batch = batch[n:]
		}
		if !open {
			return
		}
		if next < 0 {
			next = time.Hour
		}
		timer.Reset(next)
		select {
		case _, ok := <-s.wake:
			open = ok
		case <-timer.C:
		}
	}
}

// WebhookBody returns a webhook body and its signature.
func (a *App) WebhookBody(events []WebhookEvent, now time.Time) ([]byte, string) {
	body, _ := json.Marshal(struct {
		TimeMs int64          `json:"time_ms"`
		Events []WebhookEvent `json:"events"`
	}{now.UnixMilli(), events})
	return body, Sign(a.Secret, string(body))
}

func (s *Sender) post(events []WebhookEvent) {
	body, sig := s.app.WebhookBody(events, time.Now())
	for _, url := range s.app.Webhooks {
		backoff := 200 * time.Millisecond
		for attempt := 1; ; attempt++ {
			err := s.postOnce(url, body, sig)
			if err == nil {
				break
			}
			if attempt == Attempts {
				s.log.Warn("webhook not delivered", "app", s.app.ID, "url", url, "events", len(events), "err", err)
				break
			}
			select {
			case <-time.After(backoff):
			case <-s.ctx.Done():
				return
			}
			backoff *= 2
		}
	}
}

func (s *Sender) postOnce(url string, body []byte, sig string) error {
	req, err := http.NewRequestWithContext(s.ctx, "POST", url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Pusher-Key", s.app.Key)
	req.Header.Set("X-Pusher-Signature", sig)
	resp, err := s.client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode >= 300 {
		return fmt.Errorf("the endpoint answered %s", resp.Status)
	}
	return nil
}
