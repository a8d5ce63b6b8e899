package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/pushctl/pushctl/internal/redistest"
)

// sseLines reads an SSE stream's data lines into a channel, reconnecting
// with Last-Event-ID across the given nodes in turn, as a browser behind a
// load balancer would.
func sseLines(t *testing.T, path string, nodes ...string) <-chan string {
	out := make(chan string, 100000)
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	go func() {
		lastID, i := "", 0
		for {
			select {
			case <-stop:
				return
			default:
			}
			req, _ := http.NewRequest("GET", nodes[i%len(nodes)]+path, nil)
			req.Header.Set("Accept", "text/event-stream")
			if lastID != "" {
				req.Header.Set("Last-Event-ID", lastID)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil || resp.StatusCode != 200 {
				if resp != nil {
					resp.Body.Close()
				}
				i++ // try the next node
				select {
				case <-stop:
					return
				case <-time.After(50 * time.Millisecond): // reconnect backoff, as EventSource does
				}
				continue
			}
			br := bufio.NewReader(resp.Body)
			id := ""
			for {
				l, err := br.ReadString('\n')
				if err != nil {
					break
				}
				l = strings.TrimRight(l, "\n")
				switch {
				case strings.HasPrefix(l, "id: "):
					id = l[4:]
				case strings.HasPrefix(l, "data: "):
					out <- l[6:]
					lastID = id
				}
			}
			resp.Body.Close()
		}
	}()
	return out
}

// publishNumbers publishes from, from+1 … to on node as separate HTTP
// publishes, in order.
func publishNumbers(t *testing.T, node, channel string, from, to int) {
	t.Helper()
	hc := &http.Client{Timeout: 10 * time.Second}
	for i := from; i <= to; i++ {
		resp, err := hc.Post(node+"/pub/"+channel, "text/plain", strings.NewReader(strconv.Itoa(i)))
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("publish %d on %s: %v %v", i, node, err, resp)
		}
		resp.Body.Close()
	}
}

func expectSeq(t *testing.T, who string, got <-chan string, from, to int) {
	t.Helper()
	for i := from; i <= to; i++ {
		select {
		case d := <-got:
			if d != strconv.Itoa(i) {
				t.Fatalf("%s: message %d is %q", who, i, d)
			}
		case <-time.After(60 * time.Second):
			t.Fatalf("%s: message %d never came", who, i)
		}
	}
	select {
	case d := <-got:
		t.Fatalf("%s: extra message %q", who, d)
	default:
	}
}

// Three `pushctl serve` nodes on one redis-server: a publisher on A waits
// for subscribers on B and C, then everything reaches a WebSocket and a
// pattern subscriber on B, an SSE client and `pushctl sub` on C, in order.
func TestClusterThreeNodes(t *testing.T) {
	threeNodes(t, redistest.Start(t, redistest.Options{}).URL())
}

// The same on a three-shard Redis Cluster, the nodes given only one of
// its addresses: the channel travels by sharded Pub/Sub, and by classic
// Pub/Sub to the pattern subscriber.
func TestClusterThreeNodesOnRedisCluster(t *testing.T) {
	threeNodes(t, redistest.StartCluster(t, 3).URL())
}

