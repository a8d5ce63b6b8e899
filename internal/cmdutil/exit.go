package cmdutil

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
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

// ValueError says what a flag accepts when its value (from the command
// line, the environment or a config file) does not parse, in place of
// strconv's and time's messages: `--count "abc": want a whole number`.
// where names the source ("--count", "PUSHCTL_COUNT").
func ValueError(where string, fl *pflag.Flag, value string, cause error) error {
	if isSecret(fl) {
		return &FlagError{fmt.Errorf("%s: invalid value", where)}
	}
	return &FlagError{fmt.Errorf("%s %q: %s", where, value, accepts(fl, cause))}
}

// accepts describes the values a flag takes.
func accepts(fl *pflag.Flag, cause error) string {
	switch fl.Value.Type() {
	case "int", "int64", "int32":
		return "want a whole number"
	case "uint", "uint64", "uint32":
		return "want a whole number, 0 or more"
	case "float64", "float32":
		return "want a number"
	case "bool":
		return "want true or false"
	case "duration":
		return "want a duration such as 500ms, 10s, 5m or 1h"
	}
	var ne *strconv.NumError
	if errors.As(cause, &ne) {
		return "want a number"
	}
	return cause.Error()
}

// FlagValueError turns pflag's "invalid argument" errors into ValueError;
// other errors become usage errors as they are.
func FlagValueError(err error) error {
	var ive *pflag.InvalidValueError
	if errors.As(err, &ive) {
		return ValueError("--"+ive.GetFlag().Name, ive.GetFlag(), ive.GetValue(), ive.Unwrap())
	}
	return &FlagError{Err: err}
}
