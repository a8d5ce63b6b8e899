package cmdutil

import (
	"context"
	"errors"
	"fmt"
	"github.com/spf13/cobra"
)

// Exit codes. ExitCode is the one place errors map to them.
const (
	ExitOK          = 0
	ExitError       = 1
	ExitUsage       = 2
	ExitTimeout     = 124
	ExitInterrupted = 130
)

// FlagError is a usage error: bad flags or arguments.
type FlagError struct{ Err error }

func (e *FlagError) Error() string { return e.Err.Error() }
func (e *FlagError) Unwrap() error { return e.Err }

// FlagErrorf returns a usage error.
func FlagErrorf(format string, args ...any) error {
	return &FlagError{fmt.Errorf(format, args...)}
}

// ErrTimeout means the command gave up before the expected outcome
// (messages, subscribers) within its --timeout.
var ErrTimeout = errors.New("timed out")

// ErrInterrupted means the user interrupted the command (SIGINT, Ctrl-C).
var ErrInterrupted = errors.New("interrupted")

// ErrTerminated means the command was asked to stop (SIGTERM, a service
// manager's stop).
var ErrTerminated = errors.New("terminated")

// Stopped is what a long-running service (serve, bridge) returns once it
// has shut down because ctx ended: nil when it was asked to stop
// (SIGTERM), ErrInterrupted when it was interrupted (exit 130).
func Stopped(ctx context.Context) error {
	if errors.Is(context.Cause(ctx), ErrTerminated) {
		return nil
	}
	return ErrInterrupted
}

// ExitCode maps an error to the process exit code.
func ExitCode(err error) int {
	var fe *FlagError
	switch {
	case err == nil:
		return ExitOK
	case errors.As(err, &fe):
		return ExitUsage
	case errors.Is(err, ErrTimeout):
		return ExitTimeout
	case errors.Is(err, ErrInterrupted), errors.Is(err, context.Canceled):
		return ExitInterrupted
	}
	return ExitError
}

// MinimumArgs is cobra.MinimumNArgs with a usage error that says what is missing.
func MinimumArgs(n int, what string) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) < n {
			return FlagErrorf("missing %s", what)
		}
		return nil
	}
}

// NoArgs is cobra.NoArgs with a usage error.
func NoArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return FlagErrorf("%s takes no arguments, got %q", cmd.CommandPath(), args)
	}
	return nil
}
