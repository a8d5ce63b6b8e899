// Package root assembles the pushctl command tree and runs it.
package root

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/pushctl/pushctl/internal/cmd/bench"
	"github.com/pushctl/pushctl/internal/cmd/bridge"
	"github.com/pushctl/pushctl/internal/cmd/channels"
	"github.com/pushctl/pushctl/internal/cmd/consumers"
	"github.com/pushctl/pushctl/internal/cmd/pub"
	"github.com/pushctl/pushctl/internal/cmd/serve"
	"github.com/pushctl/pushctl/internal/cmd/stats"
	"github.com/pushctl/pushctl/internal/cmd/sub"
	"github.com/pushctl/pushctl/internal/cmd/token"
	"github.com/pushctl/pushctl/internal/cmd/version"
	"github.com/pushctl/pushctl/internal/cmd/who"
	"github.com/pushctl/pushctl/internal/cmd/zmq"
	"github.com/pushctl/pushctl/internal/cmdutil"
	"github.com/spf13/cobra"
)

// NewCmdRoot returns the whole command tree.
func NewCmdRoot(f *cmdutil.Factory) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "pushctl",
		Short: "A publish/subscribe toolbox: broker, publisher, subscriber, bridge and benchmark",
		Long: `pushctl is one binary for real-time push: run a broker (serve), publish to
channels over HTTP, WebSocket or ZeroMQ (pub), tail channels in a terminal UI
or from scripts (sub), pump messages between ZeroMQ, WebSocket, SSE, HTTP and
brokers (bridge), and measure it all (bench). Browsers subscribe over
WebSocket, SSE or long-poll.

Every flag can also be set as a PUSHCTL_* environment variable (--server is
PUSHCTL_SERVER). Exit codes: 0 ok, 1 error, 2 usage, 124 timed out, 130
interrupted.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			src, err := cmdutil.ApplySettings(cmd, f.Getenv)
			f.Sources = src
			return err
		},
	}
	cmd.SetIn(f.IO.In)
	cmd.SetOut(f.IO.Out)
	cmd.SetErr(f.IO.ErrOut)
	cmd.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return cmdutil.FlagValueError(err)
	})
	cmd.AddCommand(
		serve.NewCmdServe(f, nil),
		pub.NewCmdPub(f, nil),
		sub.NewCmdSub(f, nil),
		bridge.NewCmdBridge(f, nil),
		channels.NewCmdChannels(f, nil),
		consumers.NewCmdConsumers(f, nil),
		stats.NewCmdStats(f, nil),
		who.NewCmdWho(f, nil),
		bench.NewCmdBench(f, nil),
		zmq.NewCmdZMQ(f),
		zmq.NewCmdKeygenAlias(f), // the former name, hidden
		token.NewCmdToken(f),
		version.NewCmdVersion(f, nil),
	)
	return cmd
}

// Main runs pushctl with the process's arguments and returns the exit code.
func Main() int {
	f := cmdutil.New()
	// The context says which signal ended it: services exit 0 when asked
	// to stop (SIGTERM) and 130 when interrupted. A second signal kills.
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		s, ok := <-sigs
		if !ok {
			return
		}
		signal.Stop(sigs)
		if s == syscall.SIGTERM {
			cancel(cmdutil.ErrTerminated)
		} else {
			cancel(cmdutil.ErrInterrupted)
		}
	}()
	defer func() { signal.Stop(sigs); close(sigs) }()
	cmd := NewCmdRoot(f)
	err := cmd.ExecuteContext(ctx)
	if err != nil && strings.HasPrefix(err.Error(), "unknown command") {
		err = &cmdutil.FlagError{Err: err}
	}
	code := cmdutil.ExitCode(err)
	if err != nil {
		if errors.Is(err, cmdutil.ErrInterrupted) || errors.Is(err, context.Canceled) {
			fmt.Fprintln(f.IO.ErrOut, "pushctl: interrupted")
		} else {
			fmt.Fprintf(f.IO.ErrOut, "pushctl: %v\n", err)
		}
		var fe *cmdutil.FlagError
		if errors.As(err, &fe) {
			fmt.Fprintln(f.IO.ErrOut, "Run 'pushctl --help' for usage.")
		}
	}
	return code
}
