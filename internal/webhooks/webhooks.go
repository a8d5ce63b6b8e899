// Package webhooks POSTs lifecycle events (internal/events) to the
// application: JSON bodies {"time_ms":…,"events":[…]} as Pusher's
// webhooks have them, signed like the hooks (header Pushctl-Signature),
// batched, sent one body at a time per URL so that each channel's events
// arrive in order, and retried with back-off for a bounded time from a
// bounded queue. What is dropped (the queue full, or a body the endpoint
// did not take within the retry window) is counted and logged.
//
// channel_vacated and member_removed wait a delay first; a
// channel_occupied (a member_added of the same user) within it cancels
// the pair, so a quick reconnect is no event. The channel's later events
// wait behind the delayed one, keeping the order.
package webhooks

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pushctl/pushctl/internal/events"
	"github.com/pushctl/pushctl/internal/hooks"
)

// Defaults.
const (
	DefaultDelay     = 3 * time.Second
	DefaultRetry     = time.Minute
	DefaultQueueSize = 10000
	// MaxBatch is the most events one body carries.
	MaxBatch = 100
)

// Config configures one webhook URL's sender.
type Config struct {
	URL string
	// Secret signs the bodies (Pushctl-Signature); empty: unsigned.
	Secret []byte
	// Delay holds channel_vacated and member_removed back (<0: none; 0:
	// DefaultDelay).
	Delay time.Duration
	// Retry is how long a body is tried again before its events are
	// dropped (0: DefaultRetry).
	Retry time.Duration
	// QueueSize bounds the events waiting (0: DefaultQueueSize).
	QueueSize int
	// Timeout bounds one POST (default 5s).
	Timeout time.Duration
	// Wants says which events go to this URL (nil: all).
	Wants func(ev *events.Event) bool
	// Done, when set, is told of every event given to Send once it has
	// left the queue for good: delivered, cancelled by its pair, dropped
	// or not wanted (the Relay's positions). It is called without the
	// sender's lock, from Send or from the sending goroutine.
	Done func(evs []events.Event)
	// Before, when set, is asked before each POST; an error holds the
	// body back (not counted as a failed attempt) and it is asked again
	// after back-off (the Relay's lease check).
	Before func(ctx context.Context) error
	// Encode, when set, makes the body of a batch and the headers that
	// sign it (a Pusher app's webhooks: Pusher's events, X-Pusher-Key and
	// X-Pusher-Signature); Wants must then let through only events it
	// can encode. nil: Body, signed with Secret (Pushctl-Signature).
	Encode  func(evs []events.Event, now time.Time) (body []byte, header http.Header)
	Logger  *slog.Logger
	Metrics *Metrics
}

// Metrics are the senders' counters, shared by every URL.
type Metrics struct {
	delivered prometheus.Counter
	dropped   *prometheus.CounterVec
	failed    prometheus.Counter
}

// NewMetrics returns the counters, for /metrics.
func NewMetrics() *Metrics {
	return &Metrics{
		delivered: prometheus.NewCounter(prometheus.CounterOpts{Name: "pushctl_webhook_events_delivered_total",
			Help: "Lifecycle events a webhook endpoint took (2xx)."}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pushctl_webhook_events_dropped_total",
			Help: "Lifecycle events never delivered to a webhook: queue_full (the bounded queue was full), expired (not taken within the retry window)."}, []string{"reason"}),
		failed: prometheus.NewCounter(prometheus.CounterOpts{Name: "pushctl_webhook_attempts_failed_total",
			Help: "Webhook POSTs that failed (and were retried unless expired)."}),
	}
}

// Collectors are the metrics' collectors.
func (m *Metrics) Collectors() []prometheus.Collector {
	if m == nil {
		return nil
	}
	return []prometheus.Collector{m.delivered, m.dropped, m.failed}
}

// CheckURL checks a webhook URL.
func CheckURL(u string) error {
	p, err := url.Parse(u)
	if err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
		return fmt.Errorf("%q: want an http:// or https:// URL", u)
	}
	return nil
}

// hostOf is the host of a webhook URL, for logs (its path or query may
// hold a secret).
func hostOf(u string) string {
	if p, err := url.Parse(u); err == nil {
		return p.Host
	}
	return "(unparsable URL)"
}

// Sender sends one URL's webhooks.
type Sender struct {
	cfg    Config
	host   string // for logs: the URL's host only (its path or query may hold a secret)
	client *http.Client

	mu      sync.Mutex
	q       []entry
	ids     uint64 // the last entry's id
	closed  bool
	wake    chan struct{}
	ctx     context.Context
	cancel  context.CancelFunc
	done    chan struct{}
	warned  bool // a drop was logged since the last delivery
	dropped uint64
	room    chan struct{} // signalled when entries leave the queue
	aborted atomic.Bool
}

