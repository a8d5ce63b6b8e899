package bridge

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/cmdutil"
	"github.com/pushctl/pushctl/internal/server"
	"github.com/pushctl/pushctl/internal/server/servertest"
	"github.com/spf13/cobra"
)

// TestBridgeToHook moves messages of a broker channel into an HTTP hook
// with a computed channel name, and stops after --count.
func TestBridgeToHook(t *testing.T) {
	b, url := servertest.Start(t, server.Options{})
	var mu sync.Mutex
	var got []string
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		got = append(got, r.Header.Get("X-Pushctl-Channel")+"="+string(body))
		mu.Unlock()
	}))
	t.Cleanup(hook.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, _, err := cmdutil.RunForTest(ctx, cmdutil.Real(NewCmdBridge), nil, "pushctl://"+strings.TrimPrefix(url, "http://")+"/jobs.>", hook.URL,
			"--channel-template", "x.{{.Channel}}", "--count", "2", "--stats-interval", "0", "--quiet")
		done <- err
	}()
	if err := b.WaitSubscribers(ctx, "jobs.a", 1); err != nil {
		t.Fatal(err)
	}
	b.Publish(ctx, &broker.Message{Channel: "jobs.a", Data: []byte("1")})
	b.Publish(ctx, &broker.Message{Channel: "jobs.b", Data: []byte("2")})
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-ctx.Done():
		t.Fatal("bridge did not stop after --count 2")
	}
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(got, " ") != "x.jobs.a=1 x.jobs.b=2" {
		t.Fatalf("hook got %q", got)
	}
	if _, _, err := cmdutil.RunForTest(context.Background(), cmdutil.Real(NewCmdBridge), nil, "gopher://x", hook.URL); err == nil {
		t.Fatal("an unknown endpoint was accepted")
	}
}

// TestBridgeFlags: what the flags set, without running a bridge.
func TestBridgeFlags(t *testing.T) {
	var got *Options
	runF := func(_ context.Context, o *Options) error { got = o; return nil }
	_, _, err := cmdutil.RunForTest(context.Background(), func(f *cmdutil.Factory) *cobra.Command { return NewCmdBridge(f, runF) }, nil,
		"pushctl://127.0.0.1:7070/a", "-", "--where", ".ok", "--match", "x", "--count", "2", "--connect-timeout", "2s", "-H", "A: b")
	if err != nil || got == nil || got.From != "pushctl://127.0.0.1:7070/a" || got.To != "-" || got.Filter.Where != ".ok" ||
		got.Filter.Match != "x" || got.Count != 2 || got.ConnectTimeout != 2*time.Second || len(got.Headers) != 1 {
		t.Fatalf("options %+v (%v)", got, err)
	}
	// Bad flags are usage errors before anything runs.
	for _, bad := range [][]string{{"--where", ".a =="}, {"--match", "("}, {"--zmq-sep", "ab"}, {"-H", "nocolon"},
		{"--channel", "a..b"}, {"--channel-template", "{{"}, {"--connect-timeout", "0s"}} {
		got = nil
		args := append([]string{"-", "-"}, bad...)
		_, _, err := cmdutil.RunForTest(context.Background(), func(f *cmdutil.Factory) *cobra.Command { return NewCmdBridge(f, runF) }, nil, args...)
		if cmdutil.ExitCode(err) != cmdutil.ExitUsage || got != nil {
			t.Errorf("%q: %v (ran: %v)", bad, err, got != nil)
		}
	}
}
