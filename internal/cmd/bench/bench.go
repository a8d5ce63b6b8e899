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
	IO            *cmdutil.IOStreams
	Config        bench.Config
	Format        string
	Idle          int
	PIDs          []int
	Against       string
	AgainstFlavor string
}

// NewCmdBench returns the bench command.
func NewCmdBench(f *cmdutil.Factory, runF func(context.Context, *Options) error) *cobra.Command {
	o := &Options{IO: f.IO}
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure delivery rate and latency of a broker",
		Long: `Load a broker with subscribers and publishers and report deliveries per
second, publishes per second, publish-to-delivery latency percentiles (p50,
p90, p99, p99.9, max), and messages lost or delivered twice.

Subscribers connect over WebSocket, SSE, NDJSON or long-poll (--transport);
publishers send HTTP requests, one streaming NDJSON request each, WebSocket
publish frames, or ZeroMQ (--publish-over). It works against pushctl and
against brokers with the same /pub/CHANNEL and /sub/CHANNEL shape (--flavor
nchan: ws or sse subscribers, http publishers), and against Centrifugo
(--flavor centrifugo: POST /api/publish, WebSocket subscribers on
/connection/websocket; the server needs client.insecure and
http_api.insecure). --against URL runs the same
load against a second broker right after the first and prints both with
their ratio, so two brokers are compared on one machine in one run.

With --idle N it instead opens N idle subscriptions (ws or sse) and reports
how much the resident memory of the --pid processes grew per connection.

On a terminal a live line on stderr shows the progress.`,
		Example: `  pushctl bench --subscribers 1000 --transport ws --messages 2000
  pushctl bench --subscribers 1000 --publishers 8 --against http://127.0.0.1:18080 --against-flavor nchan
  pushctl bench --subscribers 1 --publishers 1 --publish-over ndjson --messages 1000000
  pushctl bench --idle 10000 --transport sse --pid "$(pgrep -f 'pushctl serve')" --format json`,
		Args: cmdutil.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			for _, f := range []string{o.Config.Flavor, o.AgainstFlavor} {
				switch f {
				case "pushctl", "nchan", "centrifugo":
				default:
					return cmdutil.FlagErrorf("--flavor %q: want pushctl, nchan or centrifugo", f)
				}
			}
			if o.Idle > 0 && o.Config.Transport != "ws" && o.Config.Transport != "sse" {
				return cmdutil.FlagErrorf("--idle takes --transport ws or sse")
			}
			if o.Idle == 0 {
				if o.Config.PublishZMQ != "" && o.Config.PublishOver == "" {
					o.Config.PublishOver = "zmq"
				}
				if err := o.Config.Check(); err != nil {
					return cmdutil.FlagErrorf("%v", err)
				}
				if o.Against != "" {
					other := o.Config
					other.Flavor = o.AgainstFlavor
					if err := other.Check(); err != nil {
						return cmdutil.FlagErrorf("--against: %v", err)
					}
				}
			}
			switch o.Format {
			case "text", "json", "csv":
			default:
				return cmdutil.FlagErrorf("--format %q: want text, json or csv", o.Format)
			}
			if runF != nil {
				return runF(cmd.Context(), o)
			}
			return Run(cmd.Context(), o)
		},
	}
	fl := cmd.Flags()
	c := &o.Config
	fl.StringVarP(&c.Server, "server", "s", "http://127.0.0.1:7070", "broker URL publishers use (env PUSHCTL_SERVER)")
	fl.StringSliceVar(&c.SubscribeTo, "subscribe-to", nil, "spread subscribers over these broker URLs (other nodes of a cluster; default: --server)")
	fl.StringVar(&c.Channel, "channel", "", "channel to use (default: a new one each run, bench<run id>)")
	fl.IntVar(&c.Subscribers, "subscribers", 100, "subscriber connections")
	fl.StringVar(&c.Transport, "transport", "ws", "subscriber transport: ws, sse, ndjson or poll (long-poll)")
	fl.StringVar(&c.PublishOver, "publish-over", "", "how publishers send: http, ndjson (one streaming request each), ws (publish frames) or zmq (default http; zmq with --publish-zmq)")
	fl.IntVar(&c.Publishers, "publishers", 4, "concurrent publishers")
	fl.IntVar(&c.Messages, "messages", 1000, "messages to publish")
	fl.IntVar(&c.Size, "size", 100, "message size in bytes (at least 40)")
	fl.IntVar(&c.Rate, "rate", 0, "publishes per second over all publishers (0: as fast as they are acknowledged)")
	fl.StringVar(&c.Flavor, "flavor", "pushctl", "broker: pushctl, nchan or centrifugo")
	fl.StringVar(&o.Against, "against", "", "also run the same load against this broker URL and print both with their ratio")
	fl.StringVar(&o.AgainstFlavor, "against-flavor", "nchan", "the --against broker: pushctl, nchan or centrifugo")
	fl.DurationVar(&c.Settle, "settle", 5*time.Second, "after publishing, count deliveries as lost once none arrived for this long")
	fl.StringVarP(&o.Format, "format", "o", "text", "output: text, json or csv")
	fl.IntVar(&o.Idle, "idle", 0, "open this many idle connections (--transport ws or sse) and report memory per connection")
	fl.IntSliceVar(&o.PIDs, "pid", nil, "with --idle: server process ids whose resident memory to sum")
	fl.StringVar(&c.PublishZMQ, "publish-zmq", "", "publish over ZeroMQ to this endpoint (a broker's --zmq-in) instead of HTTP")
	fl.IntSliceVar(&c.CostPIDs, "cost-pid", nil, "report the CPU time these processes (a redis-server) used while publishing and delivering, per publish")
	fl.StringVar(&c.RedisStats, "redis-stats", "", "report the commands this Redis (redis://host:port) ran while publishing and delivering, per publish")
	return cmd
}