type entry struct {
	id    uint64 // names it while a post runs unlocked (the queue may shift)
	ev    events.Event
	added time.Time
	due   time.Time // zero: at once
}

// New starts a sender.
func New(cfg Config) *Sender {
	if cfg.Delay == 0 {
		cfg.Delay = DefaultDelay
	}
	if cfg.Retry <= 0 {
		cfg.Retry = DefaultRetry
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = DefaultQueueSize
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics()
	}
	host := hostOf(cfg.URL)
	ctx, cancel := context.WithCancel(context.Background())
	tr := &http.Transport{Proxy: nil, DialContext: (&net.Dialer{Timeout: cfg.Timeout}).DialContext, MaxIdleConnsPerHost: 2}
	s := &Sender{cfg: cfg, host: host, wake: make(chan struct{}, 1), room: make(chan struct{}, 1), ctx: ctx, cancel: cancel, done: make(chan struct{}),
		client: &http.Client{Transport: tr, Timeout: cfg.Timeout, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
	go s.run()
	return s
}

// delayed reports whether ev waits the delay.
func delayed(ev *events.Event) bool {
	return ev.Name == events.ChannelVacated || ev.Name == events.MemberRemoved
}

// undoes reports whether b cancels a delayed a.
func undoes(a, b *events.Event) bool {
	switch {
	case a.Name == events.ChannelVacated && b.Name == events.ChannelOccupied:
		return a.Channel == b.Channel
	case a.Name == events.MemberRemoved && b.Name == events.MemberAdded:
		return a.Channel == b.Channel && a.UserID == b.UserID
	}
	return false
}

// Send queues ev (the events.Sink of this URL).
func (s *Sender) Send(ev events.Event) {
	if s.cfg.Wants != nil && !s.cfg.Wants(&ev) {
		s.tell(ev)
		return
	}
	now := time.Now()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	for i := len(s.q) - 1; i >= 0; i-- {
		if e := &s.q[i]; e.due.After(now) && undoes(&e.ev, &ev) {
			gone := e.ev
			s.q = append(s.q[:i], s.q[i+1:]...)
			s.mu.Unlock()
			s.tell(gone, ev)
			s.signalRoom()
			return
		}
	}
	if len(s.q) >= s.cfg.QueueSize {
		s.drop("queue_full", 1, ev.Name)
		s.mu.Unlock()
		s.tell(ev)
		return
	}
	defer s.mu.Unlock()
	s.ids++
	e := entry{id: s.ids, ev: ev, added: now}
	if delayed(&ev) && s.cfg.Delay > 0 {
		e.due = now.Add(s.cfg.Delay)
	}
	s.q = append(s.q, e)
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// tell tells cfg.Done of events gone from the queue; s.mu is not held.
func (s *Sender) tell(evs ...events.Event) {
	if s.cfg.Done != nil && len(evs) > 0 {
		s.cfg.Done(evs)
	}
}

// signalRoom wakes a WaitRoom.
func (s *Sender) signalRoom() {
	select {
	case s.room <- struct{}{}:
	default:
	}
}

// WaitRoom returns once the queue has room for an event, or ctx's error
// (or an error once the sender is closed).
func (s *Sender) WaitRoom(ctx context.Context) error {
	for {
		s.mu.Lock()
		n, closed := len(s.q), s.closed
		s.mu.Unlock()
		if closed {
			return errors.New("webhook sender closed")
		}
		if n < s.cfg.QueueSize {
			return nil
		}
		select {
		case <-s.room:
		case <-ctx.Done():
			return ctx.Err()
		case <-s.ctx.Done():
			return errors.New("webhook sender closed")
		}
	}
}

// drop counts n events dropped; s.mu is held.
func (s *Sender) drop(reason string, n int, name string) {
	s.cfg.Metrics.dropped.WithLabelValues(reason).Add(float64(n))
	s.dropped += uint64(n)
	if !s.warned || reason == "expired" {
		s.warned = true
		s.cfg.Logger.Warn("webhook events dropped", "host", s.host, "reason", reason, "events", n, "event", name, "dropped_total", s.dropped)
	}
}

// next picks the next body: queued events that are due, in order,
// skipping every event of a channel behind one still waiting its delay.
// It returns their indexes, and how long until a waiting one is due.
func (s *Sender) next(now time.Time) ([]int, time.Duration) {
	var take []int
	wait := time.Duration(-1)
	var blocked map[string]bool
	for i := range s.q {
		e := &s.q[i]
		key := e.ev.EventChannel()
		if blocked[key] {
			continue
		}
		if e.due.After(now) {
			if blocked == nil {
				blocked = map[string]bool{}
			}
			blocked[key] = true
			if w := e.due.Sub(now); wait < 0 || w < wait {
				wait = w
			}
			continue
		}
		take = append(take, i)
		if len(take) == MaxBatch {
			break
		}
	}
	return take, wait
}

// remove deletes the entries of the (ascending) ids, wherever they are
// now (a cancel may have taken an entry out before them while their body
// was posted); s.mu is held.
func (s *Sender) remove(ids []uint64) {
	j, k := 0, 0
	for i := range s.q {
		for k < len(ids) && ids[k] < s.q[i].id {
			k++ // already gone
		}
		if k < len(ids) && ids[k] == s.q[i].id {
			k++
			continue
		}
		s.q[j] = s.q[i]
		j++
	}
	clear(s.q[j:])
	s.q = s.q[:j]
}

func (s *Sender) run() {
	defer close(s.done)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	backoff := time.Duration(0)
	for {
		if s.aborted.Load() {
			return
		}
		s.mu.Lock()
		now := time.Now()
		if s.closed {
			for i := range s.q {
				s.q[i].due = time.Time{} // closing: the delayed go now
			}
		}
		idx, wait := s.next(now)
		batch := make([]events.Event, len(idx))
		ids := make([]uint64, len(idx))
		oldest := now
		for i, x := range idx {
			batch[i], ids[i] = s.q[x].ev, s.q[x].id
			if s.q[x].added.Before(oldest) {
				oldest = s.q[x].added
			}
		}
		closed := s.closed
		s.mu.Unlock()
		if len(batch) > 0 {
			if s.cfg.Before != nil {
				if err := s.cfg.Before(s.ctx); err != nil {
					// Not ours to send now (the lease is another's):
					// held back, not counted, asked again later.
					s.cfg.Logger.Debug("webhook held back", "host", s.host, "err", err)
					backoff = min(max(2*backoff, 100*time.Millisecond), time.Second)
					select {
					case <-time.After(backoff):
					case <-s.ctx.Done():
						if s.aborted.Load() {
							return
						}
					}
					continue
				}
			}
			err := s.post(batch)
			if s.aborted.Load() {
				return // whatever happened, another node takes it from here
			}
			s.mu.Lock()
			gone := false
			switch {
			case err == nil:
				s.cfg.Metrics.delivered.Add(float64(len(batch)))
				s.remove(ids)
				s.warned = false
				backoff = 0
				gone = true
			case closed || time.Since(oldest) >= s.cfg.Retry:
				s.cfg.Metrics.failed.Inc()
				s.drop("expired", len(batch), batch[0].Name)
				s.cfg.Logger.Warn("webhook not delivered within the retry window", "host", s.host, "events", len(batch), "err", err)
				s.remove(ids)
				gone = true
			default:
				s.cfg.Metrics.failed.Inc()
				backoff = min(max(2*backoff, 100*time.Millisecond), 5*time.Second)
				s.cfg.Logger.Debug("webhook failed; retrying", "host", s.host, "in", backoff, "err", err)
			}
			s.mu.Unlock()
			if gone {
				s.tell(batch...)
				s.signalRoom()
			}
			if err == nil {
				continue
			}
			if !closed && time.Since(oldest) < s.cfg.Retry {
				select {
				case <-time.After(backoff):
				case <-s.ctx.Done():
				}
			}
			continue
		}
		if closed || s.aborted.Load() {
			return
		}
		if wait < 0 {
			wait = time.Hour
		}
		timer.Reset(wait)
		select {
		case <-s.wake:
		case <-timer.C:
		case <-s.ctx.Done():
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

// Body is a webhook body: {"time_ms":…,"events":[…]}.
func Body(evs []events.Event, now time.Time) []byte {
	body, _ := json.Marshal(struct {
		TimeMs int64          `json:"time_ms"`
		Events []events.Event `json:"events"`
	}{now.UnixMilli(), evs})
	return body
}

func (s *Sender) post(evs []events.Event) error {
	now := time.Now()
	var body []byte
	var header http.Header
	if s.cfg.Encode != nil {
		body, header = s.cfg.Encode(evs, now)
	} else {
		body = Body(evs, now)
		if len(s.cfg.Secret) > 0 {
			header = http.Header{hooks.SignatureHeader: {hooks.Sign(s.cfg.Secret, now, body)}}
		}
	}
	req, err := http.NewRequestWithContext(s.ctx, http.MethodPost, s.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "pushctl-webhook")
	for k, v := range header {
		req.Header[http.CanonicalHeaderKey(k)] = v
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode >= 300 {
		return fmt.Errorf("the endpoint answered %s", resp.Status)
	}
	return nil
}

// Abort stops the sender at once: what is queued is not sent, nor told
// to Done (a Relay whose lease is lost leaves it to the next holder). A
// POST under way is cancelled.
func (s *Sender) Abort() {
	s.aborted.Store(true)
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	<-s.done
}

// Close sends what is queued (the delayed events at once), trying each
// body once more at most, and stops.
func (s *Sender) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	select {
	case <-s.done:
	case <-time.After(2 * s.cfg.Timeout):
		s.cancel()
		<-s.done
	}
	s.cancel()
}