func threeNodes(t *testing.T, url string) {
	_, a := serve(t, "--broker", url)
	_, b := serve(t, "--broker", url)
	_, c := serve(t, "--broker", url)
	const n = 2000

	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(b, "http")+"/sub/orders.eu", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	pat, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(b, "http")+"/sub/orders.*", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pat.Close()
	sse := sseLines(t, "/sub/orders.eu?data=raw", c)
	sub := start(t, nil, nil, "sub", "orders.eu", "--count", strconv.Itoa(n), "--timeout", "120s", "-s", c)

	lines := make([]string, n)
	for i := range lines {
		lines[i] = strconv.Itoa(i + 1)
	}
	out, errOut, code := run(t, strings.Join(lines, "\n")+"\n", "pub", "orders.eu", "--lines", "--wait-subscribers", "4", "--timeout", "60s", "-s", a)
	if code != 0 {
		t.Fatalf("pub on A: exit %d\n%s\n%s", code, out, errOut)
	}
	for _, conn := range []*websocket.Conn{ws, pat} {
		for i := 1; i <= n; i++ {
			conn.SetReadDeadline(time.Now().Add(30 * time.Second))
			_, data, err := conn.ReadMessage()
			if err != nil {
				t.Fatalf("WebSocket on B: message %d: %v", i, err)
			}
			var m struct{ Channel, Data string }
			if err := json.Unmarshal(data, &m); err != nil || m.Channel != "orders.eu" || m.Data != strconv.Itoa(i) {
				t.Fatalf("WebSocket on B: message %d is %s", i, data)
			}
		}
	}
	expectSeq(t, "SSE on C", sse, 1, n)
	for i := 1; i <= n; i++ {
		if l := sub.readLine(30 * time.Second); l != strconv.Itoa(i) {
			t.Fatalf("pushctl sub on C: message %d is %q", i, l)
		}
	}
	if code := sub.wait(30 * time.Second); code != 0 {
		t.Fatalf("pushctl sub exit %d: %s", code, sub.Stderr())
	}
	// Every node sees the cluster's channel and its four subscribers.
	resp, err := http.Get(a + "/channels/orders.eu")
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		LastSeq     int `json:"last_seq"`
		Subscribers int
	}
	json.NewDecoder(resp.Body).Decode(&info)
	resp.Body.Close()
	if info.LastSeq != n || info.Subscribers < 3 { // pushctl sub has left
		t.Fatalf("channel info on A: %+v", info)
	}
}

// A node killed with SIGKILL while it streams 5,000 messages: its
// subscribers (pushctl sub with two --server URLs, and an SSE client that
// tries the next node) resume on the other node with nothing lost and
// nothing repeated.
func TestClusterNodeKilled(t *testing.T) {
	rs := redistest.Start(t, redistest.Options{})
	_, a := serve(t, "--broker", rs.URL(), "--history", "10000")
	bp, b := serve(t, "--broker", rs.URL(), "--history", "10000")
	_, c := serve(t, "--broker", rs.URL(), "--history", "10000")
	const total = 5000
	var subs []*proc
	for i := 0; i < 3; i++ {
		subs = append(subs, start(t, nil, nil, "sub", "ticks", "--count", strconv.Itoa(total), "--timeout", "180s", "--fail-on-gap", "-s", b+","+c))
	}
	sse := sseLines(t, "/sub/ticks?data=raw", b, c)
	waitSubscribers(t, a, "ticks", 4)

	publish := func(from, to int) { publishNumbers(t, a, "ticks", from, to) }
	publish(1, 1000)
	// Kill B once its subscribers are streaming.
	for i := 1; i <= 500; i++ {
		if l := subs[0].readLine(30 * time.Second); l != strconv.Itoa(i) {
			t.Fatalf("before the kill: message %d is %q", i, l)
		}
	}
	killed := time.Now()
	bp.cmd.Process.Signal(syscall.SIGKILL)
	bp.wait(10 * time.Second)
	publish(1001, 1001)
	var resumed time.Duration
	for i := 501; i <= 1001; i++ {
		if l := subs[0].readLine(60 * time.Second); l != strconv.Itoa(i) {
			t.Fatalf("sub 0: message %d is %q (stderr %s)", i, l, subs[0].Stderr())
		}
		resumed = time.Since(killed)
	}
	publish(1002, total)
	for i := 1002; i <= total; i++ {
		if l := subs[0].readLine(60 * time.Second); l != strconv.Itoa(i) {
			t.Fatalf("sub 0: message %d is %q (stderr %s)", i, l, subs[0].Stderr())
		}
	}
	for k, s := range subs[1:] {
		for i := 1; i <= total; i++ {
			if l := s.readLine(60 * time.Second); l != strconv.Itoa(i) {
				t.Fatalf("sub %d: message %d is %q (stderr %s)", k+1, i, l, s.Stderr())
			}
		}
	}
	expectSeq(t, "SSE client", sse, 1, total)
	t.Logf("node B killed: a subscriber had the first message published after the kill %s later, every subscriber all %d messages %s later",
		resumed.Round(time.Millisecond), total, time.Since(killed).Round(time.Millisecond))
	for k, s := range subs {
		if code := s.wait(30 * time.Second); code != 0 {
			t.Fatalf("sub %d exit %d: %s", k, code, s.Stderr())
		}
		if strings.Contains(s.Stderr(), "messages lost") { // (and --fail-on-gap makes a gap exit 1)
			t.Fatalf("sub %d reported a loss: %s", k, s.Stderr())
		}
	}
}

