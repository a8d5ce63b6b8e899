package root

import (
	"strings"
	"testing"

	"github.com/pushctl/pushctl/internal/cmdutil"
)

// TestCommands: every command is there, with a short and a long help text
// and an example (the generated docs and man pages come from them).
func TestCommands(t *testing.T) {
	ios, _, _, _ := cmdutil.Test()
	cmd := NewCmdRoot(&cmdutil.Factory{IO: ios, Getenv: func(string) string { return "" }})
	want := map[string]bool{"serve": true, "pub": true, "sub": true, "bridge": true, "bench": true, "channels": true,
		"stats": true, "who": true, "token": true, "zmq": true, "version": true}
	for _, c := range cmd.Commands() {
		if c.Name() == "help" || c.Name() == "completion" || c.Hidden {
			continue
		}
		delete(want, c.Name())
		if c.Short == "" || c.Long == "" {
			t.Errorf("%s lacks help text", c.Name())
		}
		if c.Example == "" && !c.HasSubCommands() {
			t.Errorf("%s has no example", c.Name())
		}
	}
	if len(want) > 0 {
		t.Fatalf("missing commands: %v", want)
	}
}

// TestKeygenAlias: the ZeroMQ key generator lives under zmq; the former
// top-level keygen still runs it, hidden from help and docs.
func TestKeygenAlias(t *testing.T) {
	ios, _, out, _ := cmdutil.Test()
	cmd := NewCmdRoot(&cmdutil.Factory{IO: ios, Getenv: func(string) string { return "" }})
	old, _, err := cmd.Find([]string{"keygen"})
	if err != nil || old.Name() != "keygen" || !old.Hidden {
		t.Fatalf("keygen alias: %v %v", old, err)
	}
	z, _, err := cmd.Find([]string{"zmq", "keygen"})
	if err != nil || z.Name() != "keygen" || z.Hidden || z.Parent().Name() != "zmq" {
		t.Fatalf("zmq keygen: %v %v", z, err)
	}
	for _, args := range [][]string{{"zmq", "keygen", "--json"}, {"keygen", "--json"}} {
		out.Reset()
		cmd.SetArgs(args)
		if err := cmd.Execute(); err != nil || !strings.Contains(out.String(), `"secret":`) {
			t.Fatalf("%v: %q %v", args, out, err)
		}
	}
}
