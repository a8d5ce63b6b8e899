// Package channels implements `pushctl channels` and `pushctl stats`.
package channels

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/client"
	"github.com/pushctl/pushctl/internal/cmdutil"
	"github.com/pushctl/pushctl/internal/presence"
	"github.com/spf13/cobra"
)

// Options are the flags of channels and stats.
type Options struct {
	IO      *cmdutil.IOStreams
	Factory *cmdutil.Factory
	Server  string
	Match   string
	JSON    bool
	Delete  bool
}

// NewCmdChannels returns the channels command.
func NewCmdChannels(f *cmdutil.Factory) *cobra.Command {
	o := &Options{IO: f.IO, Factory: f}
	cmd := &cobra.Command{
		Use:   "channels [PATTERN]",
		Short: "List a broker's channels",
		Long: `List the channels of a broker with their subscribers, retained messages and
last id: a table on a terminal, JSON when piped (or with --json). A pattern
(news.*, news.>) narrows the list. --delete deletes the named channel.`,
		Example: `  pushctl channels
  pushctl channels 'builds.>' --json | jq '.[].channel'
  pushctl channels --delete news`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 1 {
				return cmdutil.FlagErrorf("give at most one pattern")
			}
			return nil
		},
		ValidArgsFunction: CompleteChannels(f, &o.Server),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				o.Match = args[0]
				if err := broker.ValidatePattern(o.Match); err != nil {
					return &cmdutil.FlagError{Err: err}
				}
			}
			if o.Delete && (o.Match == "" || broker.IsPattern(o.Match)) {
				return cmdutil.FlagErrorf("--delete needs one channel name")
			}
			return runChannels(cmd.Context(), o)
		},
	}
	f.AddServerFlags(cmd, &o.Server)
	cmd.Flags().BoolVar(&o.JSON, "json", false, "print JSON even on a terminal")
	cmd.Flags().BoolVar(&o.Delete, "delete", false, "delete the named channel (its subscribers are told)")
	return cmd
}

func runChannels(ctx context.Context, o *Options) error {
	c, err := o.Factory.Client(o.Server)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if o.Delete {
		if err := c.DeleteChannel(ctx, o.Match); err != nil {
			return fmt.Errorf("delete %s: %w", o.Match, err)
		}
		fmt.Fprintf(o.IO.ErrOut, "pushctl: deleted %s\n", o.Match)
		return nil
	}
	list, err := c.Channels(ctx, o.Match)
	if err != nil {
		return err
	}
	if o.JSON || !o.IO.OutTTY {
		if list == nil {
			list = []broker.ChannelInfo{}
		}
		return json.NewEncoder(o.IO.Out).Encode(list)
	}
	if len(list) == 0 {
		fmt.Fprintln(o.IO.ErrOut, "no channels")
		return nil
	}
	tw := tabwriter.NewWriter(o.IO.Out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CHANNEL\tSUBSCRIBERS\tRETAINED\tBYTES\tPUBLISHED\tLAST ID\tLAST PUBLISH")
	for _, ch := range list {
		last := "-"
		if !ch.LastPublish.IsZero() {
			last = ago(time.Since(ch.LastPublish))
		}
		lastID := ch.LastID
		if lastID == "" {
			lastID = "-"
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%d\t%s\t%s\n", ch.Name, ch.Subscribers, ch.Messages, size(ch.Bytes), ch.Published, lastID, last)
	}
	return tw.Flush()
}

func ago(d time.Duration) string {
	switch {
	case d < time.Second:
		return "just now"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	}
	return fmt.Sprintf("%dh ago", int(d.Hours()))
}

func size(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1fMiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1fKiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%dB", n)
}

// NewCmdStats returns the stats command.
func NewCmdStats(f *cmdutil.Factory) *cobra.Command {
	o := &Options{IO: f.IO, Factory: f}
	cmd := &cobra.Command{
		Use:   "stats",
		Short: "Show a broker's counters",
		Long:  `Show a broker's counters (GET /stats): a table on a terminal, JSON when piped.`,
		Example: `  pushctl stats
  pushctl stats --json | jq .slow_consumer_disconnects`,
		Args: cmdutil.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.Factory.Client(o.Server)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			st, err := c.Stats(ctx)
			if err != nil {
				return err
			}
			if o.JSON || !o.IO.OutTTY {
				return json.NewEncoder(o.IO.Out).Encode(st)
			}
			keys := make([]string, 0, len(st))
			for k := range st {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			tw := tabwriter.NewWriter(o.IO.Out, 2, 4, 2, ' ', 0)
			for _, k := range keys {
				fmt.Fprintf(tw, "%s\t%v\n", strings.ReplaceAll(k, "_", " "), st[k])
			}
			return tw.Flush()
		},
	}
	f.AddServerFlags(cmd, &o.Server)
	cmd.Flags().BoolVar(&o.JSON, "json", false, "print JSON even on a terminal")
	return cmd
}

// NewCmdWho returns the who command.
func NewCmdWho(f *cmdutil.Factory) *cobra.Command {
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
		ValidArgsFunction: CompleteChannels(f, &o.Server),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.Factory.Client(o.Server)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			list, err := c.Presence(ctx, args[0])
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
				fmt.Fprintf(o.IO.ErrOut, "nobody is on %s\n", args[0])
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
		},
	}
	f.AddServerFlags(cmd, &o.Server)
	cmd.Flags().BoolVar(&o.JSON, "json", false, "print JSON even on a terminal")
	return cmd
}

// CompleteChannels completes channel names from the broker at *server,
// for shells; it stays quiet when the broker cannot be reached.
func CompleteChannels(f *cmdutil.Factory, server *string) func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
		if err := cmdutil.BindEnv(cmd, f.Getenv); err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		c, err := client.NewWithOptions(*server, client.Options{Token: f.Token, CAFile: f.CAFile})
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		list, err := c.Channels(ctx, "")
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var out []string
		for _, ch := range list {
			if strings.HasPrefix(ch.Name, toComplete) {
				out = append(out, fmt.Sprintf("%s\t%s, %d retained", ch.Name, cmdutil.Plural(ch.Subscribers, "subscriber"), ch.Messages))
			}
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}
