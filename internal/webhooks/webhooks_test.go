package webhooks

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/pushctl/pushctl/internal/events"
	"github.com/pushctl/pushctl/internal/hooks"
)

// endpoint records the events of valid bodies; status decides the answer.
type endpoint struct {
	t      *testing.T
	srv    *httptest.Server
	mu     sync.Mutex
	got    []string
	status int
	more   chan struct{}
}

func newEndpoint(t *testing.T) *endpoint {
	ep := &endpoint{t: t, status: 200, more: make(chan struct{}, 1)}
	ep.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		ep.mu.Lock()
		defer ep.mu.Unlock()
		if ep.status != 200 {
			w.WriteHeader(ep.status)
			return
		}
		if err := hooks.Verify([]byte("s"), r.Header.Get(hooks.SignatureHeader), body, time.Now()); err != nil {
			t.Errorf("signature: %v", err)
		}
		var b struct {
			TimeMs int64          `json:"time_ms"`
			Events []events.Event `json:"events"`
		}
		if err := json.Unmarshal(body, &b); err != nil || b.TimeMs == 0 {
			t.Errorf("body %s: %v", body, err)
		}
		for _, ev := range b.Events {
			ep.got = append(ep.got, ev.Name+":"+ev.Channel)
		}
		select {
		case ep.more <- struct{}{}:
		default:
		}
	}))
	t.Cleanup(ep.srv.Close)
	return ep
}

func (ep *endpoint) wait(n int) string {
	ep.t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		ep.mu.Lock()
		got := strings.Join(ep.got, " ")
		c := len(ep.got)
		ep.mu.Unlock()
		if c >= n {
			return got
		}
		select {
		case <-ep.more:
		case <-deadline:
			ep.t.Fatalf("%d events within 10s, want %d: %s", c, n, got)
		}
	}
}

func ev(name, ch string) events.Event { return events.Event{Name: name, Channel: ch} }

// A vacated waits the delay; an occupied within it cancels both; the
// channel's events behind a waiting vacated wait too, other channels'
// do not.
func TestDelayCancelsThePairAndKeepsTheOrder(t *testing.T) {
	ep := newEndpoint(t)
	s := New(Config{URL: ep.srv.URL, Secret: []byte("s"), Delay: 300 * time.Millisecond})
	defer s.Close()
	s.Send(ev(events.ChannelOccupied, "a"))
	s.Send(ev(events.Unsubscribed, "a"))
	s.Send(ev(events.ChannelVacated, "a"))
	s.Send(ev(events.ChannelOccupied, "a")) // cancels the vacated, and is not sent
	s.Send(ev(events.Subscribed, "a"))
	if got := ep.wait(3); got != "channel_occupied:a unsubscribed:a subscribed:a" {
		t.Fatalf("with a reconnect in the delay: %s", got)
	}
	s.Send(ev(events.ChannelVacated, "a"))
	s.Send(ev(events.Subscribed, "a")) // behind the waiting vacated
	s.Send(ev(events.Subscribed, "b")) // another channel: at once
	if got := ep.wait(4); got != "channel_occupied:a unsubscribed:a subscribed:a subscribed:b" {
		t.Fatalf("b first: %s", got)
	}
	if got := ep.wait(6); got != "channel_occupied:a unsubscribed:a subscribed:a subscribed:b channel_vacated:a subscribed:a" {
		t.Fatalf("a's order: %s", got)
	}
}

