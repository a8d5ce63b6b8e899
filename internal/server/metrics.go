package server

import (
	"context"
	"log/slog"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Transports, as labelled in metrics.
const (
	tWebSocket = iota
	tSSE
	tNDJSON
	tRaw
	tPoll
	tPusher
	numTransports
)

var transportNames = [numTransports]string{"websocket", "sse", "ndjson", "raw", "longpoll", "pusher"}

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

// collector exposes the server's and the broker's counters to Prometheus,
// read at scrape time, beside the standard Go runtime and process metrics.
type collector struct{ s *Server }

var (
	descConnections   = prometheus.NewDesc("pushctl_connections", "Open subscriber connections by transport.", []string{"transport"}, nil)
	descDeliveries    = prometheus.NewDesc("pushctl_deliveries_total", "Messages written to subscribers by transport.", []string{"transport"}, nil)
	descLatency       = prometheus.NewDesc("pushctl_delivery_latency_seconds", "Time from publish to being written to a subscriber.", []string{"transport"}, nil)
	descDisconnects   = prometheus.NewDesc("pushctl_disconnects_total", "Subscriber connections that ended, by transport and reason (slow_consumer: fell a queue behind; stalled: took nothing for the write timeout).", []string{"transport", "reason"}, nil)
	descPublished     = prometheus.NewDesc("pushctl_messages_published_total", "Messages published and stored.", nil, nil)
	descQueued        = prometheus.NewDesc("pushctl_messages_queued_total", "Messages handed to subscriber queues.", nil, nil)
	descDropped       = prometheus.NewDesc("pushctl_messages_dropped_total", "Messages discarded from the queues of disconnected slow consumers.", nil, nil)
	descSlow          = prometheus.NewDesc("pushctl_slow_consumer_disconnects_total", "Subscribers disconnected for falling too far behind.", nil, nil)
	descStalled       = prometheus.NewDesc("pushctl_stalled_disconnects_total", "Subscribers disconnected for taking no bytes for the write timeout.", nil, nil)
	descChannels      = prometheus.NewDesc("pushctl_channels", "Channels that exist.", nil, nil)
	descSubscribers   = prometheus.NewDesc("pushctl_subscribers", "Active subscriptions.", nil, nil)
	descStoreMessages = prometheus.NewDesc("pushctl_store_messages", "Messages retained in history.", nil, nil)
	descStoreBytes    = prometheus.NewDesc("pushctl_store_bytes", "Bytes of message data retained in history.", nil, nil)
	descLimitHits     = prometheus.NewDesc("pushctl_limit_hits_total", "Requests refused or cut by a limit or access rule.", []string{"limit"}, nil)
	descHTTPErrors    = prometheus.NewDesc("pushctl_http_errors_total", "HTTP requests answered with an error.", nil, nil)
	descBrokerUp      = prometheus.NewDesc("pushctl_broker_up", "1 when the broker's storage (Redis) is reachable and in step, 0 when degraded.", nil, nil)
)

// Describe sends the fixed metrics; the extra ones (ZeroMQ counters) are
// named at scrape time and so unchecked.
func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descConnections, descDeliveries, descLatency, descDisconnects, descPublished, descQueued,
		descDropped, descSlow, descStalled, descChannels, descSubscribers, descStoreMessages, descStoreBytes, descLimitHits, descHTTPErrors, descBrokerUp} {
		ch <- d
	}
}

// Collect reads every counter now.
func (c collector) Collect(ch chan<- prometheus.Metric) {
	s, m := c.s, &c.s.metrics
	for i, n := range transportNames {
		ch <- prometheus.MustNewConstMetric(descConnections, prometheus.GaugeValue, float64(m.connections[i].Load()), n)
		ch <- prometheus.MustNewConstMetric(descDeliveries, prometheus.CounterValue, float64(m.deliveries[i].Load()), n)
		h := &m.latency[i]
		buckets := make(map[float64]uint64, len(latencyBuckets))
		var cum uint64
		for b, le := range latencyBuckets {
			cum += h.counts[b].Load()
			buckets[le] = cum
		}
		cum += h.counts[len(latencyBuckets)].Load()
		ch <- prometheus.MustNewConstHistogram(descLatency, cum, float64(h.sumNs.Load())/1e9, buckets, n)
	}
	var stalled uint64
	m.disconnects.Range(func(k, v any) bool {
		dk, n := k.(disconnectKey), v.(*atomic.Uint64).Load()
		if dk.reason == CodeStalled {
			stalled += n
		}
		ch <- prometheus.MustNewConstMetric(descDisconnects, prometheus.CounterValue, float64(n), transportNames[dk.transport], dk.reason)
		return true
	})
	st := s.door.Stats()
	ch <- prometheus.MustNewConstMetric(descPublished, prometheus.CounterValue, float64(st.Published))
	ch <- prometheus.MustNewConstMetric(descQueued, prometheus.CounterValue, float64(st.Delivered))
	ch <- prometheus.MustNewConstMetric(descDropped, prometheus.CounterValue, float64(st.Dropped))
	ch <- prometheus.MustNewConstMetric(descSlow, prometheus.CounterValue, float64(st.SlowConsumers))
	ch <- prometheus.MustNewConstMetric(descStalled, prometheus.CounterValue, float64(stalled))
	ch <- prometheus.MustNewConstMetric(descChannels, prometheus.GaugeValue, float64(st.Channels))
	ch <- prometheus.MustNewConstMetric(descSubscribers, prometheus.GaugeValue, float64(st.Subscribers))
	if list, err := s.door.Channels(context.Background()); err == nil {
		var msgs, bytes int64
		for _, c := range list {
			msgs += int64(c.Messages)
			bytes += c.Bytes
		}
		ch <- prometheus.MustNewConstMetric(descStoreMessages, prometheus.GaugeValue, float64(msgs))
		ch <- prometheus.MustNewConstMetric(descStoreBytes, prometheus.GaugeValue, float64(bytes))
	}
	s.door.Refusals(func(reason string, n uint64) {
		ch <- prometheus.MustNewConstMetric(descLimitHits, prometheus.CounterValue, float64(n), reason)
	})
	ch <- prometheus.MustNewConstMetric(descHTTPErrors, prometheus.CounterValue, float64(m.errors.Load()))
	up := 1.0
	if s.door.Health() != nil {
		up = 0
	}
	ch <- prometheus.MustNewConstMetric(descBrokerUp, prometheus.GaugeValue, up)
	if s.opts.ExtraStats != nil {
		for k, v := range s.opts.ExtraStats() {
			d := prometheus.NewDesc("pushctl_"+k+"_total", strings.ReplaceAll(k, "_", " ")+".", nil, nil)
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v))
		}
	}
}

// newMetricsHandler serves Prometheus exposition for s, with the Go
// runtime and process collectors (RSS, goroutines, GC, file descriptors).
func newMetricsHandler(s *Server) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collector{s}, consumerCollector{s}, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(s.opts.Hooks.Collectors()...)
	reg.MustRegister(s.door.EventCollectors()...)
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)})
}

func (s *Server) handleMetrics(w http.ResponseWriter, r *http.Request) error {
	s.metricsHandler.ServeHTTP(w, r)
	return nil
}
