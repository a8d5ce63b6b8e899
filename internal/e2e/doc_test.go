package e2e

// The examples of README.md and docs/*.md are run by the testscript
// scripts testdata/script/doc_*.txtar (and zmq.txtar for the ZeroMQ
// default ports): `doc` reads a block straight from the document, so an
// example that drifts from what pushctl does fails the suite, and
// TestDocExamplesAreCovered fails when a block has no script.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	pushersdk "github.com/pusher/pusher-http-go/v5"
	"github.com/rogpeppe/go-internal/testscript"
)

// repoRoot is the repository, from internal/e2e.
const repoRoot = "../.."

// docLangs are the blocks that hold commands (or, for yaml, a config file).
var docLangs = map[string]bool{"sh": true, "console": true, "python": true, "yaml": true}

type docBlock struct {
	file, lang string
	n          int // 1-based among the file's blocks of that language
	text       string
}

// docBlocks returns the fenced blocks of a Markdown file in docLangs.
func docBlocks(file string) ([]docBlock, error) {
	b, err := os.ReadFile(filepath.Join(repoRoot, file))
	if err != nil {
		return nil, err
	}
	var out []docBlock
	count := map[string]int{}
	var cur *docBlock
	var indent string
	for _, line := range strings.Split(string(b), "\n") {
		trimmed := strings.TrimLeft(line, " ")
		if cur == nil {
			if strings.HasPrefix(trimmed, "```") && len(trimmed) > 3 {
				lang := strings.TrimSpace(trimmed[3:])
				count[lang]++
				if docLangs[lang] {
					indent = line[:len(line)-len(trimmed)]
					cur = &docBlock{file: file, lang: lang, n: count[lang]}
				}
			} else if trimmed == "```" {
				count[""]++
			}
			continue
		}
		if trimmed == "```" {
			out = append(out, *cur)
			cur = nil
			continue
		}
		cur.text += strings.TrimPrefix(line, indent) + "\n"
	}
	return out, nil
}

// docCommands splits a shell block into commands: comment and blank lines
// dropped, backslash continuations and for…done loops joined. For a
// console block, the "$ " lines are the commands.
func docCommands(b docBlock) []string {
	var cmds []string
	cur := ""
	loop := false
	for _, line := range strings.Split(strings.TrimRight(b.text, "\n"), "\n") {
		if b.lang == "console" {
			if c, ok := strings.CutPrefix(line, "$ "); ok {
				cmds = append(cmds, c)
			}
			continue
		}
		t := strings.TrimSpace(line)
		if cur == "" && (t == "" || strings.HasPrefix(t, "#")) {
			continue
		}
		if cur != "" {
			cur += "\n"
		}
		cur += line
		if strings.HasPrefix(t, "for ") || strings.HasPrefix(t, "while ") {
			loop = true
		}
		if loop && !strings.HasPrefix(t, "done") || strings.HasSuffix(t, "\\") {
			continue
		}
		loop = false
		cmds = append(cmds, cur)
		cur = ""
	}
	return cmds
}

// background reports whether a command ends with "&" (before any comment)
// and returns it without.
func background(cmd string) (string, bool) {
	re := regexp.MustCompile(`\s*&\s*(#.*)?$`)
	if loc := re.FindStringIndex(cmd); loc != nil && !strings.HasSuffix(strings.TrimSpace(cmd[:loc[0]]), "&") {
		return cmd[:loc[0]], true
	}
	return cmd, false
}

