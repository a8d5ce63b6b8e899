package pub

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/pushctl/pushctl/internal/cmdutil"
)

// parse runs the pub command's flag handling and checks without
// publishing: the options the run function would get, or the usage error.
func parse(t *testing.T, args ...string) (*Options, error) {
	t.Helper()
	ios, _, _, _ := cmdutil.Test()
	f := &cmdutil.Factory{IO: ios, Getenv: func(string) string { return "" }}
	var got *Options
	cmd := NewCmdPub(f, func(_ context.Context, o *Options) error { got = o; return nil })
	cmd.SetArgs(args)
	cmd.SetOut(io.Discard)
	cmd.SetErr(io.Discard)
	err := cmd.Execute()
	return got, err
}

func TestPubFlags(t *testing.T) {
	o, err := parse(t, "news", "--event", "deploy", "-t", "application/json", "--wait-subscribers", "2", "--timeout", "5s", "--json", "--via", "ws", "-s", "http://h:1", `{"v":1}`, "more")
	if err != nil {
		t.Fatal(err)
	}
	if o.Channel != "news" || len(o.Args) != 2 || o.Event != "deploy" || o.ContentType != "application/json" || o.WaitSubscribers != 2 ||
		o.Timeout != 5*time.Second || !o.JSON || o.Via != "ws" || o.Server != "http://h:1" {
		t.Fatalf("options %+v", o)
	}
	o, err = parse(t, "lines.chan", "--lines", "--file", "in.txt")
	if err != nil || !o.Lines || o.File != "in.txt" || o.Via != "http" || o.Timeout != 30*time.Second {
		t.Fatalf("options %+v, %v", o, err)
	}
	for _, bad := range [][]string{
		{},                                  // no channel
		{"news.*", "x"},                     // a pattern
		{"café", "x"},                       // not a channel name
		{"news", "x", "--file", "f"},        // both
		{"news", "x", "--lines"},            // --lines takes input
		{"news", "x", "--via", "carrier"},   // unknown transport
		{"news", "x", "--timeout", "later"}, // not a duration
	} {
		_, err := parse(t, bad...)
		if err == nil {
			t.Errorf("pub %q: accepted", bad)
			continue
		}
		// Our checks are usage errors (exit 2); cobra's own parse errors
		// become usage errors in the root command.
		var fe *cmdutil.FlagError
		if !errors.As(err, &fe) && !strings.Contains(err.Error(), "invalid argument") && !strings.Contains(err.Error(), "accepts") {
			t.Errorf("pub %q: %v is not a usage error", bad, err)
		}
	}
}
