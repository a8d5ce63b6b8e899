package bench

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/pushctl/pushctl/internal/cmdutil"
	"github.com/pushctl/pushctl/internal/server"
	"github.com/pushctl/pushctl/internal/server/servertest"
)

// TestBench runs a small load against a broker on loopback over every
// subscriber transport and every way of publishing: every message
// delivered once to every subscriber.
func TestBench(t *testing.T) {
	_, url := servertest.Start(t, server.Options{})
	for _, tc := range [][2]string{{"ws", "http"}, {"sse", "ndjson"}, {"ndjson", "ws"}, {"poll", "http"}} {
		out, _, err := cmdutil.RunForTest(context.Background(), NewCmdBench, nil, "--server", url, "--transport", tc[0], "--publish-over", tc[1],
			"--subscribers", "4", "--publishers", "2", "--messages", "100", "--size", "48", "--format", "json", "--channel", "b"+tc[0])
		if err != nil {
			t.Fatalf("%v: %v", tc, err)
		}
		var r struct {
			Results []struct {
				Delivered   int64  `json:"delivered"`
				Lost        int64  `json:"lost"`
				Duplicated  int64  `json:"duplicated"`
				Published   int64  `json:"published"`
				P99         int64  `json:"p99_ns"`
				PublishOver string `json:"publish_over"`
			} `json:"results"`
		}
		if err := json.Unmarshal([]byte(out), &r); err != nil || len(r.Results) != 1 {
			t.Fatalf("%v: %s (%v)", tc, out, err)
		}
		if g := r.Results[0]; g.Published != 100 || g.Delivered != 400 || g.Lost != 0 || g.Duplicated != 0 || g.P99 <= 0 || g.PublishOver != tc[1] {
			t.Fatalf("%v: %s", tc, out)
		}
	}
	for _, bad := range [][]string{{"--size", "3"}, {"--transport", "carrier-pigeon"}, {"--flavor", "nchan", "--transport", "poll"},
		{"--publish-over", "ws", "--flavor", "nchan"}, {"--publish-over", "zmq"}, {"--against", url, "--against-flavor", "nchan", "--transport", "ndjson"}} {
		if _, _, err := cmdutil.RunForTest(context.Background(), NewCmdBench, nil, append([]string{"--server", url}, bad...)...); err == nil {
			t.Fatalf("%v accepted", bad)
		}
	}
}

// TestBenchAgainst runs the same load against two brokers and prints both
// with their ratio.
func TestBenchAgainst(t *testing.T) {
	_, a := servertest.Start(t, server.Options{})
	_, b := servertest.Start(t, server.Options{})
	out, _, err := cmdutil.RunForTest(context.Background(), NewCmdBench, nil, "--server", a, "--against", b, "--against-flavor", "pushctl",
		"--subscribers", "3", "--publishers", "2", "--messages", "50")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"pushctl at " + a, "pushctl at " + b, "delivered 150 of 150 (lost 0, duplicated 0)", "pushctl / pushctl: deliveries/s "} {
		if !strings.Contains(out, want) {
			t.Fatalf("output lacks %q:\n%s", want, out)
		}
	}
}

// TestBenchReportsPublishErrors: publishes the broker refuses are counted
// and the first one's reason is printed, not lost in the figures.
func TestBenchReportsPublishErrors(t *testing.T) {
	_, url := servertest.Start(t, server.Options{Limits: server.Limits{PublishRate: 1, PublishBurst: 5}})
	out, _, err := cmdutil.RunForTest(context.Background(), NewCmdBench, nil, "--server", url,
		"--subscribers", "1", "--publishers", "1", "--messages", "20", "--settle", "100ms")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "publish errors: ") || !strings.Contains(out, "(the first: publish: HTTP 429)") {
		t.Fatalf("output does not report the refused publishes:\n%s", out)
	}
}