// `pushctl bridge` with pushctl://B,C endpoints: after node B is killed
// its source resumes on C from its cursor and its sink publishes through
// C; nothing is lost or repeated.
func TestClusterBridgeFailsOver(t *testing.T) {
	rs := redistest.Start(t, redistest.Options{})
	_, a := serve(t, "--broker", rs.URL(), "--history", "10000")
	bp, b := serve(t, "--broker", rs.URL(), "--history", "10000")
	_, c := serve(t, "--broker", rs.URL(), "--history", "10000")
	nodes := strings.TrimPrefix(b, "http://") + "," + strings.TrimPrefix(c, "http://")
	const total = 2000
	copies := start(t, nil, nil, "sub", "copy", "--count", strconv.Itoa(total), "--timeout", "120s", "--fail-on-gap", "-s", c)
	bridge := start(t, nil, nil, "bridge", "pushctl://"+nodes+"/ticks", "pushctl://"+nodes+"/copy", "--stats-interval", "0")
	waitSubscribers(t, a, "ticks", 1)
	waitSubscribers(t, a, "copy", 1)

	publish := func(from, to int) { publishNumbers(t, a, "ticks", from, to) }
	publish(1, total/2)
	// Every copy made through B arrived: the bridge is between messages.
	for i := 1; i <= total/2; i++ {
		if l := copies.readLine(30 * time.Second); l != strconv.Itoa(i) {
			t.Fatalf("copy %d is %q (bridge: %s)", i, l, bridge.Stderr())
		}
	}
	bp.cmd.Process.Signal(syscall.SIGKILL)
	bp.wait(10 * time.Second)
	publish(total/2+1, total)
	for i := total/2 + 1; i <= total; i++ {
		if l := copies.readLine(60 * time.Second); l != strconv.Itoa(i) {
			t.Fatalf("after the kill: copy %d is %q (bridge: %s)", i, l, bridge.Stderr())
		}
	}
	if code := copies.wait(30 * time.Second); code != 0 {
		t.Fatalf("sub exit %d: %s", code, copies.Stderr())
	}
}

// wsFrames is a WebSocket client of a pushctl node speaking frames.
type wsFrames struct {
	t *testing.T
	c *websocket.Conn
}

func dialFrames(t *testing.T, node string) *wsFrames {
	t.Helper()
	c, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(node, "http")+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &wsFrames{t: t, c: c}
}

// next reads the next frame, raw.
func (w *wsFrames) next() map[string]any {
	w.t.Helper()
	w.c.SetReadDeadline(time.Now().Add(60 * time.Second))
	var f map[string]any
	if err := w.c.ReadJSON(&f); err != nil {
		w.t.Fatalf("reading a frame: %v", err)
	}
	return f
}

// do sends a frame and checks the reply's type.
func (w *wsFrames) do(want string, frame map[string]any) map[string]any {
	w.t.Helper()
	if err := w.c.WriteJSON(frame); err != nil {
		w.t.Fatal(err)
	}
	f := w.next()
	if f["type"] != want {
		w.t.Fatalf("%v: got %v, want %s", frame, f, want)
	}
	return f
}

// event reads the next message and returns "event data".
func (w *wsFrames) event() string {
	w.t.Helper()
	f := w.next()
	if f["type"] != "message" {
		w.t.Fatalf("want a message, got %v", f)
	}
	data, _ := json.Marshal(f["data"])
	return fmt.Sprintf("%v %s", f["event"], data)
}

