package events

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/broker/redislog"
	"github.com/pushctl/pushctl/internal/redistest"
)

// faultyLog is a real Redis log whose ends fail as often as told (as
// when Redis is marked down, or the publisher too slow), and whose
// records wait while hold is set.
type faultyLog struct {
	*redislog.Log
	mu       sync.Mutex
	failEnds int
	failHold int
	failRel  int
	hold     chan struct{} // records wait for it to close, when set
	holding  chan struct{} // closed once a record waits
}

func (f *faultyLog) StartRecord(ctx context.Context, node, kind, key, info string, open bool, ev *broker.Message) (func() (bool, error), error) {
	f.mu.Lock()
	fail := !open && f.failEnds > 0
	if fail {
		f.failEnds--
	}
	hold, holding := f.hold, f.holding
	f.mu.Unlock()
	if fail {
		return nil, fmt.Errorf("%w: redis blip (test)", broker.ErrUnavailable)
	}
	if open && hold != nil {
		close(holding)
		<-hold
	}
	return f.Log.StartRecord(ctx, node, kind, key, info, open, ev)
}

func (f *faultyLog) Occupy(ctx context.Context, node, evChannel string, hold bool, ev *broker.Message) (bool, error) {
	f.mu.Lock()
	fail := hold && f.failHold > 0
	if fail {
		f.failHold--
	}
	if !hold && f.failRel > 0 {
		fail = true
		f.failRel--
	}
	f.mu.Unlock()
	if fail {
		return false, fmt.Errorf("%w: redis blip (test)", broker.ErrUnavailable)
	}
	return f.Log.Occupy(ctx, node, evChannel, hold, ev)
}

// openFaulty is openShared on a faultyLog.
func openFaulty(t *testing.T, name, url, prefix string) (*sharedNode, *faultyLog) {
	t.Helper()
	hub := broker.NewHub()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, err := redislog.Open(ctx, redislog.Options{URL: url, Prefix: prefix, Heartbeat: time.Hour, NodeTimeout: time.Hour}, hub)
	if err != nil {
		t.Fatal(err)
	}
	f := &faultyLog{Log: l}
	core := broker.New(hub, l, broker.CoreOptions{})
	n := &sharedNode{log: l, core: core, more: make(chan struct{}, 1)}
	n.em = New(Config{Node: name, Connections: true, Shared: f,
		Publish: func(ctx context.Context, m *broker.Message) (func() (*broker.Message, error), error) {
			wait, err := core.StartPublish(ctx, m)
			if err != nil {
				return nil, err
			}
			return func() (*broker.Message, error) { rm, _, err := wait(); return rm, err }, nil
		}})
	n.em.AddSink(func(ev Event) {
		n.mu.Lock()
		n.got = append(n.got, strings.Join([]string{ev.Name, ev.Channel + ev.ConnectionID, ev.UserID, ev.Reason}, " "))
		n.mu.Unlock()
		select {
		case n.more <- struct{}{}:
		default:
		}
	})
	t.Cleanup(func() {
		n.em.Close()
		core.Close()
	})
	return n, f
}

// TestFailedEndIsTriedAgain: an unsubscribe whose end fails (Redis
// blip) is tried again until it is recorded: unsubscribed is told, the
// record is deleted, and only then is the channel's hold released
// (channel_vacated), so that the channel stayed listed for a reaper while
// the record was left. It used to be failed for good, its record left in
// Redis, and the release right behind it delisted the channel: nobody
// ever ended that record, nor (its count staying at 1) told the
// channel's vacated or, later, occupied.
func TestFailedEndIsTriedAgain(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	prefix := fmt.Sprintf("r%d:", time.Now().UnixNano())
	b, f := openFaulty(t, "B", srv.URL(), prefix)
	opt, err := redis.ParseURL(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opt)
	defer rdb.Close()

	id := b.em.Subscribe("room", "bob")
	b.waitCount(t, "subscribed room bob ", 1)
	f.mu.Lock()
	f.failEnds = 2 // fails at once, then again on its first retry
	f.mu.Unlock()
	b.em.Unsubscribe("room", "bob", id)
	b.waitCount(t, "unsubscribed room bob ", 1)
	b.waitCount(t, "channel_vacated room  ", 1)
	b.mu.Lock()
	got := strings.Join(b.got, " | ")
	b.mu.Unlock()
	if strings.Index(got, "unsubscribed") > strings.Index(got, "channel_vacated") {
		t.Fatalf("vacated told before the unsubscribe: %s", got)
	}
	fields, err := rdb.HKeys(context.Background(), prefix+"{"+ChannelOf("room")+"}:p").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, fl := range fields {
		if strings.HasPrefix(fl, "r:") || strings.HasPrefix(fl, "h:") || fl == "n" {
			t.Fatalf("left in the channel's hash: %v", fields)
		}
	}
	// Subscribed again: occupied again.
	b.em.Subscribe("room", "bob")
	b.waitCount(t, "channel_occupied room  ", 2)
	if _, _, failed := b.em.Counts(); failed != 0 {
		t.Fatalf("%d events failed", failed)
	}
}

