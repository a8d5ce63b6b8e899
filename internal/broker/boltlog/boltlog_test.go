package boltlog_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/broker/boltlog"
	"github.com/pushctl/pushctl/internal/broker/brokertest"
)

func openDurable(t *testing.T, dir string, o broker.MemoryOptions) *broker.Core {
	t.Helper()
	b, err := boltlog.OpenBroker(boltlog.Options{MemoryOptions: o, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDurableConformance(t *testing.T) {
	brokertest.Run(t, func(t *testing.T, o brokertest.Options) broker.Broker {
		b := openDurable(t, t.TempDir(), broker.MemoryOptions{
			Retention: broker.Retention{HistorySize: o.HistorySize, HistoryAge: o.HistoryAge}, RetentionFor: o.RetentionFor, QueueSize: o.QueueSize, Now: o.Now,
		})
		t.Cleanup(func() { b.Close() })
		return b
	})
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestDurableRestartKeepsHistoryEpochAndSequence(t *testing.T) {
	dir := t.TempDir()
	b := openDurable(t, dir, broker.MemoryOptions{Retention: broker.Retention{HistorySize: 5}})
	var last *broker.Message
	for i := 1; i <= 8; i++ {
		m, _, err := b.Publish(ctx(t), &broker.Message{Channel: "d", Event: "e", Kind: broker.KindJSON, Data: []byte(fmt.Sprintf(`{"i":%d}`, i))})
		if err != nil {
			t.Fatal(err)
		}
		last = m
	}
	s, _ := b.Subscribe(ctx(t), broker.SubscribeOptions{Channels: []string{"empty"}})
	empty := s.Start()["empty"]
	s.Close()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	b = openDurable(t, dir, broker.MemoryOptions{Retention: broker.Retention{HistorySize: 5}})
	defer b.Close()
	info, err := b.Channel(ctx(t), "d")
	if err != nil || info.Epoch != last.Epoch || info.LastSeq != 8 || info.Messages != 5 {
		t.Fatalf("after restart: %+v %v; want epoch %s, seq 8, 5 retained", info, err, last.Epoch)
	}
	// A subscriber resumes across the restart without a gap.
	sub, err := b.Subscribe(ctx(t), broker.SubscribeOptions{Channels: []string{"d", "empty"},
		From: broker.Cursor{"d": broker.Position{Epoch: last.Epoch, Seq: 6}, "empty": empty}})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	m, _, _ := b.Publish(ctx(t), &broker.Message{Channel: "d", Data: []byte("after")})
	if m.Seq != 9 || m.Epoch != last.Epoch {
		t.Fatalf("new message %s, want seq 9 in the same epoch", m.ID())
	}
	b.Publish(ctx(t), &broker.Message{Channel: "empty", Data: []byte("first")})
	var got []string
	var buf []broker.Event
	for len(got) < 4 {
		evs, err := sub.Next(ctx(t), buf)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range evs {
			if e.Gap != nil {
				t.Fatalf("unexpected gap %+v", e.Gap)
			}
			got = append(got, fmt.Sprintf("%s:%d:%s:%s", e.Msg.Channel, e.Msg.Seq, e.Msg.Event, e.Msg.Data))
		}
	}
	want := []string{`d:7:e:{"i":7}`, `d:8:e:{"i":8}`, "d:9:message:after", "empty:1:message:first"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("got %v\nwant %v", got, want)
	}
}

func TestDurableConcurrentPublishersAllStored(t *testing.T) {
	dir := t.TempDir()
	b := openDurable(t, dir, broker.MemoryOptions{Retention: broker.Retention{HistorySize: 100000}})
	var wg sync.WaitGroup
	for p := 0; p < 16; p++ {
		wg.Add(1)
		go func(p int) {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				if _, _, err := b.Publish(context.Background(), &broker.Message{Channel: "c", Data: []byte(fmt.Sprint(p, "-", i))}); err != nil {
					t.Error(err)
					return
				}
			}
		}(p)
	}
	wg.Wait()
	b.Close()
	b = openDurable(t, dir, broker.MemoryOptions{Retention: broker.Retention{HistorySize: 100000}})
	defer b.Close()
	if info, _ := b.Channel(ctx(t), "c"); info.Messages != 3200 || info.LastSeq != 3200 {
		t.Fatalf("after restart %+v, want 3200", info)
	}
}

func TestDurableRetentionTrimsDisk(t *testing.T) {
	dir := t.TempDir()
	b := openDurable(t, dir, broker.MemoryOptions{Retention: broker.Retention{HistorySize: 10, HistoryBytes: 1000}})
	for i := 0; i < 500; i++ {
		if _, _, err := b.Publish(ctx(t), &broker.Message{Channel: "r", Data: make([]byte, 300)}); err != nil {
			t.Fatalf("publish %d: %v", i+1, err)
		}
	}
	b.Close()
	b = openDurable(t, dir, broker.MemoryOptions{Retention: broker.Retention{HistorySize: 1000}})
	defer b.Close()
	// Disk kept what memory kept (3 messages of 300 bytes fit 1000), not 500.
	if info, err := b.Channel(ctx(t), "r"); err != nil || info.Messages != 3 || info.LastSeq != 500 {
		t.Fatalf("after restart %+v", info)
	}
}

func TestDurableStartupErrors(t *testing.T) {
	dir := t.TempDir()
	b := openDurable(t, dir, broker.MemoryOptions{})
	if _, err := boltlog.OpenBroker(boltlog.Options{Dir: dir}); err == nil || !contains(err, "another pushctl") {
		t.Fatalf("second open: %v", err)
	}
	b.Close()
	// A damaged file is refused with a clear error, never silently reset.
	if err := os.WriteFile(filepath.Join(dir, "store.db"), []byte("not a bbolt file, just garbage bytes"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := boltlog.OpenBroker(boltlog.Options{Dir: dir}); err == nil || !contains(err, "open store") {
		t.Fatalf("corrupt file: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "store.db")); string(b) != "not a bbolt file, just garbage bytes" {
		t.Fatal("damaged file was modified")
	}
	ro := filepath.Join(t.TempDir(), "ro")
	os.MkdirAll(ro, 0o500)
	if os.Geteuid() != 0 { // root writes anywhere
		if _, err := boltlog.OpenBroker(boltlog.Options{Dir: ro}); err == nil || !contains(err, "not writable") {
			t.Fatalf("read-only dir: %v", err)
		}
	}
	if _, err := boltlog.OpenBroker(boltlog.Options{Dir: filepath.Join(dir, "store.db", "sub")}); err == nil {
		t.Fatal("a file as data directory was accepted")
	}
}

func TestDurableCloseFlushesQueued(t *testing.T) {
	dir := t.TempDir()
	b := openDurable(t, dir, broker.MemoryOptions{Retention: broker.Retention{HistorySize: 10000}})
	var wg sync.WaitGroup
	var mu sync.Mutex
	acked := 0
	for p := 0; p < 8; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				_, _, err := b.Publish(context.Background(), &broker.Message{Channel: "f", Data: []byte("x")})
				if errors.Is(err, broker.ErrClosed) {
					return
				}
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				acked++
				n := acked
				mu.Unlock()
				if n == 500 {
					go b.Close()
				}
			}
		}()
	}
	wg.Wait()
	b.Close()
	b = openDurable(t, dir, broker.MemoryOptions{Retention: broker.Retention{HistorySize: 10000}})
	defer b.Close()
	info, _ := b.Channel(ctx(t), "f")
	if info.Messages != acked {
		t.Fatalf("%d acknowledged, %d stored", acked, info.Messages)
	}
}

func contains(err error, s string) bool { return err != nil && strings.Contains(err.Error(), s) }

// TestMemoryOnlyChannels: channels MemoryOnly names are delivered and
// retained like the others but never reach the disk: after a restart
// they start a new epoch while the others keep theirs; a channel that
// becomes memory-only leaves the disk at the next start.
func TestMemoryOnlyChannels(t *testing.T) {
	dir := t.TempDir()
	mem := func(ch string) bool { return strings.HasPrefix(ch, "mem.") }
	open := func(memOnly func(string) bool) *broker.Core {
		b, err := boltlog.OpenBroker(boltlog.Options{Dir: dir, MemoryOnly: memOnly})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	b := open(mem)
	var memEpoch string
	for i := 0; i < 3; i++ {
		for _, ch := range []string{"mem.a", "disk.a"} {
			m, _, err := b.Publish(ctx(t), &broker.Message{Channel: ch, Data: []byte("x")})
			if err != nil {
				t.Fatal(err)
			}
			if ch == "mem.a" {
				memEpoch = m.Epoch
			}
		}
	}
	if info, err := b.Channel(ctx(t), "mem.a"); err != nil || info.Messages != 3 {
		t.Fatalf("memory-only channel while running: %+v %v", info, err)
	}
	b.Close()
	// The file holds disk.a and nothing of mem.a.
	raw, err := os.ReadFile(filepath.Join(dir, "store.db"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(raw), "mem.a") || !strings.Contains(string(raw), "disk.a") {
		t.Fatalf("store.db: mem.a there %v, disk.a there %v", strings.Contains(string(raw), "mem.a"), strings.Contains(string(raw), "disk.a"))
	}
	b = open(mem)
	if _, err := b.Channel(ctx(t), "mem.a"); err == nil {
		t.Fatal("a memory-only channel came back from disk")
	}
	if info, err := b.Channel(ctx(t), "disk.a"); err != nil || info.Messages != 3 || info.LastSeq != 3 {
		t.Fatalf("disk.a after a restart: %+v %v", info, err)
	}
	m, _, err := b.Publish(ctx(t), &broker.Message{Channel: "mem.a", Data: []byte("y")})
	if err != nil || m.Epoch == memEpoch || m.Seq != 1 {
		t.Fatalf("mem.a after a restart: %+v %v (old epoch %s)", m, err, memEpoch)
	}
	b.Close()
	// disk.a becomes memory-only: it leaves the disk.
	b = open(func(string) bool { return true })
	if _, err := b.Channel(ctx(t), "disk.a"); err == nil {
		t.Fatal("a channel that became memory-only was restored")
	}
	b.Close()
	b = open(nil)
	if _, err := b.Channel(ctx(t), "disk.a"); err == nil {
		t.Fatal("a channel that became memory-only stayed on disk")
	}
	b.Close()
}

// A publish sent again after the node restarted (a kill -9 before its
// reply left) is still a duplicate: keys are stored with their messages
// and remembered again, for what is left of their window, on restart.
func TestDurableRestartRemembersIdempotencyKeys(t *testing.T) {
	dir := t.TempDir()
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	b := openDurable(t, dir, broker.MemoryOptions{Now: clock})
	first, _, err := b.Publish(ctx(t), &broker.Message{Channel: "k", Data: []byte("once"), Key: "deploy-42"})
	if err != nil {
		t.Fatal(err)
	}
	b.Publish(ctx(t), &broker.Message{Channel: "k", Data: []byte("no key")})
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	now = now.Add(time.Minute)
	b = openDurable(t, dir, broker.MemoryOptions{Now: clock})
	again, _, err := b.Publish(ctx(t), &broker.Message{Channel: "k", Data: []byte("once"), Key: "deploy-42"})
	if err != nil || !again.Duplicate || again.ID() != first.ID() {
		t.Fatalf("after a restart: %v %s duplicate=%v; first %s", err, again.ID(), again.Duplicate, first.ID())
	}
	b.Close()
	now = now.Add(broker.DedupWindow)
	b = openDurable(t, dir, broker.MemoryOptions{Now: clock})
	defer b.Close()
	late, _, err := b.Publish(ctx(t), &broker.Message{Channel: "k", Data: []byte("once"), Key: "deploy-42"})
	if err != nil || late.Duplicate || late.Seq != 3 {
		t.Fatalf("after the window: %v %s duplicate=%v", err, late.ID(), late.Duplicate)
	}
}