func presenceOf(t *testing.T, node, channel string) string {
	t.Helper()
	resp, err := http.Get(node + "/channels/" + channel + "/presence")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var l struct {
		Count   int
		Members []struct {
			ID    string
			Nodes int
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&l); err != nil || resp.StatusCode != 200 {
		t.Fatalf("presence on %s: %d %v", node, resp.StatusCode, err)
	}
	out := strconv.Itoa(l.Count)
	for _, m := range l.Members {
		out += fmt.Sprintf(" %s/%d", m.ID, m.Nodes)
	}
	return out
}

// Presence across three `pushctl serve` nodes on one Redis: a member who
// joins on A and on B is one member; C, which has no member of its own,
// lists both (GET and `pushctl who`); when B is killed with SIGKILL the
// others remove the member only B held once --node-timeout has passed,
// and a subscriber on C sees exactly one event per change.
func TestClusterPresence(t *testing.T) {
	rs := redistest.Start(t, redistest.Options{})
	flags := []string{"--broker", rs.URL(), "--node-timeout", "2s", "--presence-grace", "100ms"}
	_, a := serve(t, flags...)
	bp, b := serve(t, flags...)
	_, c := serve(t, flags...)

	watcher := dialFrames(t, c)
	watcher.do("subscribed", map[string]any{"type": "subscribe", "channels": []string{"room"}})
	aliceA := dialFrames(t, a)
	aliceA.do("joined", map[string]any{"type": "join", "channel": "room", "id": "alice", "info": map[string]string{"name": "Alice"}})
	if got := watcher.event(); got != `member_added {"id":"alice","info":{"name":"Alice"}}` {
		t.Fatalf("watcher on C: %s", got)
	}
	onB := dialFrames(t, b)
	j := onB.do("joined", map[string]any{"type": "join", "channel": "room", "id": "alice"})
	if ms, _ := json.Marshal(j["members"]); !strings.Contains(string(ms), `"id":"alice","info":{"name":"Alice"}`) {
		t.Fatalf("alice joining on B is told the member list with herself as she is: %s", ms)
	}
	bob := dialFrames(t, b)
	bob.do("joined", map[string]any{"type": "join", "channel": "room", "id": "bob"})
	// alice's second node added nothing: bob's arrival is the next event.
	if got := watcher.event(); got != `member_added {"id":"bob"}` {
		t.Fatalf("watcher on C: %s", got)
	}
	for _, n := range []string{a, b, c} {
		if got := presenceOf(t, n, "room"); got != "2 alice/2 bob/1" {
			t.Fatalf("presence on %s: %s", n, got)
		}
	}
	out, errOut, code := run(t, "", "who", "room", "-s", c, "--json")
	if code != 0 || !strings.Contains(out, `"id":"alice"`) || !strings.Contains(out, `"id":"bob"`) {
		t.Fatalf("pushctl who on C: exit %d %s %s", code, out, errOut)
	}

	killed := time.Now()
	bp.cmd.Process.Signal(syscall.SIGKILL)
	bp.wait(10 * time.Second)
	if got := watcher.event(); got != `member_removed {"id":"bob"}` {
		t.Fatalf("watcher on C once B was killed: %s", got)
	}
	took := time.Since(killed)
	t.Logf("bob (held only by the killed node) was removed %s after the kill", took.Round(time.Millisecond))
	if took >= 8*time.Second { // the default --node-timeout is 10s
		t.Fatalf("bob was removed %s after the kill: --node-timeout 2s was not applied", took)
	}
	if got := presenceOf(t, a, "room"); got != "1 alice/1" {
		t.Fatalf("presence on A after B died: %s", got)
	}
	// alice's last connection closes: she leaves once the grace is over.
	aliceA.c.Close()
	if got := watcher.event(); got != `member_removed {"id":"alice"}` {
		t.Fatalf("watcher on C: %s", got)
	}
	if got := presenceOf(t, c, "room"); got != "0" {
		t.Fatalf("presence on C at the end: %s", got)
	}
}
