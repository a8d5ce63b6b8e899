package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

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
		out, _, err := cmdutil.RunForTest(context.Background(), cmdutil.Real(NewCmdBench), nil, "--server", url, "--transport", tc[0], "--publish-over", tc[1],
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
		if _, _, err := cmdutil.RunForTest(context.Background(), cmdutil.Real(NewCmdBench), nil, append([]string{"--server", url}, bad...)...); err == nil {
			t.Fatalf("%v accepted", bad)
		}
	}
}

// TestBenchAgainst runs the same load against two brokers and prints both
// with their ratio.
func TestBenchAgainst(t *testing.T) {
	_, a := servertest.Start(t, server.Options{})
	_, b := servertest.Start(t, server.Options{})
	out, _, err := cmdutil.RunForTest(context.Background(), cmdutil.Real(NewCmdBench), nil, "--server", a, "--against", b, "--against-flavor", "pushctl",
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
	out, _, err := cmdutil.RunForTest(context.Background(), cmdutil.Real(NewCmdBench), nil, "--server", url,
		"--subscribers", "1", "--publishers", "1", "--messages", "20", "--settle", "100ms")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "publish errors: ") || !strings.Contains(out, "(the first: publish: HTTP 429)") {
		t.Fatalf("output does not report the refused publishes:\n%s", out)
	}
}

// TestBenchIgnoresOtherRuns: messages on the channel that another run
// published (a broker that keeps messages replays them; here another
// publisher sends them during the run) are not counted as deliveries or
// duplicates of this run; each run without --channel gets a channel of
// its own.
func TestBenchIgnoresOtherRuns(t *testing.T) {
	_, url := servertest.Start(t, server.Options{})
	stop := make(chan struct{})
	done := make(chan int)
	go func() {
		sent := 0
		defer func() { done <- sent }()
		for n := 1; ; n = n%40 + 1 {
			select {
			case <-stop:
				return
			default:
			}
			body := fmt.Sprintf("ffffff|%d|%d|xxxxxxxxxxxxxxx", time.Now().UnixNano(), n)
			resp, err := http.Post(url+"/pub/shared", "text/plain", strings.NewReader(body))
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			sent++
		}
	}()
	out, _, err := cmdutil.RunForTest(context.Background(), cmdutil.Real(NewCmdBench), nil, "--server", url, "--channel", "shared",
		"--subscribers", "3", "--publishers", "2", "--messages", "40", "--size", "48", "--rate", "400", "--format", "json")
	close(stop)
	if sent := <-done; sent == 0 {
		t.Fatal("the other publisher sent nothing")
	}
	if err != nil {
		t.Fatal(err)
	}
	var r struct {
		Results []struct {
			Channel    string `json:"channel"`
			Delivered  int64  `json:"delivered"`
			Lost       int64  `json:"lost"`
			Duplicated int64  `json:"duplicated"`
			OtherRuns  int64  `json:"other_runs"`
		} `json:"results"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil || len(r.Results) != 1 {
		t.Fatalf("%s (%v)", out, err)
	}
	if g := r.Results[0]; g.Channel != "shared" || g.Delivered != 120 || g.Lost != 0 || g.Duplicated != 0 || g.OtherRuns == 0 {
		t.Fatalf("want 120 delivered, none lost or duplicated, other runs' messages counted apart: %s", out)
	}

	channels := map[string]bool{}
	for range 2 {
		out, _, err := cmdutil.RunForTest(context.Background(), cmdutil.Real(NewCmdBench), nil, "--server", url,
			"--subscribers", "1", "--publishers", "1", "--messages", "5", "--format", "json")
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal([]byte(out), &r); err != nil || len(r.Results) != 1 || !strings.HasPrefix(r.Results[0].Channel, "bench") {
			t.Fatalf("%s (%v)", out, err)
		}
		channels[r.Results[0].Channel] = true
	}
	if len(channels) != 2 {
		t.Fatalf("two runs used the same channel: %v", channels)
	}
}
