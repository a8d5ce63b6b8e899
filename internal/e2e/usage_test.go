package e2e

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestUsageErrorsExit2: every command's bad flags, arguments, environment
// values and config files exit 2 with a message that names what is wrong
// and what it accepts, before anything connects or listens. No broker
// runs: a usage error must not depend on one (the -s address is closed,
// so a command that tried to connect would exit 1 instead).
func TestUsageErrorsExit2(t *testing.T) {
	dir := t.TempDir()
	srv := "http://127.0.0.1:1"
	for _, c := range []struct {
		env  []string
		args []string
		want string
	}{
		{nil, []string{"nonsense"}, "unknown command"},
		{nil, []string{"pub", "news", "--no-such-flag"}, "unknown flag: --no-such-flag"},

		{nil, []string{"serve", "--log-level", "loud"}, `--log-level "loud": want debug, info, warn or error`},
		{nil, []string{"serve", "--log-format", "xml"}, `--log-format "xml": want text or json`},
		{nil, []string{"serve", "--config", filepath.Join(dir, "missing.yaml")}, "config file: open "},
		{nil, []string{"serve", "--listen", "0.0.0.0:0"}, "refusing to listen on "},
		{nil, []string{"serve", "--listen", "127.0.0.1:0", "--pprof", "0.0.0.0:0"}, "--pprof 0.0.0.0:0: profiles are served on loopback addresses only"},
		{nil, []string{"serve", "--listen", "127.0.0.1:0", "--history", "abc"}, `--history "abc": want a whole number`},
		{[]string{"PUSHCTL_HISTORY=abc"}, []string{"serve", "--listen", "127.0.0.1:0"}, `PUSHCTL_HISTORY "abc": want a whole number`},
		{[]string{"PUSHCTL_HISTORY_AGE=abc"}, []string{"serve", "--listen", "127.0.0.1:0"}, `PUSHCTL_HISTORY_AGE "abc": want a duration such as 500ms, 10s, 5m or 1h`},
		{nil, []string{"serve", "--listen", "127.0.0.1:0", "--broker", "mongodb://x"}, `--broker "mongodb://x": want memory`},
		{nil, []string{"serve", "--listen", "127.0.0.1:0", "--node-timeout", "1s"}, "--node-timeout 1s"},

		{nil, []string{"pub"}, "missing CHANNEL"},
		{nil, []string{"pub", "bad..name", "x", "-s", srv}, "invalid channel"},
		{nil, []string{"pub", "news", "--via", "pigeon", "x", "-s", srv}, `--via "pigeon": want http or ws`},
		{nil, []string{"pub", "news", "--timeout", "abc", "x", "-s", srv}, `--timeout "abc": want a duration`},
		{nil, []string{"pub", "news", "--lines", "x", "-s", srv}, "--lines reads standard input or --file"},
		{[]string{"PUSHCTL_WAIT_SUBSCRIBERS=two"}, []string{"pub", "news", "x", "-s", srv}, `PUSHCTL_WAIT_SUBSCRIBERS "two": want a whole number`},

		{nil, []string{"sub"}, "missing CHANNEL"},
		{nil, []string{"sub", "bad..name", "-s", srv}, "invalid channel"},
		{nil, []string{"sub", "x", "--format", "xml", "-s", srv}, `--format "xml": want raw, line, json or sse`},
		{nil, []string{"sub", "x", "--since", "bogus", "-s", srv}, `--since "bogus": want all, a message id`},
		{nil, []string{"sub", "x", "y", "--since", "abc-1", "-s", srv}, "--since: invalid position"},
		{nil, []string{"sub", "x", "--count", "abc", "-s", srv}, `--count "abc": want a whole number`},
		{nil, []string{"sub", "x", "--count", "-1", "-s", srv}, "--count -1: want 0 or more"},
		{[]string{"PUSHCTL_COUNT=abc"}, []string{"sub", "x", "-s", srv}, `PUSHCTL_COUNT "abc": want a whole number`},
		{nil, []string{"sub", "x", "--template", "{{.Nope", "-s", srv}, "--template: "},
		{nil, []string{"sub", "x", "--template", "{{.Nope}}", "-s", srv}, "--template: no field .Nope; the fields are"},
		{nil, []string{"sub", "x", "--where", ".a ==", "-s", srv}, `--where ".a ==": `},
		{nil, []string{"sub", "x", "--match", "(", "-s", srv}, `--match "(": missing closing )`},
		{nil, []string{"sub", "x", "--exec", "true", "--on-exec-error", "ignore", "-s", srv}, `--on-exec-error "ignore": want stop, retry or skip`},
		{nil, []string{"sub", "x", "--connect-timeout", "soon", "-s", srv}, `--connect-timeout "soon": want a duration`},
		{nil, []string{"sub", "x", "--tui-buffer", "5", "-s", srv}, "--tui-buffer 5: want at least 100"},

		{nil, []string{"bridge", "-"}, "bridge takes FROM and TO, got 1 argument\n"},
		{nil, []string{"bridge", "gopher://x", "-"}, `source "gopher://x": unknown kind`},
		{nil, []string{"bridge", "-", "-", "--where", ".a =="}, `--where ".a ==": `},
		{nil, []string{"bridge", "-", "-", "--header", "nocolon"}, `--header "nocolon": want Name: value`},
		{nil, []string{"bridge", "-", "-", "--zmq-sep", "ab"}, `--zmq-sep "ab": want one byte`},

		{nil, []string{"channels", "a", "b", "-s", srv}, "give at most one pattern"},
		{nil, []string{"channels", "--delete", "-s", srv}, "--delete needs one channel name"},
		{nil, []string{"stats", "extra", "-s", srv}, "takes no arguments"},
		{nil, []string{"who", "-s", srv}, "give one channel"},
		{nil, []string{"who", "bad..name", "-s", srv}, "invalid channel"},
		{nil, []string{"bench", "extra"}, "takes no arguments"},
		{nil, []string{"bench", "--format", "xml"}, `--format "xml": want text, json or csv`},
		{nil, []string{"keygen", "extra"}, "takes no arguments"},
		{nil, []string{"token", "create", "--secret", strings.Repeat("s", 32)}, "grant something"},
		{nil, []string{"token", "create", "--secret", strings.Repeat("s", 32), "--publish", "a", "--ttl", "soon"}, `--ttl "soon": want a duration`},
		{nil, []string{"version", "extra"}, "takes no arguments"},
	} {
		_, errOut, code := runEnv(t, c.env, c.args...)
		if code != 2 || !strings.Contains(errOut, c.want) {
			t.Errorf("%v %v: exit %d (want 2), stderr %q (want %q)", c.env, c.args, code, errOut, c.want)
		}
		if strings.Contains(errOut, "broker listening") || strings.Contains(errOut, "strconv.") {
			t.Errorf("%v %v: %q", c.env, c.args, errOut)
		}
	}
}

// TestRedisLogsThroughLogger: go-redis's own log lines (an unreachable
// Redis) come out in the broker's log format, not as "pool.go:770: …".
func TestRedisLogsThroughLogger(t *testing.T) {
	_, errOut, code := run(t, "", "serve", "--listen", "127.0.0.1:0", "--broker", "redis://127.0.0.1:1/0", "--log-format", "json")
	if code != 1 || !strings.Contains(errOut, `"component":"redis"`) || strings.Contains(errOut, "pool.go:") {
		t.Fatalf("exit %d, stderr:\n%s", code, errOut)
	}
}
