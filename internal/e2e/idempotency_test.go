package e2e

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/pushctl/pushctl/internal/redistest"
)

// keyedPost publishes body to ch with an Idempotency-Key header.
func keyedPost(t *testing.T, u, key, body string) (int, map[string]any, []byte) {
	t.Helper()
	req, _ := http.NewRequest("POST", u, strings.NewReader(body))
	req.Header.Set("Idempotency-Key", key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var ack map[string]any
	json.Unmarshal(b, &ack)
	return resp.StatusCode, ack, b
}

// A script that publishes twice with one key (a retry after a lost reply,
// a CI job run again) stores the message once, on every backend: the
// second reply is the first's ack marked duplicate, and subscribers get
// one copy. Keys that are not keys are refused before anything is read.
func TestIdempotencyKeys(t *testing.T) {
	rs := redistest.Start(t, redistest.Options{})
	for _, backend := range []struct {
		name  string
		flags []string
	}{
		{"memory", nil},
		{"data-dir", []string{"--data-dir", t.TempDir()}},
		{"redis", []string{"--broker", rs.URL()}},
	} {
		t.Run(backend.name, func(t *testing.T) {
			_, url := serve(t, backend.flags...)
			status, first, body := keyedPost(t, url+"/pub/deploys", "deploy-42", "v42 is out")
			if status != 200 || first["duplicate"] != nil {
				t.Fatalf("first publish: %d %s", status, body)
			}
			status, again, body := keyedPost(t, url+"/pub/deploys", "deploy-42", "v42 is out (again)")
			if status != 200 || again["duplicate"] != true || again["id"] != first["id"] || again["time"] != first["time"] {
				t.Fatalf("second publish: %d %s; first was %v", status, body, first)
			}
			// The CLI: --key, printed as a duplicate the second time.
			out, errOut, code := run(t, "", "pub", "deploys", "--key", "deploy-43", "-s", url, "v43")
			if code != 0 || strings.Contains(out, "duplicate") {
				t.Fatalf("pub --key: %d %q %s", code, out, errOut)
			}
			out, errOut, code = run(t, "", "pub", "deploys", "--key", "deploy-43", "-s", url, "v43")
			if code != 0 || !strings.Contains(out, "duplicate") {
				t.Fatalf("pub --key again: %d %q %s", code, out, errOut)
			}
			for _, bad := range []struct{ key, path string }{
				{"has space", "/pub/deploys"}, {strings.Repeat("k", 129), "/pub/deploys"}, {"", "/pub/deploys"},
				{"ok-key", "/pub/deploys?lines=1"}, {"ok-key", "/pub?channel=deploys"},
			} {
				status, _, body := keyedPost(t, url+bad.path, bad.key, "refused")
				if status != 400 || codeOf(t, body) != "invalid_parameter" {
					t.Fatalf("key %q on %s: %d %s", bad.key, bad.path, status, body)
				}
			}
			// NDJSON lines and WebSocket frames carry idempotency_key.
			status, body = post(t, url+"/pub", "", `{"channel":"deploys","data":"v44","idempotency_key":"deploy-44"}`+"\n"+
				`{"channel":"deploys","data":"v44 again","idempotency_key":"deploy-44"}`+"\n"+
				`{"channel":"deploys","data":"v45","idempotency_key":"bad key"}`+"\n")
			lines := strings.Split(strings.TrimSpace(string(body)), "\n")
			if status != 200 || len(lines) != 3 || strings.Contains(lines[0], "duplicate") || !strings.Contains(lines[1], `"duplicate":true`) || !strings.Contains(lines[2], "invalid_parameter") {
				t.Fatalf("NDJSON publish: %d %s", status, body)
			}
			ws := dialFrames(t, url)
			ws.do("ack", map[string]any{"type": "publish", "ref": "1", "channel": "deploys", "data": "v46", "idempotency_key": "deploy-46"})
			if f := ws.do("ack", map[string]any{"type": "publish", "ref": "2", "channel": "deploys", "data": "v46 again", "idempotency_key": "deploy-46"}); f["duplicate"] != true {
				t.Fatalf("WebSocket publish again: %v", f)
			}
			sub := start(t, nil, nil, "sub", "deploys", "--since", "all", "--count", "4", "-s", url)
			if got := strings.Join(sub.rest(30e9), "|"); got != "v42 is out|v43|v44|v46" {
				t.Fatalf("the channel holds %q", got)
			}
		})
	}
}

// replyEater forwards each connection to target and, once the reply's
// first byte comes back (the request was handled), closes the connection
// without passing it on: a node that stored a publish and went away
// before its reply left.
type replyEater struct {
	l     net.Listener
	eaten atomic.Int64
}

func newReplyEater(t *testing.T, target string) *replyEater {
	e := &replyEater{}
	e.l = acceptLoop(t, func(c net.Conn) {
		defer c.Close()
		up, err := net.Dial("tcp", target)
		if err != nil {
			return
		}
		defer up.Close()
		go io.Copy(up, c)
		var b [1]byte
		if n, _ := up.Read(b[:]); n > 0 {
			e.eaten.Add(1)
		}
	})
	return e
}

// A publish whose node handled it and went away before replying is sent
// to the next node (`-s A,B`); with the idempotency key every publish
// through several nodes carries, it is stored once. The bridge's pushctl
// sink keeps one key for every try of a message too.
func TestPublishRetriedOnAnotherNodeIsStoredOnce(t *testing.T) {
	rs := redistest.Start(t, redistest.Options{})
	_, b := serve(t, "--broker", rs.URL())
	_, c := serve(t, "--broker", rs.URL())
	eater := newReplyEater(t, strings.TrimPrefix(b, "http://"))
	lost := "http://" + eater.l.Addr().String()
	out, errOut, code := run(t, "", "pub", "once", "-s", lost+","+c, "--json", "only once")
	if code != 0 || !strings.Contains(out, `"duplicate":true`) || eater.eaten.Load() == 0 {
		t.Fatalf("pub through a node that lost its reply: exit %d %q %s (replies eaten: %d)", code, out, errOut, eater.eaten.Load())
	}
	bridge := start(t, strings.NewReader("first\nsecond\n"), nil, "bridge", "-", "pushctl://"+strings.TrimPrefix(lost, "http://")+","+strings.TrimPrefix(c, "http://")+"/copy", "--stats-interval", "0")
	if code := bridge.wait(30e9); code != 0 {
		t.Fatalf("bridge exit %d: %s", code, bridge.Stderr())
	}
	for ch, want := range map[string][]string{"once": {"only once"}, "copy": {"first", "second"}} {
		sub := start(t, nil, nil, "sub", ch, "--since", "all", "--count", strconv.Itoa(len(want)), "-s", c)
		if got := sub.rest(30e9); strings.Join(got, "|") != strings.Join(want, "|") {
			t.Fatalf("%s holds %q, want %q", ch, got, want)
		}
		var info struct {
			LastSeq int `json:"last_seq"`
		}
		resp, err := http.Get(c + "/channels/" + ch)
		if err != nil {
			t.Fatal(err)
		}
		json.NewDecoder(resp.Body).Decode(&info)
		resp.Body.Close()
		if info.LastSeq != len(want) {
			t.Fatalf("%s holds %d messages, want %d", ch, info.LastSeq, len(want))
		}
	}
}
