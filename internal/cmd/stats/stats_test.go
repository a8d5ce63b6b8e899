package stats

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/cmdutil"
	"github.com/pushctl/pushctl/internal/server"
	"github.com/pushctl/pushctl/internal/server/servertest"
)

// TestStats against a broker on loopback: the counters as JSON.
func TestStats(t *testing.T) {
	b, url := servertest.Start(t, server.Options{})
	ctx := context.Background()
	for _, ch := range []string{"a.one", "a.two", "b"} {
		b.Publish(ctx, &broker.Message{Channel: ch, Data: []byte("x")})
	}
	env := map[string]string{"PUSHCTL_SERVER": url}
	out, _, err := cmdutil.RunForTest(ctx, cmdutil.Real(NewCmdStats), env, "--json")
	var st map[string]any
	if err != nil || json.Unmarshal([]byte(out), &st) != nil || st["published"] != float64(3) || st["channels"] != float64(3) {
		t.Fatalf("stats: %s (%v)", out, err)
	}
	if _, _, err := cmdutil.RunForTest(ctx, cmdutil.Real(NewCmdStats), env, "extra"); cmdutil.ExitCode(err) != cmdutil.ExitUsage {
		t.Fatalf("stats extra: %v", err)
	}
}
