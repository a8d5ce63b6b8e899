package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/consumer"
)

// gatedStore passes saves through until held; then each save reports
// what it writes on entered and waits for release before it is written.
type gatedStore struct {
	consumer.Store
	hold    atomic.Bool
	entered chan saving
	release chan struct{}
}

// saving is what a save writes: entries, and the entries marked removed.
type saving struct {
	Puts    []consumer.SavedEntry
	Removed []uint64
}

func (g *gatedStore) Save(changes []consumer.Change) error {
	if g.hold.Load() {
		var all saving
		for _, c := range changes {
			all.Puts = append(all.Puts, c.Puts...)
			for _, d := range c.Done {
				for i := range len(d.Bits) * 8 {
					if d.Bits[i/8]&(1<<(i%8)) != 0 {
						all.Removed = append(all.Removed, d.Start+uint64(i))
					}
				}
			}
		}
		g.entered <- all
		<-g.release
	}
	return g.Store.Save(changes)
}

func newGated(t *testing.T) (broker.Broker, *consumer.Manager, *gatedStore) {
	t.Helper()
	b := broker.NewMemory(broker.MemoryOptions{})
	st, err := consumer.OpenBolt(t.TempDir(), true)
	if err != nil {
		t.Fatal(err)
	}
	g := &gatedStore{Store: st, entered: make(chan saving, 16), release: make(chan struct{})}
	m := consumer.NewManager(b, consumer.Options{Store: g})
	t.Cleanup(func() {
		g.hold.Store(false)
		close(g.release)
		m.Close()
		b.Close()
	})
	return b, m, g
}

func entered(t *testing.T, g *gatedStore) saving {
	t.Helper()
	select {
	case ch := <-g.entered:
		return ch
	case <-time.After(10 * time.Second):
		t.Fatal("no save began")
		return saving{}
	}
}

// An acknowledgement whose change a save already holds waits for that
// save only: the reply to an ack costs one commit, not that one and the
// next (which a fetch in between, changing only counters, used to add).
func TestAckWaitsForTheSaveHoldingIt(t *testing.T) {
	b, m, g := newGated(t)
	c := open(t, m, "w", consumer.Config{Filter: "jobs"})
	publish(t, b, "jobs", 2)
	waitKept(t, c, 2)
	if err := c.Synced(context.Background()); err != nil {
		t.Fatal(err)
	}
	ds := fetchN(t, c, 1, 1)
	g.hold.Store(true)
	if n, err := c.Ack(ids(ds)); n != 1 || err != nil {
		t.Fatalf("ack: %d %v", n, err)
	}
	if ch := entered(t, g); !slices.Contains(ch.Removed, 1) {
		t.Fatalf("the save after the ack writes %+v, not the ack", ch)
	}
	fetchN(t, c, 1, 1) // delivery counters change; nothing asks for a save
	res := make(chan error, 1)
	go func() { res <- c.Synced(context.Background()) }()
	g.release <- struct{}{}
	// A later save may begin (the counters), but is held: the reply must
	// not wait for it.
	select {
	case err := <-res:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the ack's reply waits for a second save")
	}
}

// An acknowledgement made while a save is being written (after that save
// collected its changes) is answered only after the next save, which
// holds it.
func TestAckDuringASaveWaitsForTheNext(t *testing.T) {
	b, m, g := newGated(t)
	c := open(t, m, "w", consumer.Config{Filter: "jobs"})
	publish(t, b, "jobs", 2)
	waitKept(t, c, 2)
	if err := c.Synced(context.Background()); err != nil {
		t.Fatal(err)
	}
	ds := fetchN(t, c, 2, 2)
	g.hold.Store(true)
	c.Ack(ids(ds[:1]))
	first := entered(t, g)
	c.Ack(ids(ds[1:]))
	waiting := make(chan struct{}, 1)
	defer consumer.OnSyncedWaits(func() {
		select {
		case waiting <- struct{}{}:
		default:
		}
	})()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	res := make(chan error, 1)
	go func() { res <- c.Synced(ctx) }()
	<-waiting
	g.release <- struct{}{}
	second := entered(t, g)
	if fmt.Sprint(first.Removed, second.Removed) != "[1] [1 2]" {
		t.Fatalf("saves marked %v then %v removed, want [1] then [1 2]", first.Removed, second.Removed)
	}
	cancel() // the save holding the ack is not written yet
	if err := <-res; !errors.Is(err, consumer.ErrNotSaved) {
		t.Fatalf("Synced before the save holding the ack was written: %v, want ErrNotSaved", err)
	}
	g.release <- struct{}{}
	if err := c.Synced(context.Background()); err != nil {
		t.Fatal(err)
	}
}
