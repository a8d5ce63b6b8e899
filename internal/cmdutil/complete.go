package cmdutil

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/pushctl/pushctl/internal/client"
	"github.com/spf13/cobra"
)

// CompleteChannels completes channel names from the broker at *server,
// for shells; it stays quiet when the broker cannot be reached.
func CompleteChannels(f *Factory, server *string) func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
		if err := BindEnv(cmd, f.Getenv); err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		c, err := client.NewWithOptions(*server, client.Options{Token: f.Token, CAFile: f.CAFile, ConnectTimeout: 2 * time.Second})
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
				out = append(out, fmt.Sprintf("%s\t%s, %d retained", ch.Name, Plural(ch.Subscribers, "subscriber"), ch.Messages))
			}
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}
