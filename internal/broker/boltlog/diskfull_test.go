package boltlog_test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/pushctl/pushctl/internal/broker"
)

// TestDiskFullFailsPublishesLosesNothing fills a small tmpfs: publishes
// then fail with ErrStore (never acknowledged and lost), and every message
// acknowledged before is there after a restart.
func TestDiskFullFailsPublishesLosesNothing(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs (CI runs as root)")
	}
	dir := filepath.Join(t.TempDir(), "full")
	os.MkdirAll(dir, 0o700)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", dir).Run() })
	b := openDurable(t, dir, broker.MemoryOptions{Retention: broker.Retention{HistorySize: 100000}})
	data := make([]byte, 16<<10)
	acked := 0
	var failure error
	for i := 0; i < 1000; i++ {
		_, _, err := b.Publish(ctx(t), &broker.Message{Channel: "full", Data: data})
		if err != nil {
			failure = err
			break
		}
		acked++
	}
	if !errors.Is(failure, broker.ErrStore) {
		t.Fatalf("after %d publishes: %v, want a store error", acked, failure)
	}
	// Still failing cleanly, not crashing.
	if _, _, err := b.Publish(ctx(t), &broker.Message{Channel: "full", Data: data}); !errors.Is(err, broker.ErrStore) {
		t.Fatalf("next publish: %v", err)
	}
	b.Close()
	b = openDurable(t, dir, broker.MemoryOptions{Retention: broker.Retention{HistorySize: 100000}})
	defer b.Close()
	info, err := b.Channel(ctx(t), "full")
	if err != nil || info.Messages != acked || info.LastSeq != uint64(acked) {
		t.Fatalf("after restart %+v %v; %d were acknowledged", info, err, acked)
	}
}
