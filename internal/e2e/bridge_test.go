package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// recorder is a real HTTP and WebSocket server on loopback that keeps what
// it was sent.
type recorder struct {
	mu     sync.Mutex
	got    []string
	notify chan string
	failN  int // answer this many POSTs with 503 first
}

func newRecorder(t *testing.T, failN int) (*recorder, *httptest.Server) {
	r := &recorder{notify: make(chan string, 1000), failN: failN}
	up := websocket.Upgrader{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if websocket.IsWebSocketUpgrade(req) {
			c, err := up.Upgrade(w, req, nil)
			if err != nil {
				return
			}
			defer c.Close()
			for {
				_, data, err := c.ReadMessage()
				if err != nil {
					return
				}
				r.add(string(data))
			}
		}
		r.mu.Lock()
		if r.failN > 0 {
			r.failN--
			r.mu.Unlock()
			http.Error(w, "try later", http.StatusServiceUnavailable)
			return
		}
		r.mu.Unlock()
		b, _ := io.ReadAll(req.Body)
		r.add(req.Header.Get("X-Pushctl-Channel") + ":" + string(b))
	}))
	t.Cleanup(srv.Close)
	return r, srv
}

func (r *recorder) add(s string) {
	r.mu.Lock()
	r.got = append(r.got, s)
	r.mu.Unlock()
	r.notify <- s
}

func (r *recorder) expect(t *testing.T, want ...string) {
	t.Helper()
	for _, w := range want {
		select {
		case got := <-r.notify:
			if got != w {
				t.Fatalf("recorder got %q, want %q", got, w)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("recorder did not get %q", w)
		}
	}
}

func TestBridgeZMQToWebSocket(t *testing.T) {
	rec, srv := newRecorder(t, 0)
	py := startPy(t, "zpub.py", "tcp://127.0.0.1", "bind", "a|1|#1", "skip|x|#1", "a|2|#2", "a|3|#3")
	port := py.readyPort()
	_, errOut, code := run(t, "", "bridge", "zmq:tcp://127.0.0.1:"+port, "ws"+strings.TrimPrefix(srv.URL, "http")+"/in",
		"--channels", "a", "--count", "3", "--timeout", "20s")
	if code != 0 || !strings.Contains(errOut, "moved 3, dropped 0") {
		t.Fatalf("bridge: exit %d: %s", code, errOut)
	}
	rec.expect(t, "1", "2", "3")
}

func TestBridgeZMQIntoBrokerForBrowsers(t *testing.T) {
	_, url := serve(t)
	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(url, "http")+"/sub/sensors.>", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	waitSubscribers(t, url, "sensors.t1", 1)
	py := startPy(t, "zpub.py", "tcp://127.0.0.1", "bind", "sensors.t1|20|#1", "sensors.t2|{\"c\":21}|#1")
	port := py.readyPort()
	_, errOut, code := run(t, "", "bridge", "zmq:tcp://127.0.0.1:"+port, "pushctl://"+strings.TrimPrefix(url, "http://"), "--count", "2", "--timeout", "20s")
	if code != 0 {
		t.Fatalf("bridge: exit %d: %s", code, errOut)
	}
	for _, want := range []string{"sensors.t1 20", "sensors.t2 map[c:21]"} {
		ws.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, data, err := ws.ReadMessage()
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		json.Unmarshal(data, &m)
		if got := fmt.Sprint(m["channel"], " ", m["data"]); got != want {
			t.Fatalf("browser side got %s, want %s", got, want)
		}
	}
}

func TestBridgeSSEToZMQ(t *testing.T) {
	_, url := serve(t)
	py := startPy(t, "zsub.py", "tcp://127.0.0.1", "bind", "", "3")
	port := py.readyPort()
	br := start(t, nil, nil, "bridge", url+"/sub/news", "zmq:>tcp://127.0.0.1:"+port, "--count", "3", "--timeout", "30s")
	waitSubscribers(t, url, "news", 1)
	for i := 1; i <= 3; i++ {
		if _, e, code := run(t, "", "pub", "news", "-s", url, fmt.Sprint("n", i)); code != 0 {
			t.Fatal(e)
		}
	}
	for i := 1; i <= 3; i++ {
		var m struct {
			Channel, Data string
			Seq           int
		}
		json.Unmarshal([]byte(py.line(20*time.Second)), &m)
		if m.Channel != "news" || m.Data != fmt.Sprint("n", i) || m.Seq != i {
			t.Fatalf("pyzmq got %+v", m)
		}
	}
	if code := br.wait(20 * time.Second); code != 0 {
		t.Fatalf("bridge exit %d: %s", code, br.Stderr())
	}
}

func TestBridgeSurvivesRestarts(t *testing.T) {
	rec, hook := newRecorder(t, 1) // the sink's first answer is an error: the bridge retries
	broker1, url := serve(t)
	addr := strings.TrimPrefix(url, "http://")
	br := start(t, nil, nil, "bridge", "pushctl://"+addr+"/jobs", hook.URL, "--stats-interval", "0")
	run(t, "", "pub", "jobs", "--wait-subscribers", "1", "-s", url, "j1")
	rec.expect(t, "jobs:j1")
	broker1.signal(syscall.SIGTERM)
	broker1.wait(10 * time.Second)
	br.waitStderr("reconnecting", 10*time.Second)
	serve(t, "--listen", addr)
	run(t, "", "pub", "jobs", "--wait-subscribers", "1", "-s", url, "j2")
	run(t, "", "pub", "jobs", "-s", url, "j3")
	rec.expect(t, "jobs:j2", "jobs:j3")
	br.signal(syscall.SIGTERM) // a service manager's stop
	if code := br.wait(10 * time.Second); code != 0 {
		t.Fatalf("bridge exit %d after SIGTERM, want 0: %s", code, br.Stderr())
	}
	if s := br.Stderr(); !strings.Contains(s, "moved 3, dropped 0") || strings.Contains(s, "reconnects 0") {
		t.Fatalf("bridge summary: %s", s)
	}
}

func TestBridgeStdioAndUsage(t *testing.T) {
	out, errOut, code := run(t, "a\nb\n", "bridge", "-", "-", "--quiet")
	if code != 0 || out != "a\nb\n" {
		t.Fatalf("stdin to stdout: exit %d %q %s", code, out, errOut)
	}
	for _, args := range [][]string{{"bridge", "-"}, {"bridge", "gopher://x", "-"}, {"bridge", "-", "zmq:udp://x"}, {"bridge", "-", "-", "--channel", "a..b"}} {
		if _, errOut, code := run(t, "", args...); code != 2 {
			t.Errorf("%v: exit %d, want 2: %s", args, code, errOut)
		}
	}
	// A source that never answered is "cannot reach" (exit 1), even when
	// --timeout passes first: 124 is for a bridge that was connected.
	_, errOut, code = run(t, "", "bridge", "pushctl://127.0.0.1:1/x", "-", "--timeout", "500ms", "--count", "1", "--quiet")
	if code != 1 || !strings.Contains(errOut, "cannot reach http://127.0.0.1:1 (connection refused)") {
		t.Fatalf("unreachable source with timeout: exit %d %s", code, errOut)
	}
}
