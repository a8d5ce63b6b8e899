// Package stats implements `pushctl stats`.
package stats

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pushctl/pushctl/internal/cmdutil"
	"github.com/spf13/cobra"
)

// Options are the flags of stats and its dependencies.
type Options struct {
	IO      *cmdutil.IOStreams
	Factory *cmdutil.Factory
	Server  string
	JSON    bool
}

// NewCmdStats returns the stats command.
func NewCmdStats(f *cmdutil.Factory, runF func(context.Context, *Options) error) *cobra.Command {
	o := &Options{IO: f.IO, Factory: f}
	cmd := &cobra.Command{
		Use:   "stats",
		Short: "Show a broker's counters",
		Long:  `Show a broker's counters (GET /stats): a table on a terminal, JSON when piped.`,
		Example: `  pushctl stats
  pushctl stats --json | jq .slow_consumer_disconnects`,
		Args: cmdutil.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
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

// Run prints the broker's counters.
func Run(ctx context.Context, o *Options) error {
	c, err := o.Factory.Client(o.Server)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
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
}
