package webhooks

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/events"
)

// leases is a broker.DeliveryLog in memory whose lease a test can take
// away.
type leases struct {
	mu     sync.Mutex
	holder string
	pos    broker.Cursor
	since  time.Time
	saves  map[string]int // token → positions stored
	taken  chan struct{}  // closed once a holder took the lease
	saved  chan struct{}  // signalled (if not nil) after each save
}

func newLeases() *leases {
	return &leases{pos: broker.Cursor{}, saves: map[string]int{}, taken: make(chan struct{})}
}

func (l *leases) LeaseTTL() time.Duration { return 3 * time.Second }

func (l *leases) TakeLease(_ context.Context, _, token string) (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.holder == "" {
		l.holder = token
		close(l.taken)
	}
	return l.holder == token, nil
}

func (l *leases) LeaseLeft(_ context.Context, _, token string) (time.Duration, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.holder != token {
		return 0, nil
	}
	return l.LeaseTTL(), nil
}

func (l *leases) DropLease(_ context.Context, _, token string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.holder == token {
		l.holder = ""
	}
	return nil
}

func (l *leases) Positions(_ context.Context, _ string, since time.Time) (broker.Cursor, time.Time, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.since.IsZero() {
		l.since = since
	}
	c := broker.Cursor{}
	for k, v := range l.pos {
		c[k] = v
	}
	return c, l.since, nil
}

func (l *leases) SavePositions(_ context.Context, _, token string, c broker.Cursor) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.holder != token {
		return broker.ErrLeaseLost
	}
	for k, v := range c {
		l.pos[k] = v
	}
	l.saves[token]++
	if l.saved != nil {
		select {
		case l.saved <- struct{}{}:
		default:
		}
	}
	return nil
}

// TestRelayStopsWhenItsLeaseIsLost: a lease holder whose lease another
// node took while a POST was under way does not post again (it asks
// before each POST) and stores no position; its metrics say it lost the
// lease.
func TestRelayStopsWhenItsLeaseIsLost(t *testing.T) {
	b := broker.NewMemory(broker.MemoryOptions{})
	defer b.Close()
	var mu sync.Mutex
	posts := 0
	first := make(chan struct{})
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		posts++
		n := posts
		mu.Unlock()
		if n == 1 {
			close(first)
			<-release
		}
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	dl := newLeases()
	m := NewRelayMetrics()
	r := NewRelay(RelayConfig{Sender: Config{URL: srv.URL, Delay: -1}, Node: "a", Log: dl, Subscribe: b.Subscribe, Metrics: m})
	defer r.Close()
	select {
	case <-dl.taken:
	case <-time.After(10 * time.Second):
		t.Fatal("the relay took no lease")
	}
	ev := events.Event{Name: events.Subscribed, Channel: "room", UserID: "u"}
	ctx := context.Background()
	// The holder may still be subscribing: publish until its first POST.
	deadline := time.After(10 * time.Second)
	for published := false; !published; {
		if _, _, err := b.Publish(ctx, ev.Message()); err != nil {
			t.Fatal(err)
		}
		select {
		case <-first:
			published = true
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			t.Fatal("no POST")
		}
	}
	// Another node takes the lease while the POST is under way; the
	// endpoint then fails it.
	dl.mu.Lock()
	dl.holder = "another node"
	dl.mu.Unlock()
	close(release)
	wait := time.After(10 * time.Second)
	for value(m.changes.WithLabelValues("lost")) != 1 || gauge(m.held) != 0 {
		select {
		case <-wait:
			t.Fatalf("the relay did not give the lease up: lost %v, held %v", value(m.changes.WithLabelValues("lost")), gauge(m.held))
		case <-time.After(10 * time.Millisecond):
		}
	}
	// Its sender has stopped (held is 0 once it has): nothing more.
	b.Publish(ctx, ev.Message())
	mu.Lock()
	n := posts
	mu.Unlock()
	if n != 1 {
		t.Fatalf("%d POSTs, want 1 (none after the lease was lost)", n)
	}
	dl.mu.Lock()
	defer dl.mu.Unlock()
	if len(dl.pos) != 0 {
		t.Fatalf("positions stored: %v", dl.pos)
	}
}

