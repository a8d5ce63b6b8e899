package consumers

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/pushctl/pushctl/internal/cmdutil"
	"github.com/pushctl/pushctl/internal/server"
	"github.com/pushctl/pushctl/internal/server/servertest"
)

// TestConsumers against a broker on loopback: create, inspect, list,
// delete, and the usage errors.
func TestConsumers(t *testing.T) {
	_, url := servertest.Start(t, server.Options{})
	ctx := context.Background()
	env := map[string]string{"PUSHCTL_SERVER": url}
	run := func(args ...string) (string, error) {
		out, _, err := cmdutil.RunForTest(ctx, cmdutil.Real(NewCmdConsumers), env, args...)
		return out, err
	}
	out, err := run("jobs", "--create", "work.>", "--ack-wait", "1m", "--max-deliveries", "9", "--ordered")
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		Name   string
		Config struct {
			Filter        string
			AckWait       string `json:"ack_wait"`
			MaxDeliveries int    `json:"max_deliveries"`
			MaxInflight   int    `json:"max_inflight"`
		}
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil || info.Name != "jobs" || info.Config.Filter != "work.>" ||
		info.Config.AckWait != "1m0s" || info.Config.MaxDeliveries != 9 || info.Config.MaxInflight != 1 {
		t.Fatalf("create: %s (%v)", out, err)
	}
	if out, err := run(); err != nil || !strings.HasPrefix(out, `[{"name":"jobs"`) {
		t.Fatalf("list: %s (%v)", out, err)
	}
	if _, err := run("jobs", "--delete"); err != nil {
		t.Fatal(err)
	}
	if _, err := run("jobs"); err == nil || !strings.Contains(err.Error(), "consumer_not_found") {
		t.Fatalf("after delete: %v", err)
	}
	for _, args := range [][]string{{"bad name"}, {"--delete"}, {"x", "--ack-wait", "1s"}, {"x", "--create", "a..b"}, {"x", "--create", "a", "--delete"}, {"a", "b"}} {
		if _, err := run(args...); cmdutil.ExitCode(err) != cmdutil.ExitUsage {
			t.Errorf("%v: %v, want a usage error", args, err)
		}
	}
}
