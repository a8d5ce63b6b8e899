// Package bench implements `pushctl bench`.
package bench

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/pushctl/pushctl/internal/bench"
	"github.com/pushctl/pushctl/internal/cmdutil"
	"github.com/spf13/cobra"
)

// Options are the flags of bench.
type Options struct {
	IO     *cmdutil.IOStreams
	Config bench.Config
	Format string
	Idle   int
	PIDs   []int
}

// NewCmdBench returns the bench command.
func NewCmdBench(f *cmdutil.Factory) *cobra.Command {
	o := &Options{IO: f.IO}
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure delivery rate and latency of a broker",
		Long: `Load a broker with subscribers and HTTP publishers and report deliveries
per second and publish-to-delivery latency percentiles.

It works against pushctl and against brokers with the same /pub/CHANNEL and
/sub/CHANNEL shape (--flavor nchan), so both can be measured in one run on one
machine. With --idle N it instead opens N idle WebSocket subscriptions and
reports how much the resident memory of --pid processes grew per connection.`,
		Example: `  pushctl bench --subscribers 1000 --transport ws --messages 2000
  pushctl bench --server http://127.0.0.1:18080 --flavor nchan --transport sse
  pushctl bench --idle 10000 --pid "$(pgrep -f 'pushctl serve')" --format json`,
		Args: cmdutil.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			switch o.Config.Transport {
			case "ws", "sse":
			default:
				return cmdutil.FlagErrorf("--transport %q: want ws or sse", o.Config.Transport)
			}
			switch o.Config.Flavor {
			case "pushctl", "nchan":
			default:
				return cmdutil.FlagErrorf("--flavor %q: want pushctl or nchan", o.Config.Flavor)
			}
			switch o.Format {
			case "text", "json", "csv":
			default:
				return cmdutil.FlagErrorf("--format %q: want text, json or csv", o.Format)
			}
			return run(cmd.Context(), o)
		},
	}
	fl := cmd.Flags()
	c := &o.Config
	fl.StringVarP(&c.Server, "server", "s", "http://127.0.0.1:7070", "broker URL publishers use (env PUSHCTL_SERVER)")
	fl.StringSliceVar(&c.SubscribeTo, "subscribe-to", nil, "spread subscribers over these broker URLs (other nodes of a cluster; default: --server)")
	fl.StringVar(&c.Channel, "channel", "bench", "channel to use")
	fl.IntVar(&c.Subscribers, "subscribers", 100, "subscriber connections")
	fl.StringVar(&c.Transport, "transport", "ws", "subscriber transport: ws or sse")
	fl.IntVar(&c.Publishers, "publishers", 4, "concurrent HTTP publishers")
	fl.IntVar(&c.Messages, "messages", 1000, "messages to publish")
	fl.IntVar(&c.Size, "size", 100, "message size in bytes (at least 24)")
	fl.IntVar(&c.Rate, "rate", 0, "publishes per second over all publishers (0: as fast as they are acknowledged)")
	fl.StringVar(&c.Flavor, "flavor", "pushctl", "broker: pushctl or nchan")
	fl.DurationVar(&c.Settle, "settle", 5*time.Second, "after publishing, count deliveries as lost once none arrived for this long")
	fl.StringVarP(&o.Format, "format", "o", "text", "output: text, json or csv")
	fl.IntVar(&o.Idle, "idle", 0, "open this many idle WebSocket connections and report memory per connection")
	fl.IntSliceVar(&o.PIDs, "pid", nil, "with --idle: server process ids whose resident memory to sum")
	fl.StringVar(&c.PublishZMQ, "publish-zmq", "", "publish over ZeroMQ to this endpoint (a broker's --zmq-in) instead of HTTP")
	return cmd
}

func run(ctx context.Context, o *Options) error {
	if !o.IO.ErrTTY || o.Format == "text" {
		o.Config.Progress = o.IO.ErrOut
	}
	if o.Idle > 0 {
		if len(o.PIDs) == 0 {
			return cmdutil.FlagErrorf("--idle needs --pid of the server process(es)")
		}
		r, err := bench.Idle(ctx, o.Config, o.Idle, o.PIDs)
		if err != nil {
			return err
		}
		switch o.Format {
		case "json":
			return json.NewEncoder(o.IO.Out).Encode(r)
		case "csv":
			w := csv.NewWriter(o.IO.Out)
			w.Write([]string{"transport", "connections", "rss_before_bytes", "rss_after_bytes", "bytes_per_connection"})
			w.Write([]string{r.Transport, strconv.Itoa(r.Connections), strconv.FormatInt(r.RSSBeforeBytes, 10), strconv.FormatInt(r.RSSAfterBytes, 10), fmt.Sprintf("%.0f", r.BytesPerConn)})
			w.Flush()
			return w.Error()
		}
		fmt.Fprintf(o.IO.Out, "%d idle %s connections: RSS %.1f MiB -> %.1f MiB, %.1f KiB per connection\n",
			r.Connections, strings.ToUpper(r.Transport), float64(r.RSSBeforeBytes)/(1<<20), float64(r.RSSAfterBytes)/(1<<20), r.BytesPerConn/1024)
		return nil
	}
	r, err := bench.Run(ctx, o.Config)
	if err != nil {
		return err
	}
	switch o.Format {
	case "json":
		return json.NewEncoder(o.IO.Out).Encode(r)
	case "csv":
		w := csv.NewWriter(o.IO.Out)
		w.Write([]string{"flavor", "transport", "subscribers", "publishers", "size", "published", "delivered", "lost", "deliveries_per_sec", "p50_us", "p90_us", "p99_us", "p999_us", "max_us"})
		us := func(d time.Duration) string { return strconv.FormatInt(d.Microseconds(), 10) }
		w.Write([]string{r.Flavor, r.Transport, strconv.Itoa(r.Subscribers), strconv.Itoa(r.Publishers), strconv.Itoa(r.Size),
			strconv.Itoa(r.Published), strconv.FormatUint(r.Delivered, 10), strconv.FormatUint(r.Lost, 10),
			fmt.Sprintf("%.0f", r.DeliveriesPerSec), us(r.P50), us(r.P90), us(r.P99), us(r.P999), us(r.Max)})
		w.Flush()
		return w.Error()
	}
	fmt.Fprintf(o.IO.Out, "%s %s: %d subscribers, %d publishers, %d messages of %d bytes\n",
		r.Flavor, r.Transport, r.Subscribers, r.Publishers, r.Published, r.Size)
	fmt.Fprintf(o.IO.Out, "  delivered %d of %d (lost %d) in %s: %.0f deliveries/s, %.0f publishes/s\n",
		r.Delivered, r.Expected, r.Lost, r.Duration.Round(time.Millisecond), r.DeliveriesPerSec, r.PublishesPerSec)
	fmt.Fprintf(o.IO.Out, "  latency p50 %s  p90 %s  p99 %s  p99.9 %s  max %s\n",
		r.P50.Round(time.Microsecond), r.P90.Round(time.Microsecond), r.P99.Round(time.Microsecond), r.P999.Round(time.Microsecond), r.Max.Round(time.Microsecond))
	if r.PublishErrors > 0 {
		fmt.Fprintf(o.IO.Out, "  publish errors: %d\n", r.PublishErrors)
	}
	return nil
}
