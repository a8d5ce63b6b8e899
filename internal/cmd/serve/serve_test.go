package serve

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/pushctl/pushctl/internal/cmdutil"
)

// TestServeFlags: the flags reach Options unchanged (their effects are
// pinned by the scripts in internal/e2e/testdata/script).
func TestServeFlags(t *testing.T) {
	ios, _, _, _ := cmdutil.Test()
	f := &cmdutil.Factory{IO: ios, Getenv: func(string) string { return "" }}
	var o *Options
	cmd := NewCmdServe(f, func(_ context.Context, got *Options) error { o = got; return nil })
	cmd.SetArgs([]string{"--listen", "127.0.0.1:0", "--history", "7", "--history-age", "2m", "--history-bytes", "1KiB", "--max-bytes", "2MiB",
		"--queue-size", "9", "--queue-bytes", "3KiB", "--keepalive", "2s", "--ping-interval", "3s", "--write-timeout", "4s",
		"--max-message-size", "5KiB", "--max-conns-per-ip", "6", "--max-channels-per-conn", "8", "--publish-rate", "1.5", "--publish-burst", "4",
		"--read-timeout", "6s", "--trusted-proxies", "127.0.0.1", "--no-console", "--sync", "none", "--sync-delay", "7ms", "--log-format", "json",
		"--node-timeout", "3s"})
	cmd.SetOut(io.Discard)
	cmd.SetErr(io.Discard)
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	if o.HistorySize != 7 || o.HistoryAge != 2*time.Minute || o.HistoryBytes != 1<<10 || o.MaxBytes != 2<<20 || o.QueueSize != 9 ||
		o.QueueBytes != 3<<10 || o.Keepalive != 2*time.Second || o.PingInterval != 3*time.Second || o.WriteTimeout != 4*time.Second ||
		o.MaxMessageSize != 5<<10 || o.MaxConnsPerIP != 6 || o.MaxChannels != 8 || o.PublishRate != 1.5 || o.PublishBurst != 4 ||
		o.ReadTimeout != 6*time.Second || len(o.TrustedProxies) != 1 || !o.NoConsole || o.Sync != "none" || o.SyncDelay != 7*time.Millisecond ||
		o.LogFormat != "json" || o.NodeTimeout != 3*time.Second {
		t.Fatalf("options %+v", o)
	}
}
