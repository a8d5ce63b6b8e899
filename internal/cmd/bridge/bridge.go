// Package bridge implements `pushctl bridge`.
package bridge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"text/template"
	"time"

	"github.com/pushctl/pushctl/internal/bridge"
	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/cmdutil"
	"github.com/pushctl/pushctl/internal/zmq"
	"github.com/spf13/cobra"
)

// Options are the flags of bridge and its dependencies.
type Options struct {
	IO *cmdutil.IOStreams

	From, To        string
	Channel         string
	ChannelTemplate string
	Channels        []string
	Count           uint64
	Timeout         time.Duration
	StatsInterval   time.Duration
	JSON            bool
	Quiet           bool
	Headers         []string
	ZMQ             cmdutil.ZMQClientFlags
	ZMQLegacy       bool
	CurveSecret     string
	CurveClients    []string
	Token           string
	CAFile          string
	ConnectTimeout  time.Duration
	Filter          cmdutil.FilterFlags

	checked bool
	bo      bridge.Options
	eo      bridge.EndpointOptions
}

// NewCmdBridge returns the bridge command.
func NewCmdBridge(f *cmdutil.Factory, runF func(context.Context, *Options) error) *cobra.Command {
	o := &Options{IO: f.IO}
	cmd := &cobra.Command{
		Use:   "bridge FROM TO",
		Short: "Pump messages between ZeroMQ, WebSocket, SSE, HTTP and pushctl endpoints",
		Long: `Move every message from FROM to TO, reconnecting either side with backoff.

FROM (a source):
  zmq:tcp://HOST:PORT          ZeroMQ SUB; connects (zmq:@tcp://… binds). --channels filters.
  ws://… wss://…               frames of any WebSocket server
  sse://… http://… https://…   any text/event-stream; resumes with Last-Event-ID
  pushctl://HOST:PORT/CH,…     channels of a pushctl broker; resumes by message id
                               (pushctl://H1:P1,H2:P2/CH: several nodes, in turn)
  pushctls://HOST:PORT/CH,…    the same over TLS (https)
  ds://HOST:PORT/PATH          a Durable Stream (any server; pushctl's are at
                               /v1/stream/…) by long-poll from ?offset= (default
                               now; -1: the start), resuming; ends when it closes
  -                            lines of standard input

TO (a sink):
  zmq:tcp://HOST:PORT          ZeroMQ PUB [channel, payload, seq]; binds (zmq:>tcp://… connects)
  ws://… wss://…               frames to any WebSocket server
  http://… https://…           one POST per message (X-Pushctl-Channel/-Event/-Id headers)
  pushctl://HOST:PORT[/CH]     publish to a pushctl broker (H1:P1,H2:P2: next node
                               when one is down); pushctls:// over TLS
  ds://HOST:PORT/PATH          append to a Durable Stream as an idempotent producer,
                               creating it (?content-type=, default
                               application/octet-stream); dss:// over TLS
  -                            data lines on standard output

Without a port, pushctl://HOST is port 7070 (the broker's default) and
pushctls://HOST port 443.

--where (a jq expression over JSON data) and --match (a regular expression)
move only the messages that match; --count counts those moved, so --count 1
ends at the first match.

An endpoint that never answered within --connect-timeout fails the bridge
with "cannot reach …"; one that answered before is retried with backoff until
the bridge ends, with a warning when it goes away and then at most every 30s.

pushctl envelopes (from a pushctl WebSocket or SSE stream) keep their channel
and event. Counters (moved, dropped, gaps, reconnects) go to stderr every
--stats-interval and when the bridge ends; it exits non-zero when a side fails
for good, saying which.`,
		Example: `  # Cloud to laptop: a remote broker's orders into a local webhook
  pushctl bridge pushctl://push.example.com:7070/orders.'>' http://localhost:3000/hooks
  # A ZeroMQ publisher into a broker's channel, for browsers
  pushctl bridge zmq:tcp://10.0.0.5:5556 pushctl://127.0.0.1:7070 --channels 'sensors.>'
  # Any SSE feed onto a local ZeroMQ PUB socket
  pushctl bridge https://example.com/events zmq:@tcp://127.0.0.1:5557 --channel feed`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 2 {
				return cmdutil.FlagErrorf("bridge takes FROM and TO, got %s", cmdutil.Plural(len(args), "argument"))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			o.From, o.To = args[0], args[1]
			if err := o.check(); err != nil {
				return err
			}
			if runF != nil {
				return runF(cmd.Context(), o)
			}
			return Run(cmd.Context(), o)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&o.Channel, "channel", "", "publish everything to this channel")
	fl.StringVar(&o.ChannelTemplate, "channel-template", "", "compute the channel: a Go template over .Channel, .Event, .ID")
	fl.StringSliceVar(&o.Channels, "channels", nil, "channels or patterns to take from a ZeroMQ source (default: all)")
	fl.Uint64VarP(&o.Count, "count", "n", 0, "stop after moving this many messages")
	fl.DurationVar(&o.Timeout, "timeout", 0, "stop after this long (exit 124 if --count was not reached)")
	fl.DurationVar(&o.StatsInterval, "stats-interval", 10*time.Second, "print counters to stderr this often (0: only at the end)")
	fl.BoolVar(&o.JSON, "json", false, "print the final counters as JSON on stdout")
	fl.BoolVarP(&o.Quiet, "quiet", "q", false, "no warnings or periodic counters")
	fl.StringArrayVarP(&o.Headers, "header", "H", nil, "extra HTTP header for WebSocket, SSE and HTTP endpoints (Name: value)")
	fl.StringVar(&o.ZMQ.Sep, "zmq-sep", " ", "separator of channel and payload in legacy single-frame messages")
	fl.StringVar(&o.ZMQ.ServerKey, "zmq-curve-server-key", "", "CURVE public key of a ZeroMQ peer we connect to")
	fl.StringVar(&o.ZMQ.ClientSecret, "zmq-curve-secret", "", "CURVE secret key: ours as a client, or the server's when we bind")
	fl.StringSliceVar(&o.CurveClients, "zmq-curve-clients", nil, "when we bind with --zmq-curve-secret: client public keys allowed in")
	fl.IntVar(&o.ZMQ.HWM, "zmq-hwm", 10000, "ZeroMQ high-water mark in messages")
	fl.DurationVar(&o.ZMQ.Linger, "zmq-linger", 5*time.Second, "on exit, wait at most this long for queued ZeroMQ messages to leave")
	fl.BoolVar(&o.ZMQLegacy, "zmq-legacy", false, "a ZeroMQ sink sends single-frame \"channel<sep>payload\" messages")
	cmdutil.MarkSecret(cmd, "zmq-curve-secret")
	cmdutil.AddTokenFlags(cmd, &o.Token, &o.CAFile)
	cmdutil.AddConnectTimeoutFlag(cmd, &o.ConnectTimeout)
	cmdutil.AddFilterFlags(cmd, &o.Filter)
	return cmd
}

// Run pumps messages from o.From to o.To until done.
func Run(ctx context.Context, o *Options) error {
	if !o.checked {
		if err := o.check(); err != nil {
			return err
		}
	}
	bo, eo := o.bo, o.eo
	var mu sync.Mutex
	counters := &bridge.Counters{}
	env := &bridge.Env{Counters: counters, ConnectTimeout: o.ConnectTimeout, Warn: func(format string, args ...any) {
		if !o.Quiet {
			mu.Lock()
			fmt.Fprintf(o.IO.ErrOut, "pushctl bridge: "+format+"\n", args...)
			mu.Unlock()
		}
	}}
	src, err := bridge.ParseSource(o.From, eo, env)
	if err != nil {
		return &cmdutil.FlagError{Err: err}
	}
	dst, err := bridge.ParseSink(o.To, eo, env)
	if err != nil {
		return &cmdutil.FlagError{Err: err}
	}
	defer zmq.Shutdown()
	rctx := ctx
	if o.Timeout > 0 {
		var cancel context.CancelFunc
		rctx, cancel = context.WithTimeout(ctx, o.Timeout)
		defer cancel()
	}
	stopStats := make(chan struct{})
	if o.StatsInterval > 0 && !o.Quiet {
		go func() {
			t := time.NewTicker(o.StatsInterval)
			defer t.Stop()
			for {
				select {
				case <-t.C:
					env.Warn("%s", summary(counters))
				case <-stopStats:
					return
				}
			}
		}()
	}
	err = bridge.Run(rctx, src, dst, bo, env)
	close(stopStats)
	if o.JSON {
		json.NewEncoder(o.IO.Out).Encode(counters.Snapshot())
	}
	if !o.Quiet {
		mu.Lock()
		fmt.Fprintf(o.IO.ErrOut, "pushctl bridge: %s -> %s: %s\n", src, dst, summary(counters))
		mu.Unlock()
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil:
		if o.Count > 0 && counters.Moved.Load() < o.Count {
			return fmt.Errorf("%w: moved %d of %s in %s", cmdutil.ErrTimeout, counters.Moved.Load(), cmdutil.Plural(int(o.Count), "message"), o.Timeout)
		}
		return nil
	case ctx.Err() != nil:
		return cmdutil.Stopped(ctx)
	}
	return err
}

// check validates the flags before anything connects, as usage errors
// naming the flag, and prepares the bridge and endpoint options.
func (o *Options) check() error {
	bo := bridge.Options{Channel: o.Channel, Count: o.Count}
	if o.Channel != "" {
		if err := broker.ValidateChannel(o.Channel); err != nil {
			return &cmdutil.FlagError{Err: err}
		}
	}
	if o.ChannelTemplate != "" {
		t, err := template.New("channel").Parse(o.ChannelTemplate)
		if err != nil {
			return cmdutil.FlagErrorf("--channel-template: %v", err)
		}
		bo.ChannelTemplate = t
	}
	for _, c := range o.Channels {
		if err := broker.ValidatePattern(c); err != nil {
			return &cmdutil.FlagError{Err: err}
		}
	}
	if len(o.ZMQ.Sep) != 1 {
		return cmdutil.FlagErrorf("--zmq-sep %q: want one byte", o.ZMQ.Sep)
	}
	if o.ConnectTimeout <= 0 {
		return cmdutil.FlagErrorf("--connect-timeout %s: want a positive duration such as 5s", o.ConnectTimeout)
	}
	flt, err := o.Filter.Compile()
	if err != nil {
		return err
	}
	if flt != nil {
		bo.Filter = func(ctx context.Context, m bridge.Message) bool {
			kind, _ := broker.ClassifyData("", m.Data)
			keep, _ := flt.Keep(ctx, m.Data, kind == broker.KindJSON)
			return keep
		}
	}
	eo := bridge.EndpointOptions{
		Channels: o.Channels, ZMQSep: o.ZMQ.Sep[0], ZMQLegacy: o.ZMQLegacy,
		ZMQ:     zmq.SocketOptions{HWM: o.ZMQ.HWM, Linger: o.ZMQ.Linger},
		Headers: http.Header{}, Token: o.Token, CAFile: o.CAFile, ConnectTimeout: o.ConnectTimeout,
	}
	for _, h := range o.Headers {
		k, v, ok := strings.Cut(h, ":")
		if !ok {
			return cmdutil.FlagErrorf("--header %q: want Name: value", h)
		}
		eo.Headers.Add(strings.TrimSpace(k), strings.TrimSpace(v))
	}
	curve, err := o.curve()
	if err != nil {
		return err
	}
	eo.ZMQ.Curve = curve
	o.bo, o.eo, o.checked = bo, eo, true
	return nil
}

func summary(c *bridge.Counters) string {
	s := fmt.Sprintf("moved %d, dropped %d, gaps %d, reconnects %d",
		c.Moved.Load(), c.Dropped.Load(), c.Gaps.Load(), c.Reconnects.Load())
	if n := c.Filtered.Load(); n > 0 {
		s += fmt.Sprintf(", filtered out %d", n)
	}
	return s
}

// curve configures CURVE for the ZeroMQ side: as a client when a server
// key is given, as a server when only a secret is.
func (o *Options) curve() (*zmq.Curve, error) {
	z := o.ZMQ
	switch {
	case z.ServerKey != "":
		c := &zmq.Curve{ServerPublic: z.ServerKey}
		if z.ClientSecret != "" {
			pub, err := zmq.PublicFromSecret(z.ClientSecret)
			if err != nil {
				return nil, fmt.Errorf("--zmq-curve-secret: %w", err)
			}
			c.ClientPublic, c.ClientSecret = pub, z.ClientSecret
		}
		return c, nil
	case z.ClientSecret != "":
		if _, err := zmq.PublicFromSecret(z.ClientSecret); err != nil {
			return nil, fmt.Errorf("--zmq-curve-secret: %w", err)
		}
		return &zmq.Curve{ServerSecret: z.ClientSecret, AllowedClients: o.CurveClients}, nil
	}
	return nil, nil
}
