package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestQuickStart(t *testing.T) {
	_, url := serve(t)
	// curl -d hello …/pub/news
	resp, err := http.Post(url+"/pub/news", "application/x-www-form-urlencoded", strings.NewReader("hello"))
	if err != nil {
		t.Fatal(err)
	}
	var ack map[string]any
	json.NewDecoder(resp.Body).Decode(&ack)
	resp.Body.Close()
	if resp.StatusCode != 200 || ack["id"] == nil || ack["subscribers"] != float64(0) {
		t.Fatalf("publish: %d %v", resp.StatusCode, ack)
	}
	// curl -N …/sub/news gets raw lines.
	raw, err := http.Get(url + "/sub/news")
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Body.Close()
	sub := start(t, nil, nil, "sub", "news", "--count", "1", "--timeout", "10s", "--server", url)
	out, errOut, code := run(t, "", "pub", "news", "--wait-subscribers", "2", "--timeout", "30s", "-s", url, "deploy done")
	if code != 0 || !strings.Contains(out, "subscribers=2") {
		t.Fatalf("pub: exit %d, %q %q", code, out, errOut)
	}
	if l := sub.readLine(10 * time.Second); l != "deploy done" {
		t.Fatalf("sub printed %q", l)
	}
	if code := sub.wait(10 * time.Second); code != 0 {
		t.Fatalf("sub exit %d: %s", code, sub.Stderr())
	}
	buf := make([]byte, len("deploy done\n"))
	if _, err := io.ReadFull(raw.Body, buf); err != nil || string(buf) != "deploy done\n" {
		t.Fatalf("raw stream %q %v", buf, err)
	}
}

func TestExitCodes(t *testing.T) {
	_, url := serve(t)
	for _, c := range []struct {
		args []string
		code int
		err  string
	}{
		{[]string{"sub", "quiet", "--count", "1", "--timeout", "300ms", "-s", url}, 124, "timed out"},
		{[]string{"pub", "news", "--wait-subscribers", "1", "--timeout", "300ms", "-s", url, "x"}, 124, "fewer than 1 subscriber on news"},
		{[]string{"sub"}, 2, "missing CHANNEL"},
		{[]string{"sub", "bad..name", "-s", url}, 2, "invalid channel"},
		{[]string{"sub", "x", "--format", "xml"}, 2, "--format"},
		{[]string{"pub", "news", "--via", "pigeon", "x"}, 2, "--via"},
		{[]string{"pub", "news", "--no-such-flag"}, 2, "unknown flag"},
		{[]string{"nonsense"}, 2, "unknown command"},
		{[]string{"pub", "news", "-s", "127.0.0.1:1", "x"}, 1, "cannot reach http://127.0.0.1:1 (connection refused)"},
		{[]string{"sub", "news", "--template", "{{.Nope", "-s", url}, 2, "--template"},
	} {
		_, errOut, code := run(t, "", c.args...)
		if code != c.code || !strings.Contains(errOut, c.err) {
			t.Errorf("%v: exit %d (want %d), stderr %q (want %q)", c.args, code, c.code, errOut, c.err)
		}
	}
}

func TestPipeLinesInOrder(t *testing.T) {
	_, url := serve(t)
	const n = 100000
	sub := start(t, nil, nil, "sub", "news", "--count", strconv.Itoa(n), "--timeout", "120s", "-s", url)
	var in strings.Builder
	for i := 1; i <= n; i++ {
		fmt.Fprintln(&in, i)
	}
	_, errOut, code := run(t, in.String(), "pub", "news", "--lines", "--wait-subscribers", "1", "-s", url)
	if code != 0 || !strings.Contains(errOut, fmt.Sprintf("published %d messages", n)) {
		t.Fatalf("pub --lines: exit %d: %s", code, errOut)
	}
	for i := 1; i <= n; i++ {
		if l := sub.readLine(30 * time.Second); l != strconv.Itoa(i) {
			t.Fatalf("line %d = %q", i, l)
		}
	}
	if code := sub.wait(10 * time.Second); code != 0 {
		t.Fatalf("sub exit %d: %s", code, sub.Stderr())
	}
}

