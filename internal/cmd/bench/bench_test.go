package bench

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/pushctl/pushctl/internal/cmdutil"
	"github.com/pushctl/pushctl/internal/server"
	"github.com/pushctl/pushctl/internal/server/servertest"
)

// TestBench runs a small load against a broker on loopback over both
// subscriber transports: every message delivered to every subscriber.
func TestBench(t *testing.T) {
	_, url := servertest.Start(t, server.Options{})
	for _, tr := range []string{"ws", "sse"} {
		out, _, err := cmdutil.RunForTest(context.Background(), NewCmdBench, nil, "--server", url, "--transport", tr,
			"--subscribers", "4", "--publishers", "2", "--messages", "100", "--size", "32", "--format", "json")
		if err != nil {
			t.Fatal(err)
		}
		var r struct {
			Delivered int64 `json:"delivered"`
			Lost      int64 `json:"lost"`
			P99       int64 `json:"p99_ns"`
		}
		if err := json.Unmarshal([]byte(out), &r); err != nil || r.Delivered != 400 || r.Lost != 0 || r.P99 <= 0 {
			t.Fatalf("%s: %s (%v)", tr, out, err)
		}
	}
	if _, _, err := cmdutil.RunForTest(context.Background(), NewCmdBench, nil, "--server", url, "--size", "3"); err == nil {
		t.Fatal("--size 3 accepted")
	}
}
