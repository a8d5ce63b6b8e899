// Package channels implements `pushctl channels`.
package channels

import (
	"context"
	"encoding/json"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/cmdutil"
	"github.com/spf13/cobra"
)

// Options are the flags of channels and its dependencies.
type Options struct {
	IO      *cmdutil.IOStreams
	Factory *cmdutil.Factory
	Server  string
	Match   string
	JSON    bool
	Delete  bool
}

// NewCmdChannels returns the channels command.
func NewCmdChannels(f *cmdutil.Factory, runF func(context.Context, *Options) error) *cobra.Command {
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
		ValidArgsFunction: cmdutil.CompleteChannels(f, &o.Server),
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
			if runF != nil {
				return runF(cmd.Context(), o)
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
