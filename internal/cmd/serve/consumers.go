package serve

import (
	"fmt"
	"log/slog"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/broker/backend"
	"github.com/pushctl/pushctl/internal/consumer"
)

// openConsumers opens the broker's durable consumers: in the --data-dir
// beside the channels, or in memory (and, on Redis, per node: they are not
// shared between nodes yet, which serve says at start).
func openConsumers(o *Options, b broker.Broker, kind string, log *slog.Logger) (*consumer.Manager, error) {
	var st consumer.Store
	if kind == backend.Bolt {
		var err error
		if st, err = consumer.OpenBolt(o.DataDir, o.Sync == "none"); err != nil {
			return nil, err
		}
		if n := len(st.Loaded()); n > 0 {
			fmt.Fprintf(o.IO.ErrOut, "pushctl: %d durable consumers restored\n", n)
		}
	}
	if kind == backend.Redis {
		log.Warn("durable consumers are kept by each node in memory: not shared between nodes, lost when the node stops (see docs/consumers.md)")
	}
	return consumer.NewManager(b, consumer.Options{Store: st, Logger: log}), nil
}