// doc [-o DIR] [-r OLD NEW]… FILE LANG N NCMDS: take block N of language
// LANG from FILE (relative to the repository), check it has NCMDS
// commands, and write each to DIR/K.sh (DIR defaults to doc), with the
// address of the broker the script started ($URL) for 127.0.0.1:7070,
// pushctl for bin/pushctl and ./scripts/pushctl, then each OLD replaced by
// NEW. A trailing & is removed (the script runs the command in the
// background itself); `export NAME=VALUE` lines are evaluated now and set
// NAME for the rest of the script. A console block's expected output goes
// to DIR/K.out; a python or yaml block is written whole to DIR/1.py or
// DIR/1.yaml. stdout lists the commands as written.
func cmdDoc(ts *testscript.TestScript, neg bool, args []string) {
	dir := "doc"
	var repl []string
	for len(args) > 2 && (args[0] == "-o" || args[0] == "-r") {
		if args[0] == "-o" {
			dir, args = args[1], args[2:]
		} else {
			repl, args = append(repl, args[1], args[2]), args[3:]
		}
	}
	if len(args) != 4 {
		ts.Fatalf("usage: doc [-o DIR] [-r OLD NEW]… FILE LANG N NCMDS")
	}
	n, _ := strconv.Atoi(args[2])
	want, _ := strconv.Atoi(args[3])
	blocks, err := docBlocks(args[0])
	ts.Check(err)
	var b *docBlock
	for i := range blocks {
		if blocks[i].lang == args[1] && blocks[i].n == n {
			b = &blocks[i]
		}
	}
	if b == nil {
		ts.Fatalf("%s has no %s block %d", args[0], args[1], n)
	}
	var defaults []string
	if u := ts.Getenv("URL"); u != "" {
		addr := strings.TrimPrefix(strings.TrimPrefix(u, "http://"), "https://")
		defaults = append(defaults, "http://127.0.0.1:7070", u, "ws://127.0.0.1:7070", "ws://"+addr, "127.0.0.1:7070", addr)
	}
	defaults = append(defaults, "./scripts/pushctl ", "pushctl ", "bin/pushctl ", "pushctl ")
	replace := strings.NewReplacer(append(defaults, repl...)...).Replace
	if len(repl) > 0 { // the script's own replacements apply to the original text first
		own := strings.NewReplacer(repl...).Replace
		def := strings.NewReplacer(defaults...).Replace
		replace = func(s string) string { return def(own(s)) }
	}
	out := ts.MkAbs(dir)
	ts.Check(os.MkdirAll(out, 0o755))
	if b.lang == "python" || b.lang == "yaml" {
		if want != 1 {
			ts.Fatalf("a %s block is one command", b.lang)
		}
		ts.Check(os.WriteFile(filepath.Join(out, "1."+map[string]string{"python": "py", "yaml": "yaml"}[b.lang]), []byte(replace(b.text)), 0o644))
		fmt.Fprint(ts.Stdout(), b.text)
		return
	}
	cmds := docCommands(*b)
	if len(cmds) != want {
		ts.Fatalf("%s %s block %d has %d commands, the script expects %d:\n%s", args[0], args[1], n, len(cmds), want, strings.Join(cmds, "\n"))
	}
	var outputs []string
	if b.lang == "console" {
		for _, part := range regexp.MustCompile(`(?m)^\$ .*\n`).Split(b.text, -1)[1:] {
			outputs = append(outputs, part)
		}
	}
	for i, c := range cmds {
		fmt.Fprintln(ts.Stdout(), c)
		c, _ = background(c)
		c = replace(c)
		if name, val, ok := strings.Cut(strings.TrimPrefix(c, "export "), "="); ok && strings.HasPrefix(c, "export ") {
			sh := exec.Command("sh", "-c", "printf %s "+val)
			sh.Env = append(os.Environ(), "PATH="+ts.Getenv("PATH"))
			v, err := sh.Output()
			ts.Check(err)
			ts.Setenv(name, string(v))
		}
		if simple(c) { // so that stopping the script's process stops the command
			c = "exec " + c
		}
		ts.Check(os.WriteFile(filepath.Join(out, fmt.Sprintf("%d.sh", i+1)), []byte(c+"\n"), 0o644))
		if i < len(outputs) {
			ts.Check(os.WriteFile(filepath.Join(out, fmt.Sprintf("%d.out", i+1)), []byte(outputs[i]), 0o644))
		}
	}
}

// goCache is the Go build cache of the test's environment.
var goCache = sync.OnceValue(func() string {
	out, _ := exec.Command("go", "env", "GOCACHE").Output()
	return strings.TrimSpace(string(out))
})

// scriptEnv is what a command started by these helpers takes from the
// script's environment (testscript's own exec passes all of it).
func scriptEnv(ts *testscript.TestScript) []string {
	var env []string
	for _, k := range []string{"PATH", "HOME", "PUSHCTL_SERVER", "PUSHCTL_TOKEN", "PUSHCTL_TOKEN_SECRET", "PUSHCTL_HOOK_SECRET", "PUSHCTL_WEBHOOK_SECRET", "HOOK_URL", "GORACE"} {
		if v := ts.Getenv(k); v != "" {
			env = append(env, k+"="+v)
		}
	}
	return env
}

