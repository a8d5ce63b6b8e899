package cmdutil

import (
	"context"
	"io"

	"github.com/spf13/cobra"
)

// RunForTest executes cmd with args and test streams (stdout not a
// terminal), returning what it printed and its error. For the commands'
// own tests.
func RunForTest(ctx context.Context, newCmd func(*Factory) *cobra.Command, env map[string]string, args ...string) (stdout, stderr string, err error) {
	ios, _, out, errOut := Test()
	f := &Factory{IO: ios, Getenv: func(k string) string { return env[k] }}
	cmd := newCmd(f)
	cmd.SetArgs(args)
	cmd.SetOut(io.Discard)
	cmd.SetErr(io.Discard)
	// As the root command does: the environment under the flags.
	cmd.PersistentPreRunE = func(c *cobra.Command, _ []string) error {
		_, err := ApplySettings(c, f.Getenv)
		return err
	}
	err = cmd.ExecuteContext(ctx)
	return out.String(), errOut.String(), err
}

// Real adapts a NewCmdX(f, runF) constructor for RunForTest with runF
// nil: the command does its real work.
func Real[O any](newCmd func(*Factory, func(context.Context, *O) error) *cobra.Command) func(*Factory) *cobra.Command {
	return func(f *Factory) *cobra.Command { return newCmd(f, nil) }
}
