// Package consumers implements `pushctl consumers`.
package consumers

import (
	"context"
	"encoding/json"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/client"
	"github.com/pushctl/pushctl/internal/cmdutil"
	"github.com/pushctl/pushctl/internal/consumer"
	"github.com/spf13/cobra"
)

// Options are the flags of consumers and its dependencies.
type Options struct {
	IO      *cmdutil.IOStreams
	Factory *cmdutil.Factory
	Server  string
	Name    string
	JSON    bool
	Delete  bool
	// Create names the channel (or pattern) of a consumer to create.
	Create          string
	AckWait         time.Duration
	MaxDeliveries   int
	MaxPending      int
	MaxPendingBytes cmdutil.ByteSize
	Ordered         bool
	All             bool
}

// NewCmdConsumers returns the consumers command.
func NewCmdConsumers(f *cmdutil.Factory, runF func(context.Context, *Options) error) *cobra.Command {
	o := &Options{IO: f.IO, Factory: f}
	cmd := &cobra.Command{
		Use:   "consumers [NAME]",
		Short: "List, inspect, create and delete durable consumers",
		Long: `List a broker's durable consumers (see pushctl sub --durable): their channel,
messages pending (kept and not yet acknowledged), in flight (held by a client
now), lag (waiting for delivery), redelivered, dead-lettered and lost to gaps.
A table on a terminal, JSON when piped (or with --json). With NAME, that
consumer only.

--create CHANNEL creates consumer NAME before anything consumes it, so that
every message published from then on is kept for it. --delete deletes NAME
and every message kept for it.`,
		Example: `  pushctl consumers
  pushctl consumers workers --json | jq .pending
  pushctl consumers workers --create jobs --ack-wait 1m --max-deliveries 10
  pushctl consumers workers --delete`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 1 {
				return cmdutil.FlagErrorf("give at most one consumer name")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				o.Name = args[0]
				if err := consumer.ValidateName(o.Name); err != nil {
					return cmdutil.FlagErrorf("consumer %q: a consumer name is 1 to 64 letters, digits, _ and -", o.Name)
				}
			}
			if err := o.validate(cmd); err != nil {
				return err
			}
			if runF != nil {
				return runF(cmd.Context(), o)
			}
			return run(cmd.Context(), o)
		},
	}
	f.AddServerFlags(cmd, &o.Server)
	fl := cmd.Flags()
	fl.BoolVar(&o.JSON, "json", false, "print JSON even on a terminal")
	fl.BoolVar(&o.Delete, "delete", false, "delete consumer NAME and the messages kept for it")
	fl.StringVar(&o.Create, "create", "", "create consumer NAME on this channel or pattern (an existing one is kept as it is)")
	fl.DurationVar(&o.AckWait, "ack-wait", 0, "with --create: how long a delivery may go unacknowledged (default 30s)")
	fl.IntVar(&o.MaxDeliveries, "max-deliveries", 0, "with --create: deliveries before the dead-letter channel (default 5)")
	fl.IntVar(&o.MaxPending, "max-pending", 0, "with --create: messages kept at most; past it a counted gap (default 100000)")
	fl.Var(&o.MaxPendingBytes, "max-pending-bytes", "with --create: data kept at most (such as 64MiB); past it a counted gap (default 256MiB)")
	fl.BoolVar(&o.Ordered, "ordered", false, "with --create: one message in flight at a time, in order")
	fl.BoolVar(&o.All, "all", false, "with --create: start at the oldest message the channel retains, not at the next one")
	return cmd
}

func (o *Options) validate(cmd *cobra.Command) error {
	if o.Create == "" {
		for _, f := range []string{"ack-wait", "max-deliveries", "max-pending", "max-pending-bytes", "ordered", "all"} {
			if cmd.Flags().Changed(f) {
				return cmdutil.FlagErrorf("--%s goes with --create", f)
			}
		}
	} else if err := broker.ValidatePattern(o.Create); err != nil {
		return &cmdutil.FlagError{Err: err}
	}
	if (o.Delete || o.Create != "") && o.Name == "" {
		return cmdutil.FlagErrorf("--delete and --create need a consumer NAME")
	}
	if o.Delete && o.Create != "" {
		return cmdutil.FlagErrorf("--delete and --create do not go together")
	}
	if o.MaxDeliveries < 0 || o.MaxPending < 0 || o.AckWait < 0 {
		return cmdutil.FlagErrorf("--ack-wait, --max-deliveries and --max-pending want positive values")
	}
	return nil
}

func run(ctx context.Context, o *Options) error {
	c, err := o.Factory.Client(o.Server)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var list []consumer.Info
	switch {
	case o.Delete:
		if err := c.DeleteConsumer(ctx, o.Name); err != nil {
			return fmt.Errorf("delete consumer %s: %w", o.Name, err)
		}
		fmt.Fprintf(o.IO.ErrOut, "pushctl: deleted consumer %s\n", o.Name)
		return nil
	case o.Create != "":
		co := client.ConsumerOptions{Channel: o.Create, AckWait: o.AckWait, MaxDeliveries: o.MaxDeliveries, MaxPending: o.MaxPending,
			MaxPendingBytes: int64(o.MaxPendingBytes)}
		if o.Ordered {
			co.MaxInflight = 1
		}
		if o.All {
			co.Start = consumer.StartAll
		}
		info, err := c.CreateConsumer(ctx, o.Name, co)
		if err != nil {
			return fmt.Errorf("create consumer %s: %w", o.Name, err)
		}
		list = []consumer.Info{*info}
	case o.Name != "":
		info, err := c.Consumer(ctx, o.Name)
		if err != nil {
			return fmt.Errorf("consumer %s: %w", o.Name, err)
		}
		list = []consumer.Info{*info}
	default:
		if list, err = c.Consumers(ctx); err != nil {
			return err
		}
	}
	if o.JSON || !o.IO.OutTTY {
		enc := json.NewEncoder(o.IO.Out)
		if o.Name != "" {
			return enc.Encode(list[0])
		}
		if list == nil {
			list = []consumer.Info{}
		}
		return enc.Encode(list)
	}
	if len(list) == 0 {
		fmt.Fprintln(o.IO.ErrOut, "no consumers")
		return nil
	}
	tw := tabwriter.NewWriter(o.IO.Out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CONSUMER\tCHANNEL\tPENDING\tIN FLIGHT\tLAG\tACKED\tREDELIVERED\tDEAD-LETTERED\tLOST")
	for _, i := range list {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\n", i.Name, i.Config.Filter, i.Pending, i.Inflight, i.Lag,
			i.Acked, i.Redelivered, i.DeadLettered, i.Lost)
	}
	return tw.Flush()
}