func TestSubReconnectsAcrossBrokerRestart(t *testing.T) {
	broker1, url := serve(t)
	addr := strings.TrimPrefix(url, "http://")
	sub := start(t, nil, nil, "sub", "news", "--count", "3", "--timeout", "60s", "--format", "json", "-s", url)
	run(t, "", "pub", "news", "--wait-subscribers", "1", "-s", url, "one")
	var first map[string]any
	json.Unmarshal([]byte(sub.readLine(10*time.Second)), &first)
	if first["data"] != "one" {
		t.Fatalf("first %v", first)
	}
	broker1.signal(syscall.SIGTERM)
	if code := broker1.wait(10 * time.Second); code != 0 {
		t.Fatalf("broker exit %d: %s", code, broker1.Stderr())
	}
	sub.waitStderr("reconnecting", 10*time.Second)
	_, url2 := serve(t, "--listen", addr)
	if url2 != url {
		t.Fatalf("restarted on %s, want %s", url2, url)
	}
	// The subscriber resumes from its position: the new broker's history
	// is fresh, so it is told about the gap (a record in --format json),
	// then gets everything new.
	run(t, "", "pub", "news", "--wait-subscribers", "1", "-s", url, "two")
	run(t, "", "pub", "news", "-s", url, "three")
	var gap map[string]any
	json.Unmarshal([]byte(sub.readLine(10*time.Second)), &gap)
	if gap["type"] != "gap" || gap["channel"] != "news" {
		t.Fatalf("after restart got %v, want the gap record", gap)
	}
	for _, want := range []string{"two", "three"} {
		var m map[string]any
		json.Unmarshal([]byte(sub.readLine(10*time.Second)), &m)
		if m["data"] != want {
			t.Fatalf("after restart got %v, want %s", m, want)
		}
	}
	if code := sub.wait(10 * time.Second); code != 0 {
		t.Fatalf("sub exit %d: %s", code, sub.Stderr())
	}
	if !strings.Contains(sub.Stderr(), "reconnected") {
		t.Fatalf("no reconnect status on stderr: %s", sub.Stderr())
	}
}

func TestSubReplayTemplateExec(t *testing.T) {
	_, url := serve(t)
	for _, m := range []string{"a", "b", `{"n":3}`} {
		if _, e, code := run(t, "", "pub", "jobs", "-s", url, m); code != 0 {
			t.Fatal(e)
		}
	}
	out, errOut, code := run(t, "", "sub", "jobs", "--last", "2", "--count", "2", "--timeout", "10s", "-s", url,
		"--template", `{{.Channel}}/{{.Seq}}/{{.Data}}{{with .JSON}} n={{.n}}{{end}}`)
	if code != 0 || out != "jobs/2/b\njobs/3/{\"n\":3} n=3\n" {
		t.Fatalf("template: exit %d %q %s", code, out, errOut)
	}
	// Only the command's output: --exec no longer copies the message.
	out, errOut, code = run(t, "", "sub", "jobs", "--since", "all", "--count", "1", "--timeout", "10s", "-s", url,
		"--exec", `printf '%s:%s:' "$PUSHCTL_CHANNEL" "$PUSHCTL_SEQ"; cat`)
	if code != 0 || out != "jobs:1:a" {
		t.Fatalf("exec: exit %d %q %s", code, out, errOut)
	}
	out, _, code = run(t, "", "sub", "jobs", "--since", "all", "--count", "1", "--timeout", "10s", "-s", url, "--format", "sse")
	if code != 0 || !strings.Contains(out, "id: ") || !strings.Contains(out, "data: a\n\n") {
		t.Fatalf("sse format %q", out)
	}
}

func TestPubInputs(t *testing.T) {
	_, url := serve(t)
	out, errOut, code := run(t, "from stdin\nsecond line", "pub", "in", "-s", url, "--json", "--event", "note")
	var ack map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &ack) != nil || ack["seq"] != float64(1) {
		t.Fatalf("stdin: exit %d %q %s", code, out, errOut)
	}
	f := filepath.Join(t.TempDir(), "msg")
	os.WriteFile(f, []byte("from file"), 0o600)
	if _, errOut, code := run(t, "", "pub", "in", "-f", f, "-s", url); code != 0 {
		t.Fatal(errOut)
	}
	if _, errOut, code := run(t, "", "pub", "in", "--via", "ws", "-s", url, "over", "ws"); code != 0 {
		t.Fatal(errOut)
	}
	out, _, _ = run(t, "", "sub", "in", "--since", "all", "--count", "3", "--timeout", "10s", "--format", "json", "-s", url)
	var msgs []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var m map[string]any
		json.Unmarshal([]byte(l), &m)
		msgs = append(msgs, m)
	}
	if len(msgs) != 3 || msgs[0]["data"] != "from stdin\nsecond line" || msgs[0]["event"] != "note" ||
		msgs[1]["data"] != "from file" || msgs[2]["data"] != "over ws" {
		t.Fatalf("messages %v", msgs)
	}
}

