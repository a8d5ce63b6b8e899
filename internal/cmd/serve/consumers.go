package serve

import (
	"fmt"
	"log/slog"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/broker/backend"
	"github.com/pushctl/pushctl/internal/broker/redislog"
	"github.com/pushctl/pushctl/internal/consumer"
)

// openConsumers opens the broker's durable consumers: in the --data-dir
// beside the channels, in memory, or on Redis, where every node shares
// them (a client failing over to another node finds its consumer there).
func openConsumers(o *Options, b *broker.Core, kind string, log *slog.Logger) (consumer.Engine, error) {
	if kind == backend.Redis {
		l, ok := b.Log().(*redislog.Log)
		if !ok {
			return nil, fmt.Errorf("durable consumers: the Redis broker has no Redis log")
		}
		return consumer.NewRedis(b, consumer.RedisOptions{Client: l.Client(), Prefix: l.Prefix(), LeaseTTL: l.LeaseTTL(), Node: l.Node(), Logger: log})
	}
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
	return consumer.NewManager(b, consumer.Options{Store: st, Logger: log}).Engine(), nil
}