// gauge reads a gauge.
func gauge(g prometheus.Gauge) float64 {
	var m dto.Metric
	g.Write(&m)
	return m.GetGauge().GetValue()
}

// TestRelayCountsAGap: a holder resuming from a position its event
// channel no longer holds counts the gap, sends what the channel still
// holds, in order, and stores the position past it.
func TestRelayCountsAGap(t *testing.T) {
	b := broker.NewMemory(broker.MemoryOptions{Retention: broker.Retention{HistorySize: 3}})
	defer b.Close()
	ctx := context.Background()
	start := time.Now().Add(-time.Second)
	var last *broker.Message
	for range 10 {
		ev := events.Event{Name: events.Subscribed, Channel: "room", UserID: "u"}
		m, _, err := b.Publish(ctx, ev.Message())
		if err != nil {
			t.Fatal(err)
		}
		last = m
	}
	var mu sync.Mutex
	var got []uint64
	more := make(chan struct{}, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body struct{ Events []events.Event }
		json.NewDecoder(r.Body).Decode(&body)
		mu.Lock()
		for _, ev := range body.Events {
			got = append(got, ev.Seq)
		}
		mu.Unlock()
		select {
		case more <- struct{}{}:
		default:
		}
	}))
	defer srv.Close()
	evCh := events.ChannelOf("room")
	dl := newLeases()
	dl.since = start
	dl.pos[evCh] = broker.Position{Epoch: last.Epoch, Seq: 2} // 3…7 are gone
	m := NewRelayMetrics()
	r := NewRelay(RelayConfig{Sender: Config{URL: srv.URL, Delay: -1}, Node: "a", Log: dl, Subscribe: b.Subscribe, Metrics: m})
	defer r.Close()
	deadline := time.After(10 * time.Second)
	for {
		dl.mu.Lock()
		pos := dl.pos[evCh]
		dl.mu.Unlock()
		if pos.Seq == 10 {
			break
		}
		select {
		case <-more:
		case <-time.After(10 * time.Millisecond):
		case <-deadline:
			t.Fatalf("position %v, want 10", pos)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(got, []uint64{8, 9, 10}) {
		t.Fatalf("sent seqs %v, want 8 9 10", got)
	}
	if n := value(m.gaps); n != 1 {
		t.Fatalf("gaps counted: %v, want 1", n)
	}
}

// TestTrackerStoresOnlyWhatIsDone: an event cancelled with its pair
// while an earlier one of its channel is still being retried does not
// move the channel's stored position past the earlier one.
func TestTrackerStoresOnlyWhatIsDone(t *testing.T) {
	var saved []broker.Cursor
	tr := &tracker{chans: map[string]*chanPos{}, save: func(c broker.Cursor) error {
		saved = append(saved, c)
		return nil
	}}
	ev := func(name string, seq uint64) events.Event {
		return events.Event{Name: name, Channel: "room", Seq: seq, Epoch: "e"}
	}
	ch := events.ChannelOf("room")
	for seq := uint64(4); seq <= 6; seq++ {
		tr.add(ch, broker.Position{Epoch: "e", Seq: seq})
	}
	// vacated 5 cancelled by occupied 6; unsubscribed 4 still retried.
	tr.done([]events.Event{ev(events.ChannelVacated, 5), ev(events.ChannelOccupied, 6)})
	if len(saved) != 0 {
		t.Fatalf("stored %v while seq 4 is not done", saved)
	}
	tr.done([]events.Event{ev(events.Unsubscribed, 4)})
	if len(saved) != 1 || saved[0][ch] != (broker.Position{Epoch: "e", Seq: 6}) {
		t.Fatalf("stored %v, want %s=e-6", saved, ch)
	}
}

// TestRelayResumesItsSubscription: events come faster than the endpoint
// takes them; the holder waits for room in its sender's queue, its
// subscription to the event channels overflows and is resumed: every
// event is sent once, in order.
func TestRelayResumesItsSubscription(t *testing.T) {
	b := broker.NewMemory(broker.MemoryOptions{})
	defer b.Close()
	ctx := context.Background()
	const n = 60
	var mu sync.Mutex
	got := map[string][]uint64{}
	total := 0
	all := make(chan struct{})
	gate := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-gate
		var body struct{ Events []events.Event }
		json.NewDecoder(r.Body).Decode(&body)
		mu.Lock()
		defer mu.Unlock()
		for _, ev := range body.Events {
			got[ev.Channel] = append(got[ev.Channel], ev.Seq)
			if total++; total == 2*n {
				close(all)
			}
		}
	}))
	defer srv.Close()
	dl := newLeases()
	// Published once the holder is subscribed, so that they come live
	// (not as a replay) and overflow its subscription.
	subscribed := make(chan struct{})
	var once sync.Once
	sub := func(ctx context.Context, opts broker.SubscribeOptions) (*broker.Subscription, error) {
		s, err := b.Subscribe(ctx, opts)
		once.Do(func() { close(subscribed) })
		return s, err
	}
	r := NewRelay(RelayConfig{Sender: Config{URL: srv.URL, Delay: -1, QueueSize: 5}, Node: "a", Log: dl,
		Subscribe: sub, SubQueue: 8})
	defer r.Close()
	select {
	case <-subscribed:
	case <-time.After(10 * time.Second):
		t.Fatal("the holder did not subscribe")
	}
	for range n {
		for _, ch := range []string{"a", "b"} {
			ev := events.Event{Name: events.Subscribed, Channel: ch, UserID: "u"}
			if _, _, err := b.Publish(ctx, ev.Message()); err != nil {
				t.Fatal(err)
			}
		}
	}
	close(gate)
	select {
	case <-all:
	case <-time.After(20 * time.Second):
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("events received: %v", got)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, ch := range []string{"a", "b"} {
		for i, seq := range got[ch] {
			if seq != uint64(i+1) {
				t.Fatalf("%s: seqs %v, want 1…%d once each", ch, got[ch], n)
			}
		}
	}
	if st := b.Stats(); st.SlowConsumers == 0 {
		t.Fatalf("the subscription never overflowed: %+v", st)
	}
}