func TestServeConfigFromEnvAndGracefulStop(t *testing.T) {
	p := start(t, nil, []string{"PUSHCTL_LISTEN=127.0.0.1:0", "PUSHCTL_HISTORY=5"}, "serve")
	line := p.waitStderr("broker listening on http://127.0.0.1:", 30*time.Second)
	url := line[strings.Index(line, "http://"):]
	for i := 0; i < 8; i++ {
		run(t, "", "pub", "h", "-s", url, strconv.Itoa(i))
	}
	out, _, _ := run(t, "", "sub", "h", "--since", "all", "--count", "5", "--timeout", "10s", "-s", url)
	if out != "3\n4\n5\n6\n7\n" {
		t.Fatalf("PUSHCTL_HISTORY=5 not applied: %q", out)
	}
	sub := start(t, nil, nil, "sub", "h", "-s", url, "--timeout", "60s")
	run(t, "", "pub", "h", "--wait-subscribers", "1", "-s", url, "x")
	sub.readLine(10 * time.Second)
	p.signal(syscall.SIGTERM)
	if code := p.wait(10 * time.Second); code != 0 {
		t.Fatalf("serve exit %d after SIGTERM: %s", code, p.Stderr())
	}
	sub.waitStderr("reconnecting", 10*time.Second)
	sub.signal(syscall.SIGINT)
	if code := sub.wait(10 * time.Second); code != 130 {
		t.Fatalf("sub exit %d after SIGINT, want 130", code)
	}
	// Interrupted (not asked to stop), serve and bridge exit 130.
	p2, url2 := serve(t)
	br := start(t, nil, nil, "bridge", "pushctl://"+strings.TrimPrefix(url2, "http://")+"/x", "-", "--stats-interval", "0")
	waitSubscribers(t, url2, "x", 1)
	for _, q := range []*proc{br, p2} {
		q.signal(syscall.SIGINT)
		if code := q.wait(10 * time.Second); code != 130 {
			t.Fatalf("%v exit %d after SIGINT, want 130: %s", q.cmd.Args[1], code, q.Stderr())
		}
	}
	_, errOut, code := run(t, "", "serve", "--listen", "127.0.0.1:0", "--log-level", "loud")
	if code != 2 || !strings.Contains(errOut, "--log-level") {
		t.Fatalf("bad flag: %d %s", code, errOut)
	}
}

func TestServeConfigPrecedence(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "serve.yaml")
	os.WriteFile(cfg, []byte("history: 50\nhistory-age: 10m\nlisten: 127.0.0.1:9\nzmq-curve-secret: do-not-print-me\nzmq-curve-clients: [k1, k2]\n"), 0o600)
	cmd := exec.Command(binary, "serve", "--config", cfg, "--history-age", "2h", "--print-config")
	cmd.Env = append(os.Environ(), "PUSHCTL_LISTEN=127.0.0.1:8", "PUSHCTL_HISTORY_AGE=3h")
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	text := string(out)
	for _, want := range []string{
		"history: 50  # file\n",         // file beats default
		"listen: 127.0.0.1:8  # env\n",  // env beats file
		"history-age: 2h0m0s  # flag\n", // flag beats env and file
		"zmq-curve-secret: <redacted>  # file\n",
		"    - k2  # file\n",
		"queue-size: 65536  # default\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("effective config lacks %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, "do-not-print-me") {
		t.Fatal("secret printed")
	}
	// The default location is used when it exists.
	home := t.TempDir()
	os.MkdirAll(filepath.Join(home, ".config", "pushctl"), 0o755)
	os.WriteFile(filepath.Join(home, ".config", "pushctl", "serve.yaml"), []byte("history: 7\n"), 0o600)
	cmd = exec.Command(binary, "serve", "--print-config")
	cmd.Env = append(os.Environ(), "HOME="+home, "XDG_CONFIG_HOME=")
	out, _ = cmd.Output()
	if !strings.Contains(string(out), "history: 7  # file") {
		t.Fatalf("default config file not read:\n%s", out)
	}
	os.WriteFile(cfg, []byte("histroy: 5\n"), 0o600)
	_, errOut, code := run(t, "", "serve", "--config", cfg)
	if code != 2 || !strings.Contains(errOut, `unknown key "histroy"`) {
		t.Fatalf("unknown key: exit %d %s", code, errOut)
	}
	_, errOut, code = run(t, "", "serve", "--config", filepath.Join(dir, "missing.yaml"))
	if code != 2 || !strings.Contains(errOut, "no such file") {
		t.Fatalf("missing file: exit %d %s", code, errOut)
	}
}

func TestSubPatternsAndOddNames(t *testing.T) {
	_, url := serve(t)
	for _, ch := range []string{"builds.web", "builds.api.v2", "user:42", "a+b@c~d"} {
		if _, e, code := run(t, "", "pub", ch, "-s", url, "to "+ch); code != 0 {
			t.Fatal(e)
		}
	}
	out, errOut, code := run(t, "", "sub", "builds.>", "user:42", "a+b@c~d", "--since", "all", "--count", "4", "--timeout", "10s",
		"--template", "{{.Channel}}={{.Data}}", "-s", url)
	want := map[string]bool{"builds.web=to builds.web": true, "builds.api.v2=to builds.api.v2": true, "user:42=to user:42": true, "a+b@c~d=to a+b@c~d": true}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		delete(want, l)
	}
	if code != 0 || len(want) != 0 {
		t.Fatalf("exit %d, missing %v; out %q; %s", code, want, out, errOut)
	}
	out, _, _ = run(t, "", "channels", "builds.*", "-s", url)
	var list []struct{ Channel string }
	json.Unmarshal([]byte(out), &list)
	if len(list) != 1 || list[0].Channel != "builds.web" {
		t.Fatalf("channels builds.*: %s", out)
	}
}