// Run measures the broker as o says.
func Run(ctx context.Context, o *Options) error {
	if o.IO.ErrTTY {
		o.Config.Live = func(published, delivered uint64, elapsed time.Duration) {
			fmt.Fprintf(o.IO.ErrOut, "\r\033[K%s: %d published, %d delivered, %.0f deliveries/s",
				elapsed.Round(100*time.Millisecond), published, delivered, float64(delivered)/elapsed.Seconds())
		}
	}
	if o.Idle > 0 {
		if len(o.PIDs) == 0 {
			return cmdutil.FlagErrorf("--idle needs --pid of the server process(es)")
		}
		r, err := bench.Idle(ctx, o.Config, o.Idle, o.PIDs)
		if err != nil {
			return err
		}
		if r.BytesPerConn < 0 {
			// The process freed more than the connections took: something
			// else ran there, so the figure says nothing.
			fmt.Fprintf(o.IO.ErrOut, "pushctl: warning: the resident memory of the --pid processes shrank while the connections opened (%.1f MiB -> %.1f MiB): they were busy with other work; measure an otherwise idle broker\n",
				float64(r.RSSBeforeBytes)/(1<<20), float64(r.RSSAfterBytes)/(1<<20))
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
	results := []*bench.Result{}
	configs := []bench.Config{o.Config}
	if o.Against != "" {
		other := o.Config
		other.Server, other.Flavor, other.SubscribeTo = o.Against, o.AgainstFlavor, nil
		if other.Channel != "" {
			other.Channel += "x" // nothing left over from the first run
		}
		configs = append(configs, other)
	}
	for _, c := range configs {
		r, err := bench.Run(ctx, c)
		if o.IO.ErrTTY {
			fmt.Fprint(o.IO.ErrOut, "\r\033[K")
		}
		if err != nil {
			return fmt.Errorf("%s at %s: %w", c.Flavor, c.Server, err)
		}
		results = append(results, r)
	}
	switch o.Format {
	case "json":
		out := map[string]any{"results": results}
		if len(results) == 2 {
			out["ratio"] = ratios(results[0], results[1])
		}
		return json.NewEncoder(o.IO.Out).Encode(out)
	case "csv":
		w := csv.NewWriter(o.IO.Out)
		w.Write([]string{"flavor", "server", "transport", "publish_over", "subscribers", "publishers", "size", "published", "publish_errors", "delivered", "lost", "duplicated", "other_runs",
			"deliveries_per_sec", "publishes_per_sec", "p50_us", "p90_us", "p99_us", "p999_us", "max_us"})
		us := func(d time.Duration) string { return strconv.FormatInt(d.Microseconds(), 10) }
		for _, r := range results {
			w.Write([]string{r.Flavor, r.Server, r.Transport, r.PublishOver, strconv.Itoa(r.Subscribers), strconv.Itoa(r.Publishers), strconv.Itoa(r.Size),
				strconv.Itoa(r.Published), strconv.Itoa(r.PublishErrors), strconv.FormatUint(r.Delivered, 10), strconv.FormatUint(r.Lost, 10), strconv.FormatUint(r.Duplicated, 10), strconv.FormatUint(r.OtherRuns, 10),
				fmt.Sprintf("%.0f", r.DeliveriesPerSec), fmt.Sprintf("%.0f", r.PublishesPerSec), us(r.P50), us(r.P90), us(r.P99), us(r.P999), us(r.Max)})
		}
		w.Flush()
		return w.Error()
	}
	for _, r := range results {
		fmt.Fprintf(o.IO.Out, "%s at %s: %d %s subscribers, %d %s publishers, %d messages of %d bytes\n",
			r.Flavor, r.Server, r.Subscribers, r.Transport, r.Publishers, r.PublishOver, r.Published, r.Size)
		fmt.Fprintf(o.IO.Out, "  delivered %d of %d (lost %d, duplicated %d) in %s: %.0f deliveries/s, %.0f publishes/s\n",
			r.Delivered, r.Expected, r.Lost, r.Duplicated, r.Duration.Round(time.Millisecond), r.DeliveriesPerSec, r.PublishesPerSec)
		fmt.Fprintf(o.IO.Out, "  latency p50 %s  p90 %s  p99 %s  p99.9 %s  max %s\n",
			r.P50.Round(time.Microsecond), r.P90.Round(time.Microsecond), r.P99.Round(time.Microsecond), r.P999.Round(time.Microsecond), r.Max.Round(time.Microsecond))
		if r.OtherRuns > 0 {
			fmt.Fprintf(o.IO.Out, "  ignored %d messages of other runs (the broker replayed what an earlier run published on %s)\n", r.OtherRuns, r.Channel)
		}
		if r.PublishErrors > 0 {
			fmt.Fprintf(o.IO.Out, "  publish errors: %d (the first: %s)\n", r.PublishErrors, r.FirstError)
		}
		if r.CPUPerPublish > 0 || r.CommandsPerPublish > 0 {
			fmt.Fprintf(o.IO.Out, "  cost per publish: CPU %.1f µs (--cost-pid), %.2f Redis commands (--redis-stats)\n",
				float64(r.CPUPerPublish)/float64(time.Microsecond), r.CommandsPerPublish)
		}
	}
	if len(results) == 2 {
		q := ratios(results[0], results[1])
		fmt.Fprintf(o.IO.Out, "%s / %s: deliveries/s %.2fx, publishes/s %.2fx, p50 %.2fx, p99 %.2fx, p99.9 %.2fx (latency below 1 is better)\n",
			results[0].Flavor, results[1].Flavor, q["deliveries_per_sec"], q["publishes_per_sec"], q["p50"], q["p99"], q["p999"])
	}
	return nil
}

// ratios divides a's figures by b's.
func ratios(a, b *bench.Result) map[string]float64 {
	div := func(x, y float64) float64 {
		if y == 0 {
			return 0
		}
		return x / y
	}
	return map[string]float64{
		"deliveries_per_sec": div(a.DeliveriesPerSec, b.DeliveriesPerSec),
		"publishes_per_sec":  div(a.PublishesPerSec, b.PublishesPerSec),
		"p50":                div(float64(a.P50), float64(b.P50)),
		"p99":                div(float64(a.P99), float64(b.P99)),
		"p999":               div(float64(a.P999), float64(b.P999)),
	}
}
