package broker_test

import (
	"testing"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/broker/brokertest"
)

func TestMemoryConformance(t *testing.T) {
	brokertest.Run(t, func(t *testing.T, o brokertest.Options) broker.Broker {
		b := broker.NewMemory(broker.MemoryOptions{
			Retention: broker.Retention{HistorySize: o.HistorySize, HistoryAge: o.HistoryAge}, RetentionFor: o.RetentionFor,
			QueueSize: o.QueueSize,
			Now:       o.Now,
		})
		t.Cleanup(func() { b.Close() })
		return b
	})
}