// Events wait while the endpoint fails and go, in order, once it is
// back; past the queue bound they are dropped and counted, and so are
// those not delivered within the retry window.
func TestRetryQueueBoundAndExpiry(t *testing.T) {
	ep := newEndpoint(t)
	ep.status = 503
	m := NewMetrics()
	s := New(Config{URL: ep.srv.URL, Secret: []byte("s"), Delay: -1, QueueSize: 3, Retry: time.Minute, Metrics: m})
	defer s.Close()
	for _, ch := range []string{"1", "2", "3", "4", "5"} {
		s.Send(ev(events.Subscribed, ch))
	}
	if n := value(m.dropped.WithLabelValues("queue_full")); n != 2 {
		t.Fatalf("queue_full drops %v, want 2", n)
	}
	deadline := time.Now().Add(10 * time.Second)
	for value(m.failed) < 3 && time.Now().Before(deadline) {
		select {
		case <-time.After(20 * time.Millisecond):
		}
	}
	ep.mu.Lock()
	ep.status = 200
	ep.mu.Unlock()
	if got := ep.wait(3); got != "subscribed:1 subscribed:2 subscribed:3" {
		t.Fatalf("after the endpoint came back: %s", got)
	}

	// Down for longer than the retry window: dropped as expired.
	ep2 := newEndpoint(t)
	ep2.status = 500
	m2 := NewMetrics()
	s2 := New(Config{URL: ep2.srv.URL, Delay: -1, Retry: 200 * time.Millisecond, Metrics: m2})
	defer s2.Close()
	s2.Send(ev(events.Subscribed, "x"))
	deadline = time.Now().Add(10 * time.Second)
	for value(m2.dropped.WithLabelValues("expired")) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the expired event is not counted")
		}
		select {
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// value reads a counter.
func value(c prometheus.Counter) float64 {
	var m dto.Metric
	c.Write(&m)
	return m.GetCounter().GetValue()
}

// While a body is being posted, an occupied that cancels a waiting
// vacated ahead of it in the queue must not make the sender drop a later
// event in place of the posted ones (it removed the posted events by
// their places in the queue, which the cancel had shifted: the next
// event was lost and the posted one sent again).
func TestCancelWhilePostingLosesNothing(t *testing.T) {
	inPost, release := make(chan struct{}, 1), make(chan struct{})
	var mu sync.Mutex
	var got []string
	more := make(chan struct{}, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var b struct {
			Events []events.Event `json:"events"`
		}
		json.NewDecoder(r.Body).Decode(&b)
		mu.Lock()
		first := len(got) == 0
		for _, e := range b.Events {
			got = append(got, e.Name+":"+e.Channel)
		}
		mu.Unlock()
		if first {
			inPost <- struct{}{}
			<-release
		}
		select {
		case more <- struct{}{}:
		default:
		}
	}))
	defer srv.Close()
	s := New(Config{URL: srv.URL, Secret: []byte("s"), Delay: time.Hour})
	defer s.Close()
	var once sync.Once
	defer once.Do(func() { close(release) })
	s.Send(ev(events.ChannelVacated, "b")) // waits its delay
	s.Send(ev(events.Subscribed, "a"))     // posted at once
	<-inPost
	s.Send(ev(events.ChannelOccupied, "b")) // cancels the vacated
	s.Send(ev(events.Subscribed, "b"))
	once.Do(func() { close(release) })
	deadline := time.After(10 * time.Second)
	want := "subscribed:a subscribed:b"
	for {
		mu.Lock()
		all := strings.Join(got, " ")
		n := len(got)
		mu.Unlock()
		if n >= 2 {
			if all != want {
				t.Fatalf("delivered %s, want %s", all, want)
			}
			return
		}
		select {
		case <-more:
		case <-deadline:
			t.Fatalf("delivered %s within 10s, want %s", all, want)
		}
	}
}

// With Encode (a Pusher app's webhooks), a body is what Encode makes of
// the batch, with its headers, and only the events Wants lets through
// are in it; the Pushctl-Signature is not added.
func TestEncodeMakesTheBody(t *testing.T) {
	type req struct {
		body, sig, custom string
	}
	got := make(chan req, 4)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- req{string(b), r.Header.Get(hooks.SignatureHeader), r.Header.Get("X-Custom-Sig")}
	}))
	defer srv.Close()
	s := New(Config{URL: srv.URL, Secret: []byte("s"), Delay: -1,
		Wants: func(ev *events.Event) bool { return ev.Name == events.ChannelOccupied },
		Encode: func(evs []events.Event, now time.Time) ([]byte, http.Header) {
			var names []string
			for _, ev := range evs {
				names = append(names, ev.Name+":"+ev.Channel)
			}
			return []byte(strings.Join(names, ",")), http.Header{"x-custom-sig": {"sig-of-" + strings.Join(names, ",")}}
		}})
	defer s.Close()
	s.Send(ev(events.Subscribed, "a"))
	s.Send(ev(events.ChannelOccupied, "a"))
	select {
	case r := <-got:
		if r.body != "channel_occupied:a" || r.custom != "sig-of-channel_occupied:a" || r.sig != "" {
			t.Fatalf("posted %+v", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("nothing posted")
	}
}
