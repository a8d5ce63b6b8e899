package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

const python = "/usr/bin/python3" // Debian's, which has python3-zmq

// py runs a pyzmq helper from testdata and returns it with its stdout.
type pyProc struct {
	t    *testing.T
	cmd  *exec.Cmd
	out  *bufio.Reader
	done chan error
}

func startPy(t *testing.T, script string, args ...string) *pyProc {
	t.Helper()
	cmd := exec.Command(python, append([]string{"testdata/" + script}, args...)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", script, err)
	}
	p := &pyProc{t: t, cmd: cmd, out: bufio.NewReader(out), done: make(chan error, 1)}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() && stderr.Len() > 0 {
			t.Logf("%s stderr:\n%s", script, stderr.String())
		}
	})
	return p
}

// next reads the next line in the background; a read error comes as
// "ERROR …". It never fails the test itself (it may run off the test's
// goroutine): the receiver checks.
func (p *pyProc) next() <-chan string {
	ch := make(chan string, 1)
	go func() {
		l, err := p.out.ReadString('\n')
		if err != nil {
			l = "ERROR " + err.Error()
		}
		ch <- strings.TrimSpace(l)
	}()
	return ch
}

func (p *pyProc) line(timeout time.Duration) string {
	p.t.Helper()
	select {
	case l := <-p.next():
		if strings.HasPrefix(l, "ERROR ") {
			p.t.Fatalf("python %v: %s", p.cmd.Args, l)
		}
		return l
	case <-time.After(timeout):
		p.t.Fatalf("python %v printed nothing within %s", p.cmd.Args, timeout)
	}
	return ""
}

// readyPort waits for "ready PORT".
func (p *pyProc) readyPort() string {
	l := p.line(20 * time.Second)
	port, ok := strings.CutPrefix(l, "ready ")
	if !ok {
		p.t.Fatalf("expected ready line, got %q", l)
	}
	return port
}

// serveZMQ starts a broker with ZeroMQ endpoints on free ports.
func serveZMQ(t *testing.T, extra ...string) (url, in, out string) {
	t.Helper()
	p, url := serve(t, append([]string{"--zmq-in", "tcp://127.0.0.1:*", "--zmq-out", "tcp://127.0.0.1:*"}, extra...)...)
	for _, l := range strings.Split(p.Stderr(), "\n") {
		if a, ok := strings.CutPrefix(l, "pushctl: ZeroMQ in on "); ok {
			in = a
		}
		if a, ok := strings.CutPrefix(l, "pushctl: ZeroMQ out on "); ok {
			out = a
		}
	}
	if in == "" || out == "" {
		t.Fatalf("ZeroMQ endpoints not reported:\n%s", p.Stderr())
	}
	return url, in, out
}

func waitSubscribers(t *testing.T, url, channel string, n int) {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("%s/channels/%s?wait_subscribers=%d&timeout=20s", url, channel, n))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("waiting for %d subscribers on %s: HTTP %d", n, channel, resp.StatusCode)
	}
}

func TestZMQPyPublisherToWebSocketAndSSE(t *testing.T) {
	url, in, _ := serveZMQ(t)
	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(url, "http")+"/sub/sensors.t1", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	req, _ := http.NewRequest("GET", url+"/sub/sensors.t1?data=raw", nil)
	req.Header.Set("Accept", "text/event-stream")
	sse, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer sse.Body.Close()
	waitSubscribers(t, url, "sensors.t1", 2)

	py := startPy(t, "zpub.py", in, "connect", "sensors.t1|21.5|#1", "sensors.t1|21.6|#2|extra", "sensors.t1 legacy 21.7", "other|x|#1")
	py.readyPort()
	if l := py.line(20 * time.Second); l != "sent 4" {
		t.Fatalf("pyzmq: %q", l)
	}
	for _, want := range []string{"21.5", "21.6", "legacy 21.7"} {
		ws.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, data, err := ws.ReadMessage()
		if err != nil {
			t.Fatal(err)
		}
		var env map[string]any
		json.Unmarshal(data, &env)
		if fmt.Sprint(env["data"]) != want || env["channel"] != "sensors.t1" {
			t.Fatalf("WebSocket got %s, want %s", data, want)
		}
	}
	br := bufio.NewReader(sse.Body)
	for _, want := range []string{"21.5", "21.6", "legacy 21.7"} {
		for {
			l, err := br.ReadString('\n')
			if err != nil {
				t.Fatal(err)
			}
			if d, ok := strings.CutPrefix(strings.TrimSpace(l), "data: "); ok {
				if d != want {
					t.Fatalf("SSE got %q, want %q", d, want)
				}
				break
			}
		}
	}
}

