package server

import (
	"bufio"
	"fmt"
	"math"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Transports, as labelled in metrics.
const (
	tWebSocket = iota
	tSSE
	tNDJSON
	tRaw
	tPoll
	numTransports
)

var transportNames = [numTransports]string{"websocket", "sse", "ndjson", "raw", "longpoll"}

// latencyBuckets are the upper bounds, in seconds, of the publish-to-
// delivery histogram.
var latencyBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

type histogram struct {
	counts [16]atomic.Uint64 // len(latencyBuckets)+1, the last is +Inf
	sumNs  atomic.Uint64
	n      atomic.Uint64
}

func (h *histogram) observe(d time.Duration) {
	s := d.Seconds()
	i := sort.SearchFloat64s(latencyBuckets, s)
	h.counts[i].Add(1)
	h.sumNs.Add(uint64(max(d, 0)))
	h.n.Add(1)
}

// metrics are the server's own counters; the broker's come from Stats.
type metrics struct {
	connections [numTransports]atomic.Int64
	deliveries  [numTransports]atomic.Uint64
	latency     [numTransports]histogram
	requests    atomic.Uint64
	errors      atomic.Uint64
	disconnects sync.Map // disconnectKey -> *atomic.Uint64
}

type disconnectKey struct {
	transport int
	reason    string
}

// disconnected counts a subscriber connection that ended, by reason.
func (m *metrics) disconnected(t int, reason string) {
	k := disconnectKey{t, reason}
	v, ok := m.disconnects.Load(k)
	if !ok {
		v, _ = m.disconnects.LoadOrStore(k, new(atomic.Uint64))
	}
	v.(*atomic.Uint64).Add(1)
}

// disconnectsByReason sums disconnects over transports.
func (m *metrics) disconnectsByReason() map[string]uint64 {
	out := map[string]uint64{}
	m.disconnects.Range(func(k, v any) bool {
		out[k.(disconnectKey).reason] += v.(*atomic.Uint64).Load()
		return true
	})
	return out
}

// delivered records messages written to a client of transport t.
func (m *metrics) delivered(t int, published []time.Time, now time.Time) {
	m.deliveries[t].Add(uint64(len(published)))
	for _, p := range published {
		m.latency[t].observe(now.Sub(p))
	}
}

// handleMetrics serves Prometheus text exposition format 0.0.4.
func (s *Server) handleMetrics(w http.ResponseWriter, r *http.Request) error {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	bw := bufio.NewWriter(w)
	defer bw.Flush()
	m := &s.metrics
	metric := func(name, typ, help string) {
		fmt.Fprintf(bw, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
	}
	metric("pushctl_connections", "gauge", "Open subscriber connections by transport.")
	for i, n := range transportNames {
		fmt.Fprintf(bw, "pushctl_connections{transport=%q} %d\n", n, m.connections[i].Load())
	}
	metric("pushctl_deliveries_total", "counter", "Messages written to subscribers by transport.")
	for i, n := range transportNames {
		fmt.Fprintf(bw, "pushctl_deliveries_total{transport=%q} %d\n", n, m.deliveries[i].Load())
	}
	metric("pushctl_delivery_latency_seconds", "histogram", "Time from publish to being written to a subscriber.")
	for i, n := range transportNames {
		h := &m.latency[i]
		var cum uint64
		for b, le := range latencyBuckets {
			cum += h.counts[b].Load()
			fmt.Fprintf(bw, "pushctl_delivery_latency_seconds_bucket{transport=%q,le=%q} %d\n", n, formatFloat(le), cum)
		}
		cum += h.counts[len(latencyBuckets)].Load()
		fmt.Fprintf(bw, "pushctl_delivery_latency_seconds_bucket{transport=%q,le=\"+Inf\"} %d\n", n, cum)
		fmt.Fprintf(bw, "pushctl_delivery_latency_seconds_sum{transport=%q} %s\n", n, formatFloat(float64(h.sumNs.Load())/1e9))
		fmt.Fprintf(bw, "pushctl_delivery_latency_seconds_count{transport=%q} %d\n", n, cum)
	}
	st := s.b.Stats()
	metric("pushctl_messages_published_total", "counter", "Messages published and stored.")
	fmt.Fprintf(bw, "pushctl_messages_published_total %d\n", st.Published)
	metric("pushctl_messages_queued_total", "counter", "Messages handed to subscriber queues.")
	fmt.Fprintf(bw, "pushctl_messages_queued_total %d\n", st.Delivered)
	metric("pushctl_messages_dropped_total", "counter", "Messages discarded from the queues of disconnected slow consumers.")
	fmt.Fprintf(bw, "pushctl_messages_dropped_total %d\n", st.Dropped)
	metric("pushctl_slow_consumer_disconnects_total", "counter", "Subscribers disconnected for falling too far behind.")
	fmt.Fprintf(bw, "pushctl_slow_consumer_disconnects_total %d\n", st.SlowConsumers)
	metric("pushctl_channels", "gauge", "Channels that exist.")
	fmt.Fprintf(bw, "pushctl_channels %d\n", st.Channels)
	metric("pushctl_subscribers", "gauge", "Active subscriptions.")
	fmt.Fprintf(bw, "pushctl_subscribers %d\n", st.Subscribers)
	if list, err := s.b.Channels(r.Context()); err == nil {
		var msgs, bytes int64
		for _, c := range list {
			msgs += int64(c.Messages)
			bytes += c.Bytes
		}
		metric("pushctl_store_messages", "gauge", "Messages retained in history.")
		fmt.Fprintf(bw, "pushctl_store_messages %d\n", msgs)
		metric("pushctl_store_bytes", "gauge", "Bytes of message data retained in history.")
		fmt.Fprintf(bw, "pushctl_store_bytes %d\n", bytes)
	}
	metric("pushctl_disconnects_total", "counter", "Subscriber connections that ended, by transport and reason (stalled: took nothing for the write timeout).")
	var dks []disconnectKey
	m.disconnects.Range(func(k, _ any) bool { dks = append(dks, k.(disconnectKey)); return true })
	sort.Slice(dks, func(i, j int) bool {
		if dks[i].transport != dks[j].transport {
			return dks[i].transport < dks[j].transport
		}
		return dks[i].reason < dks[j].reason
	})
	for _, k := range dks {
		v, _ := m.disconnects.Load(k)
		fmt.Fprintf(bw, "pushctl_disconnects_total{transport=%q,reason=%q} %d\n", transportNames[k.transport], k.reason, v.(*atomic.Uint64).Load())
	}
	metric("pushctl_limit_hits_total", "counter", "Requests refused or cut by a limit or access rule.")
	s.limitHits.Range(func(k, v any) bool {
		fmt.Fprintf(bw, "pushctl_limit_hits_total{limit=%q} %d\n", k, v.(*atomic.Uint64).Load())
		return true
	})
	metric("pushctl_http_errors_total", "counter", "HTTP requests answered with an error.")
	fmt.Fprintf(bw, "pushctl_http_errors_total %d\n", m.errors.Load())
	if s.opts.ExtraStats != nil {
		extra := s.opts.ExtraStats()
		keys := make([]string, 0, len(extra))
		for k := range extra {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			name := "pushctl_" + k + "_total"
			metric(name, "counter", strings.ReplaceAll(k, "_", " ")+".")
			fmt.Fprintf(bw, "%s %d\n", name, extra[k])
		}
	}
	return nil
}

func formatFloat(f float64) string {
	if f == math.Trunc(f) {
		return fmt.Sprintf("%.0f", f)
	}
	return strings.TrimRight(fmt.Sprintf("%f", f), "0")
}
