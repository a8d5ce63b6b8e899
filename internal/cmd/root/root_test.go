package root

import (
	"testing"

	"github.com/pushctl/pushctl/internal/cmdutil"
)

// TestCommands: every command is there, with a short and a long help text
// and an example (the generated docs and man pages come from them).
func TestCommands(t *testing.T) {
	ios, _, _, _ := cmdutil.Test()
	cmd := NewCmdRoot(&cmdutil.Factory{IO: ios, Getenv: func(string) string { return "" }})
	want := map[string]bool{"serve": true, "pub": true, "sub": true, "bridge": true, "bench": true, "channels": true,
		"stats": true, "token": true, "keygen": true, "version": true}
	for _, c := range cmd.Commands() {
		if c.Name() == "help" || c.Name() == "completion" {
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