func TestZMQPubToPySub(t *testing.T) {
	const n = 2000
	py := startPy(t, "zsub.py", "tcp://127.0.0.1", "bind", "", fmt.Sprint(n))
	port := py.readyPort()
	var in strings.Builder
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&in, "reading %d\n", i)
	}
	_, errOut, code := run(t, in.String(), "pub", "meter", "--lines", "--zmq", "tcp://127.0.0.1:"+port, "--timeout", "20s")
	if code != 0 || !strings.Contains(errOut, fmt.Sprintf("sent %d messages", n)) {
		t.Fatalf("pub --zmq: exit %d: %s", code, errOut)
	}
	for i := 1; i <= n; i++ {
		var m struct {
			Frames  int
			Channel string
			Data    string
			Seq     int
		}
		json.Unmarshal([]byte(py.line(20*time.Second)), &m)
		if m.Frames != 3 || m.Channel != "meter" || m.Data != fmt.Sprintf("reading %d", i) || m.Seq != i {
			t.Fatalf("message %d arrived as %+v", i, m)
		}
	}
	// Legacy single frames.
	py2 := startPy(t, "zsub.py", "tcp://127.0.0.1", "bind", "", "1")
	port = py2.readyPort()
	if _, errOut, code := run(t, "", "pub", "meter", "--zmq", "tcp://127.0.0.1:"+port, "--zmq-legacy", "old", "style"); code != 0 {
		t.Fatal(errOut)
	}
	if l := py2.line(10 * time.Second); !strings.Contains(l, `"frames": 1, "channel": "meter old style"`) {
		t.Fatalf("legacy frame %s", l)
	}
	// Nobody listening: exit 124 after the timeout rather than lose it.
	_, errOut, code = run(t, "", "pub", "x", "--zmq", "tcp://127.0.0.1:1", "--timeout", "300ms", "lost?")
	if code != 124 || !strings.Contains(errOut, "no ZeroMQ subscriber") {
		t.Fatalf("no subscriber: exit %d %s", code, errOut)
	}
}

func TestZMQSubExactChannelsAndLegacy(t *testing.T) {
	py := startPy(t, "zpub.py", "tcp://127.0.0.1", "bind",
		"chatter|not for us|#1", "chat|first|#1", "chat.room|no|#1", "chat second in legacy form", "chat|third|#3")
	port := py.readyPort()
	out, errOut, code := run(t, "", "sub", "chat", "--zmq", "tcp://127.0.0.1:"+port, "--count", "3", "--timeout", "20s", "--format", "json")
	if code != 0 {
		t.Fatalf("sub --zmq: exit %d %s", code, errOut)
	}
	var got []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var m map[string]any
		json.Unmarshal([]byte(l), &m)
		got = append(got, fmt.Sprint(m["channel"], ":", m["data"]))
	}
	if strings.Join(got, ",") != "chat:first,chat:second in legacy form,chat:third" {
		t.Fatalf("got %v", got)
	}
	if !strings.Contains(errOut, "1 message missed on chat (sequence 1 to 3)") {
		t.Fatalf("sequence gap not reported: %s", errOut)
	}
}

