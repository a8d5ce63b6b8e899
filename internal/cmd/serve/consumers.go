package serve

import (
	"fmt"
	"log/slog"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/broker/backend"
	"github.com/pushctl/pushctl/internal/consumer"
)

// openConsumers opens the broker's durable consumers: in the --data-dir
// beside the channels, or in memory. On Redis they are refused: a consumer
// kept by one node would not be the one a client failing over to another
// node finds, and each node's copy would deliver every message again.
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
	o2 := consumer.Options{Store: st, Logger: log}
	if kind == backend.Redis {
		o2.Unavailable = "durable consumers are not shared between nodes on Redis yet; run them on a broker of its own (serve --data-dir), see docs/consumers.md"
	}
	return consumer.NewManager(b, o2), nil
}
