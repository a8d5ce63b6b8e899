package server

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// consumerCollector exports each durable consumer's state and counters.
type consumerCollector struct{ s *Server }

var (
	consumerGauges = map[string]*prometheus.Desc{
		"pending":  prometheus.NewDesc("pushctl_consumer_pending", "Messages kept for a durable consumer and not yet acknowledged.", []string{"consumer"}, nil),
		"inflight": prometheus.NewDesc("pushctl_consumer_inflight", "Deliveries of a durable consumer held by clients now.", []string{"consumer"}, nil),
		"lag":      prometheus.NewDesc("pushctl_consumer_lag", "Messages of a durable consumer waiting for delivery.", []string{"consumer"}, nil),
	}
	consumerCounters = map[string]*prometheus.Desc{
		"delivered":     prometheus.NewDesc("pushctl_consumer_delivered_total", "Deliveries of a durable consumer, redeliveries included.", []string{"consumer"}, nil),
		"redelivered":   prometheus.NewDesc("pushctl_consumer_redelivered_total", "Deliveries of a durable consumer's messages after the first.", []string{"consumer"}, nil),
		"acked":         prometheus.NewDesc("pushctl_consumer_acked_total", "Messages a durable consumer's clients acknowledged.", []string{"consumer"}, nil),
		"dead_lettered": prometheus.NewDesc("pushctl_consumer_dead_lettered_total", "Messages sent to a durable consumer's dead-letter channel.", []string{"consumer"}, nil),
		"lost":          prometheus.NewDesc("pushctl_consumer_lost_total", "Messages a durable consumer could not keep (counted gaps).", []string{"consumer"}, nil),
	}
)

func (c consumerCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range consumerGauges {
		ch <- d
	}
	for _, d := range consumerCounters {
		ch <- d
	}
}

func (c consumerCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	list, _ := c.s.door.Consumers(ctx) // Redis unreachable: no consumer figures this time
	for _, i := range list {
		for k, v := range map[string]int{"pending": i.Pending, "inflight": i.Inflight, "lag": i.Lag} {
			ch <- prometheus.MustNewConstMetric(consumerGauges[k], prometheus.GaugeValue, float64(v), i.Name)
		}
		for k, v := range map[string]uint64{"delivered": i.Delivered, "redelivered": i.Redelivered, "acked": i.Acked, "dead_lettered": i.DeadLettered, "lost": i.Lost} {
			ch <- prometheus.MustNewConstMetric(consumerCounters[k], prometheus.CounterValue, float64(v), i.Name)
		}
	}
}