func TestZMQBrokerOutToPySub(t *testing.T) {
	url, _, out := serveZMQ(t)
	py := startPy(t, "zsub.py", out, "connect", "news", "1000000")
	py.readyPort()
	// Until the subscription has reached the broker, PUB drops: publish a
	// warm-up message until pyzmq reports one.
	got := py.next()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(30 * time.Second)
warm:
	for {
		select {
		case <-deadline:
			t.Fatal("pyzmq received nothing within 30s")
		case l := <-got:
			if !strings.Contains(l, `"data": "warm"`) {
				t.Fatalf("first message %s", l)
			}
			break warm
		case <-tick.C:
			http.Post(url+"/pub/news", "text/plain", strings.NewReader("warm"))
		}
	}
	http.Post(url+"/pub/newsroom", "text/plain", strings.NewReader("prefix-only")) // ZeroMQ delivers prefixes; pyzmq sees it
	var lines []string
	for i := 1; i <= 100; i++ {
		http.Post(url+"/pub/news", "text/plain", strings.NewReader(fmt.Sprint("m", i)))
	}
	// Drain warm-ups still in flight, then expect m1..m100 with rising seqs.
	lastSeq := 0
	for len(lines) < 100 {
		l := py.line(20 * time.Second)
		var m struct {
			Channel, Data string
			Seq           int
		}
		json.Unmarshal([]byte(l), &m)
		if m.Data == "warm" || m.Channel == "newsroom" {
			continue
		}
		if m.Data != fmt.Sprint("m", len(lines)+1) || m.Seq <= lastSeq {
			t.Fatalf("message %d: %s", len(lines)+1, l)
		}
		lastSeq = m.Seq
		lines = append(lines, l)
	}
	resp, err := http.Get(url + "/stats")
	if err != nil {
		t.Fatal(err)
	}
	var st map[string]any
	json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if st["zmq_out_dropped"] != float64(0) || st["zmq_out_sent"].(float64) < 101 {
		t.Fatalf("stats %v", st)
	}
}

func TestZMQCurve(t *testing.T) {
	keys := func() (string, string) {
		out, errOut, code := run(t, "", "zmq", "keygen", "--json")
		if code != 0 {
			t.Fatal(errOut)
		}
		var k map[string]string
		json.Unmarshal([]byte(out), &k)
		return k["public"], k["secret"]
	}
	srvPub, srvSec := keys()
	cliPub, cliSec := keys()
	_, otherSec := keys()
	url, in, _ := serveZMQ(t, "--zmq-curve-secret", srvSec, "--zmq-curve-clients", cliPub)
	sub := start(t, nil, nil, "sub", "secure", "--count", "1", "--timeout", "30s", "-s", url)
	waitSubscribers(t, url, "secure", 1)
	// A key the broker refuses is said as such (exit 1), from libzmq's
	// socket monitor; without CURVE nothing tells us more than silence.
	for name, c := range map[string]struct {
		args []string
		code int
		want string
	}{
		"unlisted key": {[]string{"--zmq-curve-server-key", srvPub, "--zmq-curve-secret", otherSec}, 1, "pushctl: the ZeroMQ peer refused our CURVE key: " + in + " refused our key "},
		"no CURVE":     {nil, 124, "pushctl: timed out: no ZeroMQ subscriber connected in time: 0 of 1 after 1s\n"},
		"fresh key":    {[]string{"--zmq-curve-server-key", srvPub}, 1, "(ZAP status 400): list our public key in its --zmq-curve-clients, or give a listed key with --zmq-curve-secret\n"},
		"wrong server key": {[]string{"--zmq-curve-server-key", cliPub, "--zmq-curve-secret", cliSec}, 124,
			"no CURVE handshake completed: is --zmq-curve-server-key its public key, and does it use CURVE?\n"},
	} {
		// A refused key ends the command as soon as it is refused (the
		// handshake can take over a second on a loaded machine; were
		// the timeout waited for, the subscriber's would pass first);
		// silence is waited for a second.
		timeout := "1s"
		if c.code == 1 {
			timeout = "20s"
		}
		a := append([]string{"pub", "secure", "--zmq", in, "--timeout", timeout}, c.args...)
		_, errOut, code := run(t, "", append(a, "intruder")...)
		if code != c.code || !strings.Contains(errOut, c.want) {
			t.Errorf("%s: exit %d, want %d (refused): %q, want %q", name, code, c.code, errOut, c.want)
		}
	}
	_, errOut, code := run(t, "", "pub", "secure", "--zmq", in, "--timeout", "20s",
		"--zmq-curve-server-key", srvPub, "--zmq-curve-secret", cliSec, "trusted")
	if code != 0 {
		t.Fatalf("allowed client: exit %d %s", code, errOut)
	}
	if l := sub.readLine(10 * time.Second); l != "trusted" {
		t.Fatalf("subscriber got %q (an intruder got through?)", l)
	}
}
