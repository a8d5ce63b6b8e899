// Package zmq implements `pushctl zmq`, the ZeroMQ tools that are not
// transports of pub, sub and bridge.
package zmq

import (
	"github.com/pushctl/pushctl/internal/cmd/keygen"
	"github.com/pushctl/pushctl/internal/cmdutil"
	"github.com/spf13/cobra"
)

// NewCmdZMQ returns the zmq command and its subcommands.
func NewCmdZMQ(f *cmdutil.Factory) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "zmq",
		Short: "ZeroMQ tools: CURVE keys",
		Long: `Tools for ZeroMQ endpoints. pub, sub and bridge speak ZeroMQ themselves
(--zmq, zmq: endpoints); serve takes --zmq and --zmq-in.`,
		Args: cmdutil.NoArgs,
	}
	cmd.AddCommand(keygen.NewCmdKeygen(f, nil))
	return cmd
}

// NewCmdKeygenAlias is the former top-level `pushctl keygen`, hidden and
// kept so scripts that use it still work.
func NewCmdKeygenAlias(f *cmdutil.Factory) *cobra.Command {
	cmd := keygen.NewCmdKeygen(f, nil)
	cmd.Hidden = true
	return cmd
}
