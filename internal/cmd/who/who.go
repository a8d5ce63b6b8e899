// Package who implements `pushctl who`.
package who

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/cmdutil"
	"github.com/pushctl/pushctl/internal/presence"
	"github.com/spf13/cobra"
)

// Options are the flags of who and its dependencies.
type Options struct {
	IO      *cmdutil.IOStreams
	Factory *cmdutil.Factory
	Server  string
	Channel string
	JSON    bool
}

// NewCmdWho returns the who command.
func NewCmdWho(f *cmdutil.Factory, runF func(context.Context, *Options) error) *cobra.Command {
	o := &Options{IO: f.IO, Factory: f}
	cmd := &cobra.Command{
		Use:   "who CHANNEL",
		Short: "List the members present on a channel",
		Long: `List the members of a channel's presence (GET /channels/CHANNEL/presence):
their ids, how many connections each has on the broker, and their info. A
table on a terminal, JSON when piped (or with --json). Members join over the
WebSocket protocol ({"type":"join"}) or as Pusher presence channels. Nodes
sharing Redis share presence: any node lists every member, with how many
nodes hold it, and the connections counted are those of the node asked.`,
		Example: `  pushctl who room.lobby
  pushctl who room.lobby --json | jq -r '.[].id'`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return cmdutil.FlagErrorf("give one channel")
			}
			if err := broker.ValidateChannel(args[0]); err != nil {
				return &cmdutil.FlagError{Err: err}
			}
			return nil
		},
		ValidArgsFunction: cmdutil.CompleteChannels(f, &o.Server),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.Channel = args[0]
			if runF != nil {
				return runF(cmd.Context(), o)
			}
			return Run(cmd.Context(), o)
		},
	}
	f.AddServerFlags(cmd, &o.Server)
	cmd.Flags().BoolVar(&o.JSON, "json", false, "print JSON even on a terminal")
	return cmd
}

// Run lists the members present on o.Channel.
func Run(ctx context.Context, o *Options) error {
	c, err := o.Factory.Client(o.Server)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	list, err := c.Presence(ctx, o.Channel)
	if err != nil {
		return err
	}
	if o.JSON || !o.IO.OutTTY {
		if list == nil {
			list = []presence.Member{}
		}
		return json.NewEncoder(o.IO.Out).Encode(list)
	}
	if len(list) == 0 {
		fmt.Fprintf(o.IO.ErrOut, "nobody is on %s\n", o.Channel)
		return nil
	}
	tw := tabwriter.NewWriter(o.IO.Out, 2, 4, 2, ' ', 0)
	shared := slices.ContainsFunc(list, func(m presence.Member) bool { return m.Nodes > 0 })
	if shared {
		fmt.Fprintln(tw, "MEMBER\tNODES\tCONNECTIONS HERE\tINFO")
	} else {
		fmt.Fprintln(tw, "MEMBER\tCONNECTIONS\tINFO")
	}
	for _, m := range list {
		info := string(m.Info)
		if info == "" {
			info = "-"
		}
		if shared {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%s\n", m.ID, m.Nodes, m.Connections, info)
		} else {
			fmt.Fprintf(tw, "%s\t%d\t%s\n", m.ID, m.Connections, info)
		}
	}
	return tw.Flush()
}