// TestRelayPassesOverEventsNotForItsURL: events the URL does not want (a
// Pusher app's relay wants few of them) are not sent and cost no Redis
// call each: 500 of them and one wanted event are stored in a few saves,
// the position ends after the last, and only the wanted event is posted.
func TestRelayPassesOverEventsNotForItsURL(t *testing.T) {
	b := broker.NewMemory(broker.MemoryOptions{Retention: broker.Retention{HistorySize: 1000}})
	defer b.Close()
	ctx := context.Background()
	start := time.Now().Add(-time.Second)
	var last *broker.Message
	for i := range 501 {
		ev := events.Event{Name: events.Subscribed, Channel: "room", UserID: "u"}
		if i == 500 {
			ev = events.Event{Name: events.ChannelOccupied, Channel: "room"}
		}
		m, _, err := b.Publish(ctx, ev.Message())
		if err != nil {
			t.Fatal(err)
		}
		last = m
	}
	var mu sync.Mutex
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body struct{ Events []events.Event }
		json.NewDecoder(r.Body).Decode(&body)
		mu.Lock()
		for _, ev := range body.Events {
			got = append(got, ev.Name)
		}
		mu.Unlock()
	}))
	defer srv.Close()
	evCh := events.ChannelOf("room")
	dl := newLeases()
	dl.since = start
	dl.saved = make(chan struct{}, 1)
	wants := func(ev *events.Event) bool { return ev.Name == events.ChannelOccupied }
	r := NewRelay(RelayConfig{Sender: Config{URL: srv.URL, Delay: -1, Wants: wants}, Node: "a", Log: dl, Subscribe: b.Subscribe, Metrics: NewRelayMetrics()})
	defer r.Close()
	deadline := time.After(10 * time.Second)
	for {
		dl.mu.Lock()
		pos, saves := dl.pos[evCh], 0
		for _, n := range dl.saves {
			saves += n
		}
		dl.mu.Unlock()
		if pos.Seq == last.Seq {
			if saves > 10 {
				t.Fatalf("%d position saves for 500 events passed over and one sent", saves)
			}
			break
		}
		select {
		case <-dl.saved:
		case <-deadline:
			t.Fatalf("position %v, want %d", pos, last.Seq)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(got, []string{events.ChannelOccupied}) {
		t.Fatalf("posted %v, want only channel_occupied", got)
	}
}
