package sub

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/pushctl/pushctl/internal/cmdutil"
)

func parse(t *testing.T, tty bool, args ...string) (*Options, error) {
	t.Helper()
	ios, _, _, _ := cmdutil.Test()
	ios.OutTTY = tty
	f := &cmdutil.Factory{IO: ios, Getenv: func(string) string { return "" }}
	var got *Options
	cmd := NewCmdSub(f, func(_ context.Context, o *Options) error { got = o; return nil })
	cmd.SetArgs(args)
	cmd.SetOut(io.Discard)
	cmd.SetErr(io.Discard)
	return got, cmd.Execute()
}

// TestSubFlags: what each flag sets, and when the terminal UI is used: on
// a terminal, unless a plain-output option asks for lines.
func TestSubFlags(t *testing.T) {
	o, err := parse(t, false, "a", "b.*", "--format", "json", "--count", "3", "--timeout", "2s", "--since", "5m", "--last", "4", "--quiet", "--fail-on-gap")
	if err != nil {
		t.Fatal(err)
	}
	if len(o.Channels) != 2 || o.Format != "json" || o.Count != 3 || o.Timeout != 2*time.Second || o.Since != "5m" || o.Last != 4 || !o.Quiet || !o.FailOnGap || o.TUI {
		t.Fatalf("options %+v", o)
	}
	for _, c := range []struct {
		tty  bool
		args []string
		tui  bool
	}{
		{true, []string{"a"}, true},
		{false, []string{"a"}, false},
		{true, []string{"a", "--no-tui"}, false},
		{true, []string{"a", "--count", "1"}, false},
		{true, []string{"a", "--timeout", "1s"}, false},
		{true, []string{"a", "--template", "{{.Data}}"}, false},
		{true, []string{"a", "--exec", "cat"}, false},
		{true, []string{"a", "--format", "json"}, false},
	} {
		o, err := parse(t, c.tty, c.args...)
		if err != nil || o.TUI != c.tui {
			t.Errorf("tty %v %q: TUI %v (%v), want %v", c.tty, c.args, o != nil && o.TUI, err, c.tui)
		}
	}
	for _, bad := range [][]string{{}, {"a", "--format", "xml"}, {"a..b"}, {"a", "--count", "-1"}, {"a", "--tui-buffer", "5"}} {
		if _, err := parse(t, false, bad...); err == nil {
			t.Errorf("sub %q: accepted", bad)
		}
	}
}
