package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pushctl/pushctl/internal/redistest"
)

// The Durable Streams protocol (/v1/stream/…) judged by its official
// server conformance suite (@durable-streams/server-conformance-tests,
// pinned in testdata/durable-streams/package-lock.json and installed by
// scripts/install-deps.sh --test) against a real pushctl serve on each
// broker: memory, --data-dir and Redis.

var durableStreamsDir, _ = filepath.Abs("../../testdata/durable-streams")

// needDurableStreamsSuite skips (or, in CI, fails) when the suite is not
// installed.
func needDurableStreamsSuite(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat(filepath.Join(durableStreamsDir, "node_modules", "@durable-streams", "server-conformance-tests", "package.json")); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("the Durable Streams conformance suite is missing: scripts/install-deps.sh --test installs it (%v)", err)
		}
		t.Skip("the Durable Streams conformance suite is missing: run scripts/install-deps.sh --test")
	}
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("node is missing: scripts/install-deps.sh --test installs it")
	}
	return node
}

// vitestReport is the part of vitest's JSON report read here.
type vitestReport struct {
	TestResults []struct {
		Message          string `json:"message"`
		AssertionResults []struct {
			FullName        string   `json:"fullName"`
			Status          string   `json:"status"`
			FailureMessages []string `json:"failureMessages"`
		} `json:"assertionResults"`
	} `json:"testResults"`
}

// TestDurableStreamsConformance runs the whole suite against pushctl on
// each broker, the three at once (the suite mostly waits: TTLs, long-polls).
// Every test must pass.
func TestDurableStreamsConformance(t *testing.T) {
	node := needDurableStreamsSuite(t)
	backends := []struct {
		name string
		args []string
	}{
		// A long-poll's 204 after 2 s, not 20: the suite waits for it
		// in a few tests (40 s of each run).
		{"memory", []string{"--stream-poll-wait", "2s"}},
		{"data-dir", []string{"--stream-poll-wait", "2s", "--data-dir", t.TempDir()}},
		{"redis", []string{"--stream-poll-wait", "2s", "--broker", redistest.Start(t, redistest.Options{}).URL()}},
	}
	results := make([]conformance, len(backends))
	var wg sync.WaitGroup
	for i, b := range backends {
		_, url := serve(t, b.args...)
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = runConformance(node, url, t.TempDir())
		}()
	}
	wg.Wait()
	for i, b := range backends {
		r := results[i]
		if r.err != nil {
			t.Errorf("%s: %v", b.name, r.err)
			continue
		}
		for _, f := range r.failures {
			t.Errorf("%s: %s", b.name, f)
		}
		t.Logf("%s: %d passed, %d failed", b.name, r.passed, len(r.failures))
	}
}

// conformance is one run of the suite.
type conformance struct {
	passed   int
	failures []string // tests that failed, with why
	err      error    // the suite did not run
}

// runConformance runs the suite against url, its report in dir.
func runConformance(node, url, dir string) (r conformance) {
	report := filepath.Join(dir, "report.json")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "node_modules/vitest/vitest.mjs", "run", "--config", "vitest.config.mjs",
		"--reporter=json", "--outputFile="+report)
	cmd.Dir = durableStreamsDir
	cmd.Env = append(os.Environ(), "CONFORMANCE_TEST_URL="+url, "NO_COLOR=1")
	out, runErr := cmd.CombinedOutput() // it exits 1 when any test fails: the report says which
	data, err := os.ReadFile(report)
	if err != nil {
		r.err = fmt.Errorf("the suite wrote no report (%v; %v):\n%s", err, runErr, out)
		return r
	}
	var rep vitestReport
	if err := json.Unmarshal(data, &rep); err != nil {
		r.err = fmt.Errorf("the suite's report: %v", err)
		return r
	}
	for _, file := range rep.TestResults {
		if len(file.AssertionResults) == 0 && file.Message != "" {
			r.failures = append(r.failures, "the suite did not run: "+file.Message)
		}
		for _, a := range file.AssertionResults {
			switch {
			case a.Status == "passed":
				r.passed++
			case a.Status == "failed":
				msg := strings.Join(a.FailureMessages, "\n")
				if i := strings.IndexByte(msg, '\n'); i > 0 {
					msg = msg[:i]
				}
				r.failures = append(r.failures, a.FullName+": "+msg)
			}
		}
	}
	if r.passed < 300 && r.err == nil {
		r.err = fmt.Errorf("only %d tests of the suite passed (%v):\n%s", r.passed, runErr, out)
	}
	return r
}
