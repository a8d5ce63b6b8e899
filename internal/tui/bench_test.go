package tui

import (
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
)

// BenchmarkUIIngest feeds messages as fast as the network side can while
// the UI renders 20 frames a second, and reports the rate and the heap
// once everything went through (run with -benchtime 1000000x for the
// memory after 1,000,000 messages).
func BenchmarkUIIngest(b *testing.B) {
	store := NewStore(10000, 64<<20, nil)
	m := New(Config{Source: "bench", Transport: "ndjson", Channels: []string{"bench"}, Store: store})
	m.SetSize(120, 40)
	stop := make(chan struct{})
	done := make(chan struct{})
	var frames atomic.Int64
	go func() {
		defer close(done)
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				m.Refresh()
				_ = m.View()
				frames.Add(1)
			}
		}
	}()
	payload := []byte(strings.Repeat("x", 100))
	now := time.Now()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		store.Add(&broker.Message{Channel: "bench", Epoch: "e", Seq: uint64(i + 1), Data: append([]byte(nil), payload...), Time: now})
	}
	b.StopTimer()
	close(stop)
	<-done
	m.Refresh()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	b.ReportMetric(float64(ms.HeapInuse)/(1<<20), "heap-MiB")
	b.ReportMetric(float64(frames.Load()), "frames")
	if len(m.items) > 10000 {
		b.Fatalf("kept %d items", len(m.items))
	}
}