// TestRejoinTellsPendingRecordsOnce: a node back from being taken for
// dead records again what it holds, including what it had not recorded
// yet (queued, or under way): each is recorded and told once (the script
// records a key once). It used to be told twice: a second
// connection_opened with only one end.
func TestRejoinTellsPendingRecordsOnce(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	prefix := fmt.Sprintf("j%d:", time.Now().UnixNano())
	b, f := openFaulty(t, "B", srv.URL(), prefix)
	f.mu.Lock()
	f.hold, f.holding = make(chan struct{}), make(chan struct{})
	holding := f.holding
	f.mu.Unlock()
	b.em.Connection(Event{Name: ConnectionOpened, ConnectionID: "c1", UserID: "bob", Transport: "websocket"})
	<-holding                                                                                                 // c1's record under way
	b.em.Connection(Event{Name: ConnectionOpened, ConnectionID: "c2", UserID: "bob", Transport: "websocket"}) // queued
	b.em.rejoin()
	f.mu.Lock()
	close(f.hold)
	f.hold = nil
	f.mu.Unlock()
	// c3 after the rest, in the same stripe: told once c1's and c2's
	// records (and any again) are.
	b.em.Connection(Event{Name: ConnectionOpened, ConnectionID: "c3", UserID: "bob", Transport: "websocket"})
	b.waitCount(t, "connection_opened c3 bob ", 1)
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, c := range []string{"c1", "c2"} {
		n := 0
		for _, g := range b.got {
			if g == "connection_opened "+c+" bob " {
				n++
			}
		}
		if n != 1 {
			t.Fatalf("connection_opened of %s told %d times, want 1: %s", c, n, strings.Join(b.got, " | "))
		}
	}
}

// TestFailedHoldIsTriedAgain: a channel's hold that fails (Redis blip)
// while its subscription's record, right behind it, succeeds is tried
// again until it is recorded: the channel is occupied for the cluster and
// listed for a reaper (life:o), which finds the record through it. It
// used to fail for good: the record was listed nowhere (never ended
// should the node die) and the cluster never counted the hold.
func TestFailedHoldIsTriedAgain(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	prefix := fmt.Sprintf("h%d:", time.Now().UnixNano())
	b, f := openFaulty(t, "B", srv.URL(), prefix)
	opt, err := redis.ParseURL(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	f.mu.Lock()
	f.failHold = 2
	f.mu.Unlock()
	id := b.em.Subscribe("room", "bob")
	b.waitCount(t, "subscribed room bob ", 1)
	b.waitCount(t, "channel_occupied room  ", 1)
	listed, err := rdb.HExists(context.Background(), prefix+"{=}:life:o:"+b.log.Node(), ChannelOf("room")).Result()
	if err != nil || !listed {
		t.Fatalf("the channel is not listed for a reaper (%v, %v)", listed, err)
	}
	b.em.Unsubscribe("room", "bob", id)
	b.waitCount(t, "channel_vacated room  ", 1)
}

// TestFailedReleaseIsTriedAgain: a channel's release that fails (a Redis
// blip) is tried again, so the channel is vacated, and occupied again by
// the next subscription.
func TestFailedReleaseIsTriedAgain(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	prefix := fmt.Sprintf("r%d:", time.Now().UnixNano())
	b, f := openFaulty(t, "B", srv.URL(), prefix)
	f.mu.Lock()
	f.failRel = 2
	f.mu.Unlock()
	id := b.em.Subscribe("room", "bob")
	b.waitCount(t, "channel_occupied room  ", 1)
	b.em.Unsubscribe("room", "bob", id)
	b.waitCount(t, "unsubscribed room bob ", 1)
	b.waitCount(t, "channel_vacated room  ", 1)
	b.em.Subscribe("room", "carol")
	b.waitCount(t, "channel_occupied room  ", 2)
}

// lateReply is a log whose record of connection c1 runs in Redis at once
// but whose reply is held back until release closes.
type lateReply struct {
	*faultyLog
	release chan struct{}
	ran     chan struct{}
	once    sync.Once
}

func (s *lateReply) StartRecord(ctx context.Context, node, kind, key, info string, open bool, ev *broker.Message) (func() (bool, error), error) {
	wait, err := s.faultyLog.Log.StartRecord(ctx, node, kind, key, info, open, ev)
	first := false
	if err == nil && open && key == "c1" {
		s.once.Do(func() { first = true })
	}
	if !first {
		return wait, err
	}
	return func() (bool, error) {
		ok, err := wait()
		close(s.ran)
		<-s.release
		return ok, err
	}, nil
}

// TestRejoinRecordsWhatAReaperEndedMeanwhile: a record that ran in Redis
// but whose reply is late counts as pending; a reaper (taking the node
// for dead) ends it meanwhile; the node comes back. The record is made
// again and told anew (its end will be told), not skipped as pending.
func TestRejoinRecordsWhatAReaperEndedMeanwhile(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	prefix := fmt.Sprintf("q%d:", time.Now().UnixNano())
	b, f := openFaulty(t, "B", srv.URL(), prefix)
	s := &lateReply{faultyLog: f, release: make(chan struct{}), ran: make(chan struct{})}
	b.em.cfg.Shared = s
	opt, err := redis.ParseURL(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opt)
	defer rdb.Close()

	b.em.Connection(Event{Name: ConnectionOpened, ConnectionID: "c1", UserID: "bob", Transport: "websocket"})
	<-s.ran
	m := (&Event{Name: ConnectionClosed, ConnectionID: "c1", UserID: "bob", Reason: "node_lost"}).Message()
	wait, err := f.Log.StartRecord(context.Background(), "", "c", "c1", "", false, m)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := wait(); !ok || err != nil {
		t.Fatalf("the reaper's end: %v %v", ok, err)
	}
	b.em.rejoin()
	close(s.release)
	b.waitCount(t, "connection_opened c1 bob ", 2)
	ok, err := rdb.HExists(context.Background(), prefix+"{"+Connections+"}:p", "r:"+b.log.Node()+":c:c1").Result()
	if err != nil || !ok {
		t.Fatalf("c1 is live on the node but not recorded after the rejoin (%v, %v)", ok, err)
	}
}