// simple reports whether a command is one program (no pipeline, list or
// loop), which exec can replace the shell with.
func simple(c string) bool {
	if strings.HasPrefix(c, "export ") || strings.HasPrefix(c, "for ") || strings.HasPrefix(c, "while ") {
		return false
	}
	quote := byte(0)
	for i := 0; i < len(c); i++ {
		switch ch := c[i]; {
		case quote != 0:
			if ch == quote {
				quote = 0
			}
		case ch == '\'' || ch == '"':
			quote = ch
		case ch == '|' || ch == ';' || ch == '&' || ch == '\n' && !strings.HasSuffix(strings.TrimSpace(c[:i]), "\\"):
			return false
		}
	}
	return true
}

// docserve [-name NAME] FILE: start the `pushctl serve` command written in
// FILE (by doc) as `serve` starts a broker: on a free port unless it names
// --listen, stopped when the script ends; $URL (or $URL_NAME) is its
// address.
func cmdDocServe(ts *testscript.TestScript, neg bool, args []string) {
	name := ""
	if len(args) == 3 && args[0] == "-name" {
		name, args = args[1], args[2:]
	}
	if len(args) != 1 {
		ts.Fatalf("usage: docserve [-name NAME] FILE")
	}
	b, err := os.ReadFile(ts.MkAbs(args[0]))
	ts.Check(err)
	c := strings.TrimSpace(string(b))
	if i := strings.Index(c, " #"); i >= 0 && !strings.ContainsAny(c[:i], `'"`) {
		c = strings.TrimSpace(c[:i]) // a comment: --listen goes before it
	}
	if !strings.HasPrefix(strings.TrimPrefix(c, "exec "), "pushctl serve") {
		ts.Fatalf("%s is not a pushctl serve command: %s", args[0], c)
	}
	if !strings.Contains(c, "--listen") {
		c += " --listen 127.0.0.1:0"
	}
	c = strings.TrimPrefix(c, "exec ")
	startBroker(ts, neg, name, scriptEnv(ts), exec.Command("sh", "-c", "exec "+c))
}

// docstream FILE N|REGEXP: run the shell command in FILE and print the
// first N lines of its standard output, or the lines up to one matching
// REGEXP (20s at most), then stop it.
func cmdDocStream(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 2 {
		ts.Fatalf("usage: docstream FILE N|REGEXP")
	}
	n, err := strconv.Atoi(args[1])
	var until *regexp.Regexp
	if err != nil {
		until, n = regexp.MustCompile(args[1]), 1<<30
	}
	cmd := exec.Command("sh", ts.MkAbs(args[0]))
	cmd.Dir = ts.Getenv("WORK")
	cmd.Env = append(os.Environ(), scriptEnv(ts)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdout, err := cmd.StdoutPipe()
	ts.Check(err)
	ts.Check(cmd.Start())
	defer func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
	}()
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	deadline := time.After(20 * time.Second)
	for i := 0; i < n; i++ {
		select {
		case l, ok := <-lines:
			if !ok {
				ts.Fatalf("%s ended after %d lines", args[0], i)
			}
			fmt.Fprintln(ts.Stdout(), l)
			if until != nil && until.MatchString(l) {
				return
			}
		case <-deadline:
			ts.Fatalf("%s: %d lines after 20s, want %s", args[0], i, args[1])
		}
	}
}

