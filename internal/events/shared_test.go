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

// sharedNode is a node on Redis with an Emitter whose events (those it
// publishes, and those it tells for dead nodes) are kept.
type sharedNode struct {
	log  *redislog.Log
	core *broker.Core
	em   *Emitter
	mu   sync.Mutex
	got  []string // "name channel user reason"
	more chan struct{}
}

func openShared(t *testing.T, name, url, prefix string, o redislog.Options) *sharedNode {
	t.Helper()
	hub := broker.NewHub()
	o.URL, o.Prefix = url, prefix
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, err := redislog.Open(ctx, o, hub)
	if err != nil {
		t.Fatal(err)
	}
	core := broker.New(hub, l, broker.CoreOptions{})
	n := &sharedNode{log: l, core: core, more: make(chan struct{}, 1)}
	n.em = New(Config{Node: name, Connections: true, Shared: l,
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
	return n
}

// waitCount waits until the node has told ev n times.
func (n *sharedNode) waitCount(t *testing.T, ev string, want int) {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		n.mu.Lock()
		c := 0
		for _, g := range n.got {
			if g == ev {
				c++
			}
		}
		all := strings.Join(n.got, " | ")
		n.mu.Unlock()
		if c >= want {
			return
		}
		select {
		case <-n.more:
		case <-deadline:
			t.Fatalf("%q told %d times within 20s, want %d: %s", ev, c, want, all)
		}
	}
}

// TestComingBackRecordsAgain: a node the others took for dead (silent
// past the node timeout) has its connection's and subscription's ends
// told by a survivor; when it comes back it records them again (told
// as subscribed and connection_opened again), so that when it then dies
// for good their ends are told again. (It used to hold its channels
// again but not record its connections and subscriptions: their ends
// were never told.)
func TestComingBackRecordsAgain(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	prefix := fmt.Sprintf("e%d:", time.Now().UnixNano())
	a := openShared(t, "A", srv.URL(), prefix, redislog.Options{Heartbeat: 100 * time.Millisecond, NodeTimeout: 1500 * time.Millisecond})
	// B beats only when its counts change: it can be made to look dead.
	b := openShared(t, "B", srv.URL(), prefix, redislog.Options{Heartbeat: time.Hour, NodeTimeout: time.Hour})
	opt, err := redis.ParseURL(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	// B's records: in the hash of each event channel.
	recorded := func(kind string) int {
		evCh := Connections
		if kind == "s" {
			evCh = ChannelOf("room")
		}
		fields, err := rdb.HKeys(context.Background(), prefix+"{"+evCh+"}:p").Result()
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, f := range fields {
			if strings.HasPrefix(f, "r:"+b.log.Node()+":"+kind+":") {
				n++
			}
		}
		return n
	}
	waitRecorded := func(what string) {
		t.Helper()
		deadline := time.After(20 * time.Second)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for recorded("c") != 1 || recorded("s") != 1 {
			select {
			case <-tick.C:
			case <-deadline:
				t.Fatalf("%s: B's connection and subscription not recorded (%d, %d)", what, recorded("c"), recorded("s"))
			}
		}
	}

	b.em.Connection(Event{Name: ConnectionOpened, ConnectionID: "c1", UserID: "bob", Transport: "websocket"})
	b.em.Subscribe("room", "bob")
	waitRecorded("at first")
	// B falls silent: A tells the ends, once.
	a.waitCount(t, "connection_closed c1 bob node_lost", 1)
	a.waitCount(t, "unsubscribed room bob node_lost", 1)
	a.waitCount(t, "channel_vacated room  ", 1)

	// B speaks again (a subscription changes its counts), finds out it
	// was taken for dead, holds its channel and records its connection
	// and subscription again.
	s, err := b.core.Subscribe(context.Background(), broker.SubscribeOptions{Channels: []string{"elsewhere"}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	b.waitCount(t, "channel_occupied room  ", 2)
	b.waitCount(t, "subscribed room bob ", 2)
	b.waitCount(t, "connection_opened c1 bob ", 2)
	waitRecorded("once back")

	// B falls silent again: their ends are told again.
	a.waitCount(t, "connection_closed c1 bob node_lost", 2)
	a.waitCount(t, "unsubscribed room bob node_lost", 2)
	a.waitCount(t, "channel_vacated room  ", 2)
}
