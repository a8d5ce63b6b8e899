package door

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
)

// sharedBroker is a memory broker whose log the door takes for one that
// nodes share (broker.LifecycleLog), with holds that wait for a gate.
type sharedBroker struct {
	broker.Broker
	log *gatedLifecycle
}

func (b sharedBroker) Log() broker.Log { return b.log }

type gatedLifecycle struct {
	broker.Log // not used by the events
	entered    chan struct{}
	gate       chan struct{}
	mu         sync.Mutex
	holds      int
}

func (g *gatedLifecycle) Occupy(_ context.Context, _, _ string, hold bool, _ *broker.Message) (bool, error) {
	if hold {
		g.entered <- struct{}{}
		<-g.gate
		g.mu.Lock()
		g.holds++
		g.mu.Unlock()
	}
	return false, nil
}
func (g *gatedLifecycle) StartRecord(context.Context, string, string, string, string, bool, *broker.Message) (func() (bool, error), error) {
	return func() (bool, error) { return false, nil }, nil
}
func (g *gatedLifecycle) Member(context.Context, string, string, string, string, bool, *broker.Message) (bool, error) {
	return false, nil
}
func (g *gatedLifecycle) WatchLifecycle(func(node, kind, key, info string) error, func()) {}

// With nodes sharing the log, Subscribe returns only once the cluster
// counts the subscription (this node's hold of the channel recorded):
// a client told it is subscribed any sooner could see the channel
// vacated under it by the other nodes' last unsubscribes, recorded
// before its hold (TestPusherWebhooksAcrossNodes saw vacated and occupied
// again from two nodes).
func TestSubscribeReturnsOnceTheClusterCountsIt(t *testing.T) {
	mem := broker.NewMemory(broker.MemoryOptions{})
	defer mem.Close()
	g := &gatedLifecycle{entered: make(chan struct{}, 1), gate: make(chan struct{})}
	d := New(sharedBroker{Broker: mem, log: g}, Config{
		Namespaces: []Namespace{{Name: "open", Patterns: []string{">"}, Rules: Rules{AnonymousSubscribe: ptr(true)}}},
		Events:     EventsConfig{All: true},
	})
	var open sync.Once
	defer d.Close()
	defer open.Do(func() { close(g.gate) })
	type result struct {
		sub   *broker.Subscription
		err   error
		holds int
	}
	done := make(chan result, 1)
	go func() {
		sub, err := d.Subscribe(context.Background(), Caller{Client: "x"}, broker.SubscribeOptions{Channels: []string{"news"}})
		g.mu.Lock()
		holds := g.holds
		g.mu.Unlock()
		done <- result{sub, err, holds}
	}()
	<-g.entered
	// The hold is in the shared log's hands and not recorded: Subscribe
	// must not return now (a correct door never does, so the window only
	// bounds how long a wrong one is given to show itself).
	select {
	case r := <-done:
		t.Fatalf("Subscribe returned before the cluster counted it (holds recorded %d, err %v)", r.holds, r.err)
	case <-time.After(300 * time.Millisecond):
	}
	open.Do(func() { close(g.gate) })
	r := <-done
	if r.err != nil || r.holds != 1 {
		t.Fatalf("Subscribe: err %v, holds recorded when it returned %d", r.err, r.holds)
	}
	r.sub.Close()
}