// docbg FILE: run the shell command in FILE in the background, in a
// process group of its own that is stopped when the script ends (for
// commands that start servers with &, as a for loop of redis-server).
func cmdDocBg(ts *testscript.TestScript, neg bool, args []string) {
	cmd := exec.Command("sh", ts.MkAbs(args[0]))
	cmd.Dir = ts.Getenv("WORK")
	cmd.Env = append(os.Environ(), scriptEnv(ts)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	ts.Check(cmd.Start())
	pgid := cmd.Process.Pid
	go cmd.Wait()
	ts.Defer(func() { syscall.Kill(-pgid, syscall.SIGKILL) })
}

// docws FILE: replay a console transcript of the WebSocket protocol (the
// .out file doc writes) on $URL/ws: client frames are sent, and each
// broker frame must come back with the same type, the same fields and the
// same values but for ids, cursors and times.
func cmdDocWS(ts *testscript.TestScript, neg bool, args []string) {
	b, err := os.ReadFile(ts.MkAbs(args[0]))
	ts.Check(err)
	c, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(ts.Getenv("URL"), "http")+"/ws", nil)
	ts.Check(err)
	defer c.Close()
	client := map[string]bool{"subscribe": true, "unsubscribe": true, "publish": true, "ping": true, "auth": true, "join": true, "leave": true}
	volatile := map[string]bool{"id": true, "cursor": true, "time": true}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var want map[string]any
		if err := json.Unmarshal([]byte(line), &want); err != nil {
			ts.Fatalf("transcript line %s: %v", line, err)
		}
		if client[fmt.Sprint(want["type"])] {
			ts.Check(c.WriteMessage(websocket.TextMessage, []byte(line)))
			continue
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, data, err := c.ReadMessage()
		ts.Check(err)
		fmt.Fprintf(ts.Stdout(), "%s\n", data)
		var got map[string]any
		ts.Check(json.Unmarshal(data, &got))
		if len(got) != len(want) {
			ts.Fatalf("got %s, want the fields of %s", data, line)
		}
		for k, v := range want {
			g, ok := got[k]
			if !ok || !volatile[k] && fmt.Sprint(g) != fmt.Sprint(v) {
				ts.Fatalf("got %s, want %s (field %s)", data, line, k)
			}
		}
	}
}

// clusterport VAR: set VAR to a free loopback port below 55535 whose
// Redis Cluster bus port (the port + 10000) is free too.
func cmdClusterPort(ts *testscript.TestScript, neg bool, args []string) {
	for p := 20000 + int(time.Now().UnixNano()%5000); p < 55535; p += 7 {
		l1, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue
		}
		l2, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p+10000))
		l1.Close()
		if err != nil {
			continue
		}
		l2.Close()
		ts.Setenv(args[0], strconv.Itoa(p))
		return
	}
	ts.Fatalf("no free port pair")
}

// wsjoin CHANNEL ID: a WebSocket client on $URL/ws joins CHANNEL's
// presence as ID and stays until the script ends.
func cmdWSJoin(ts *testscript.TestScript, neg bool, args []string) {
	c, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(ts.Getenv("URL"), "http")+"/ws", nil)
	ts.Check(err)
	ts.Defer(func() { c.Close() })
	ts.Check(c.WriteJSON(map[string]string{"type": "join", "channel": args[0], "id": args[1]}))
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var f map[string]any
	ts.Check(c.ReadJSON(&f))
	if f["type"] != "joined" {
		ts.Fatalf("join: %v", f)
	}
}

// pushertrigger APP:KEY:SECRET CHANNEL EVENT DATA: trigger an event with
// Pusher's Go server SDK against $ADDR.
func cmdPusherTrigger(ts *testscript.TestScript, neg bool, args []string) {
	app := strings.SplitN(args[0], ":", 3)
	c := pushersdk.Client{AppID: app[0], Key: app[1], Secret: app[2], Host: ts.Getenv("ADDR")}
	ts.Check(c.Trigger(args[1], args[2], args[3]))
}

// TestDocExamplesAreCovered: every command block (sh, console, python,
// yaml) of README.md and docs/*.md is run by a script's doc command, so a
// new or changed example cannot go untested.
func TestDocExamplesAreCovered(t *testing.T) {
	files := []string{"README.md"}
	docs, _ := filepath.Glob(filepath.Join(repoRoot, "docs", "*.md"))
	for _, d := range docs {
		files = append(files, "docs/"+filepath.Base(d))
	}
	covered := map[string]bool{}
	scripts, _ := filepath.Glob("testdata/script/*.txtar")
	re := regexp.MustCompile(`(?m)^doc .*?(\S+) (sh|console|python|yaml) (\d+) \d+$`)
	for _, s := range scripts {
		b, err := os.ReadFile(s)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range re.FindAllStringSubmatch(string(b), -1) {
			covered[m[1]+" "+m[2]+" "+m[3]] = true
		}
	}
	n := 0
	for _, f := range files {
		blocks, err := docBlocks(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range blocks {
			n++
			if key := fmt.Sprintf("%s %s %d", b.file, b.lang, b.n); !covered[key] {
				t.Errorf("%s: %s block %d is run by no script (add `doc %s` to a testdata/script/doc_*.txtar):\n%s", b.file, b.lang, b.n, key+" NCMDS", b.text)
			}
		}
	}
	if n < 20 {
		t.Fatalf("found only %d example blocks; is the Markdown parsing broken?", n)
	}
}
