package server_test

// Regression tests for the delivery promise: nothing corrupted, nothing
// silently skipped, one clear and counted reason whenever a connection
// ends. Each drives a real client over loopback.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/pushctl/pushctl/internal/auth"
	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/server"
	"github.com/pushctl/pushctl/internal/wire"
)

// payload is the data of message i: mostly small, every 97th larger than
// the writer's buffers, so frames go out in more than one piece.
func payload(i int) string {
	n := 1 + i%200
	if i%97 == 0 {
		n = 20 << 10
	}
	p := fmt.Sprintf("m%d:", i)
	return p + strings.Repeat(string(rune('a'+i%26)), max(0, n-len(p)))
}

// streamPublish publishes lines through one NDJSON request and returns
// when the broker acknowledged them all (the error, if any, on errc).
func streamPublish(e *env, channel string, n int, data func(int) string) <-chan error {
	errc := make(chan error, 1)
	pr, pw := io.Pipe()
	go func() {
		bw := bufio.NewWriter(pw)
		for i := 1; i <= n; i++ {
			b, _ := json.Marshal(map[string]string{"data": data(i)})
			bw.Write(b)
			bw.WriteByte('\n')
		}
		bw.Flush()
		pw.Close()
	}()
	go func() {
		resp, err := http.Post(e.srv.URL+"/pub?channel="+channel, "application/x-ndjson", pr)
		if err != nil {
			errc <- err
			return
		}
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		got := 0
		for sc.Scan() {
			if bytes.Contains(sc.Bytes(), []byte(`"error"`)) {
				errc <- fmt.Errorf("publish failed: %s", sc.Bytes())
				return
			}
			got++
		}
		if got != n {
			errc <- fmt.Errorf("%d acks for %d lines", got, n)
			return
		}
		errc <- nil
	}()
	return errc
}

// TestWebSocketPingsNeverCorruptFrames: a client that pings continually
// while reading a fast stream of large and small frames, pausing now and
// then, sees every frame intact and in order (issue: pongs landed inside
// data frames).
func TestWebSocketPingsNeverCorruptFrames(t *testing.T) {
	const n = 100_000
	e := newEnv(t, broker.MemoryOptions{Retention: broker.Retention{HistorySize: 10}, QueueSize: 2 * n}, server.Options{QueueSize: 2 * n})
	c := dialWS(t, e, "/sub/pings")
	var pongs atomic.Int64
	c.SetPongHandler(func(string) error { pongs.Add(1); return nil })
	e.waitSubs("pings", 1)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		tick := time.NewTicker(200 * time.Microsecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			if c.WriteControl(websocket.PingMessage, []byte(strconv.Itoa(i)), time.Now().Add(5*time.Second)) != nil {
				return
			}
		}
	}()
	pubErr := streamPublish(e, "pings", n, payload)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 1; i <= n; i++ {
		if rng.IntN(2000) == 0 {
			time.Sleep(time.Duration(1+rng.IntN(5)) * time.Millisecond) // a reader that pauses
		}
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		typ, data, err := c.ReadMessage()
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		env, err := wire.DecodeEnvelope(data)
		if typ != websocket.TextMessage || err != nil {
			t.Fatalf("message %d: corrupted frame (type %d): %q", i, typ, trunc(data))
		}
		got, _ := env.Bytes()
		if env.Seq != uint64(i) || string(got) != payload(i) {
			t.Fatalf("message %d: got seq %d data %q", i, env.Seq, trunc(got))
		}
	}
	if err := <-pubErr; err != nil {
		t.Fatal(err)
	}
	if pongs.Load() == 0 {
		t.Fatal("no pong came back")
	}
	t.Logf("%d messages intact, %d pongs", n, pongs.Load())
}

func trunc(b []byte) []byte {
	if len(b) > 80 {
		return b[:80]
	}
	return b
}

// TestWebSocketPingDuringPauseKeepsStream: a reader that pauses for longer
// than a second with megabytes queued, and pings once, gets everything
// (issue: the pong's 1 s write deadline replaced the broker's and cut the
// stream mid-frame).
func TestWebSocketPingDuringPauseKeepsStream(t *testing.T) {
	e := newEnv(t, broker.MemoryOptions{}, server.Options{MaxMessageSize: 2 << 20})
	c := dialWS(t, e, "/sub/big")
	pong := make(chan struct{}, 1)
	c.SetPongHandler(func(string) error {
		select {
		case pong <- struct{}{}:
		default:
		}
		return nil
	})
	e.waitSubs("big", 1)
	big := strings.Repeat("x", 1_000_000)
	for i := 0; i < 20; i++ {
		e.publish("big", fmt.Sprintf("%02d%s", i, big))
	}
	if err := c.WriteControl(websocket.PingMessage, []byte("p"), time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2500 * time.Millisecond) // the client is busy and reads nothing
	for i := 0; i < 20; i++ {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, data, err := c.ReadMessage()
		if err != nil {
			t.Fatalf("message %d of 20: %v", i+1, err)
		}
		env, err := wire.DecodeEnvelope(data)
		if err != nil {
			t.Fatalf("message %d: %v", i+1, err)
		}
		got, _ := env.Bytes()
		if string(got) != fmt.Sprintf("%02d%s", i, big) {
			t.Fatalf("message %d: wrong data (%d bytes)", i+1, len(got))
		}
	}
	select {
	case <-pong:
	default:
		t.Fatal("the ping was not answered")
	}
}

// wsSubscribe sends a subscribe frame and returns the subscribed reply.
func wsSubscribe(t *testing.T, c *websocket.Conn, frame map[string]any) map[string]any {
	t.Helper()
	frame["type"] = "subscribe"
	if err := c.WriteJSON(frame); err != nil {
		t.Fatal(err)
	}
	f := readFrame(t, c)
	if f["type"] != "subscribed" {
		t.Fatalf("subscribe %v: got %v", frame, f)
	}
	return f
}

// TestWebSocketPatternResumeReplaysNewChannels: resuming a pattern over
// the /ws protocol with the cursor it handed out replays channels that
// appeared while the client was away (issue: they were skipped silently).
func TestWebSocketPatternResumeReplaysNewChannels(t *testing.T) {
	e := newEnv(t, broker.MemoryOptions{}, server.Options{})
	e.publish("news.a", "a0")
	c := dialWS(t, e, "/ws")
	ack := wsSubscribe(t, c, map[string]any{"channels": []string{"news.>"}})
	cs, _ := ack["cursor"].(string)
	cur, since, err := broker.ParseResume(cs, []string{"news.>"})
	if err != nil || since.IsZero() {
		t.Fatalf("subscribed frame's cursor %q: %v (a pattern's cursor carries a time)", cs, err)
	}
	e.publish("news.a", "a1")
	f := readFrame(t, c)
	p, _ := broker.ParsePosition(f["id"].(string))
	cur[f["channel"].(string)] = p
	c.Close()

	// While away: more on news.a, and a channel that did not exist.
	e.publish("news.a", "a2")
	e.publish("news.b", "b1")
	e.publish("news.a", "a3")

	c2 := dialWS(t, e, "/ws")
	wsSubscribe(t, c2, map[string]any{"channels": []string{"news.>"}, "since": broker.FormatResume(cur, since)})
	var got []string
	for len(got) < 3 {
		f := readFrame(t, c2)
		if f["type"] != "message" {
			t.Fatalf("got %v", f)
		}
		got = append(got, fmt.Sprint(f["channel"], "=", f["data"]))
	}
	if want := "news.a=a2 news.b=b1 news.a=a3"; strings.Join(got, " ") != want {
		t.Fatalf("resumed with %v, want %s (in publish order)", got, want)
	}

	// A path subscription hands out the same cursor in a response header.
	_, resp, err := websocket.DefaultDialer.Dial(wsURL(e, "/sub/news.>"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, s, err := broker.ParseResume(resp.Header.Get("Pushctl-Cursor"), []string{"news.>"}); err != nil || s.IsZero() {
		t.Fatalf("Pushctl-Cursor %q on a pattern WebSocket: %v", resp.Header.Get("Pushctl-Cursor"), err)
	}
}

type pollReply struct {
	Events []struct {
		Type    string `json:"type"`
		Channel string `json:"channel"`
		Data    string `json:"data"`
	} `json:"events"`
	Cursor string `json:"cursor"`
}

func (e *env) poll(path string) (pollReply, http.Header) {
	e.t.Helper()
	resp, body := e.do("GET", path, nil)
	if resp.StatusCode != 200 {
		e.t.Fatalf("poll %s: %d %s", path, resp.StatusCode, body)
	}
	var pr pollReply
	if err := json.Unmarshal(body, &pr); err != nil {
		e.t.Fatalf("poll reply %s: %v", body, err)
	}
	return pr, resp.Header
}

func (pr pollReply) String() string {
	var s []string
	for _, ev := range pr.Events {
		s = append(s, ev.Channel+"="+ev.Data)
	}
	return strings.Join(s, " ")
}

// TestLongPollPatternResume: a pattern long-poll resumed with the cursor
// of its last reply gets channels that appeared meanwhile, in publish
// order across channels (issue: new channels were skipped and a batch was
// grouped by channel).
func TestLongPollPatternResume(t *testing.T) {
	e := newEnv(t, broker.MemoryOptions{}, server.Options{})
	e.publish("lp2.x", "x0")
	if pr, _ := e.poll("/sub/lp2.>?poll=0s"); len(pr.Events) != 0 || pr.Cursor == "" {
		t.Fatalf("poll=0s: %+v", pr) // answers at once, with where it starts
	}
	pr, h := e.poll("/sub/lp2.>?poll=50ms")
	if len(pr.Events) != 0 || pr.Cursor == "" {
		t.Fatalf("first poll: %+v", pr)
	}
	if h.Get("Pushctl-Time") == "" {
		t.Fatal("long-poll reply without Pushctl-Time")
	}
	e.publish("lp2.y", "y1") // a channel that did not exist
	e.publish("lp2.x", "x1")
	e.publish("lp2.y", "y2")
	e.publish("lp2.x", "x2")
	pr, _ = e.poll("/sub/lp2.>?poll=5s&since=" + urlQuery(pr.Cursor))
	if got, want := pr.String(), "lp2.y=y1 lp2.x=x1 lp2.y=y2 lp2.x=x2"; got != want {
		t.Fatalf("resumed poll: %q, want %q", got, want)
	}
	// Its cursor resumes exactly after what it returned.
	e.publish("lp2.z", "z1")
	pr, _ = e.poll("/sub/lp2.>?poll=5s&since=" + urlQuery(pr.Cursor))
	if got := pr.String(); got != "lp2.z=z1" {
		t.Fatalf("next poll: %q", got)
	}
}

func urlQuery(s string) string {
	r := strings.NewReplacer("%", "%25", "&", "%26", "+", "%2B", "=", "%3D", ",", "%2C", ":", "%3A", " ", "%20")
	return r.Replace(s)
}

// TestReauthenticationReplacesGrants: after an auth frame, the connection
// has exactly what the new token grants (issue: subscriptions of the old
// token went on after it expired).
func TestReauthenticationReplacesGrants(t *testing.T) {
	e := newEnv(t, broker.MemoryOptions{}, server.Options{Auth: auth.New(auth.Config{Secret: secret})})
	a := tok(t, auth.Grants{Subscribe: []string{"news.a"}}, 3*time.Second)
	b := tok(t, auth.Grants{Subscribe: []string{"other"}}, 10*time.Minute)
	c := dialWS(t, e, "/ws?token="+a)
	wsSubscribe(t, c, map[string]any{"channels": []string{"news.a"}})
	if err := c.WriteJSON(map[string]any{"type": "auth", "token": b, "ref": "r"}); err != nil {
		t.Fatal(err)
	}
	if f := readFrame(t, c); f["type"] != "authenticated" || f["ref"] != "r" {
		t.Fatalf("auth reply: %v", f)
	}
	f := readFrame(t, c)
	if f["type"] != "unsubscribed" || f["code"] != "forbidden" || fmt.Sprint(f["channels"]) != "[news.a]" {
		t.Fatalf("after re-auth: %v, want news.a unsubscribed with forbidden", f)
	}
	e.publish("news.a", "secret", "Authorization", "Bearer "+tok(t, auth.Grants{Publish: []string{">"}}, time.Minute))
	wsSubscribe(t, c, map[string]any{"channels": []string{"other"}})
	e.publish("other", "ok", "Authorization", "Bearer "+tok(t, auth.Grants{Publish: []string{">"}}, time.Minute))
	if f := readFrame(t, c); f["channel"] != "other" {
		t.Fatalf("got %v, want only the message on other", f)
	}
	// Subscribing to what the old token granted is refused now.
	c.WriteJSON(map[string]any{"type": "subscribe", "channels": []string{"news.a"}, "ref": "x"})
	if f := readFrame(t, c); f["type"] != "error" || f["code"] != "forbidden" {
		t.Fatalf("subscribe news.a with the new token: %v", f)
	}
}

// statsOf returns GET /stats.
func (e *env) statsOf() map[string]any {
	e.t.Helper()
	_, body := e.do("GET", "/stats", nil)
	var m map[string]any
	json.Unmarshal(body, &m)
	return m
}

// waitStat waits (polling, with a deadline) until /stats[key] >= n.
func (e *env) waitStat(key string, n float64, publish func()) {
	e.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if v, _ := e.statsOf()[key].(float64); v >= n {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("/stats %s never reached %v: %v", key, n, e.statsOf())
		}
		publish()
	}
}

// smallBufferDialer reads through a small socket buffer, so a client that
// stops reading is noticed after little data.
var smallBufferDialer = &websocket.Dialer{NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetReadBuffer(16 << 10)
	}
	return c, err
}}

// TestStalledSubscriberEndsWithReason: a WebSocket or SSE subscriber that
// stops reading is disconnected as "stalled": counted in /stats and
// /metrics, its subscription (and queue) released at once, and the reason
// written after whole frames if it reads again in time (issue: it was cut
// mid-frame with no reason, uncounted).
func TestStalledSubscriberEndsWithReason(t *testing.T) {
	e := newEnv(t, broker.MemoryOptions{}, server.Options{WriteTimeout: 300 * time.Millisecond})
	chunk := strings.Repeat("s", 256<<10)
	publish := func() { e.publish("stall", chunk) }

	c, _, err := smallBufferDialer.Dial(wsURL(e, "/sub/stall"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	e.waitSubs("stall", 1)
	e.waitStat("stalled_disconnects", 1, publish)
	if info := e.channelInfo("stall"); info.Subscribers != 0 {
		t.Fatalf("a stalled subscriber is still subscribed: %+v", info)
	}
	// Reading again within the grace period: whole frames, then the reason.
	for i := 0; ; i++ {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, data, err := c.ReadMessage()
		if err != nil {
			ce, ok := err.(*websocket.CloseError)
			if !ok || ce.Code != server.CloseSlowConsumer || ce.Text != "stalled" {
				t.Fatalf("after %d frames: %v, want close 4008 stalled", i, err)
			}
			break
		}
		if env, err := wire.DecodeEnvelope(data); err != nil || env.Channel != "stall" {
			t.Fatalf("frame %d corrupted: %q", i, trunc(data))
		}
	}

	// The same for SSE, read with a raw connection that stops reading.
	conn, err := net.Dial("tcp", e.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.(*net.TCPConn).SetReadBuffer(16 << 10)
	fmt.Fprintf(conn, "GET /sub/stall HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
	e.waitSubs("stall", 1)
	e.waitStat("stalled_disconnects", 2, publish)
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	rest, _ := io.ReadAll(conn)
	if !bytes.Contains(rest, []byte("event: pushctl-error\ndata: {\"type\":\"error\",\"code\":\"stalled\"")) {
		t.Fatalf("SSE stream ended without the stalled reason: ...%q", rest[max(0, len(rest)-300):])
	}
	if !bytes.HasSuffix(rest, []byte("\r\n0\r\n\r\n")) {
		t.Fatalf("SSE stream not ended cleanly: ...%q", rest[max(0, len(rest)-40):])
	}
	_, body := e.do("GET", "/metrics", nil)
	for _, want := range []string{
		`pushctl_disconnects_total{reason="stalled",transport="websocket"} 1`,
		`pushctl_disconnects_total{reason="stalled",transport="sse"} 1`,
		"pushctl_stalled_disconnects_total 2",
		"process_resident_memory_bytes ", "go_goroutines ", "process_open_fds ",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

func (e *env) channelInfo(ch string) broker.ChannelInfo {
	e.t.Helper()
	_, body := e.do("GET", "/channels/"+ch, nil)
	var info broker.ChannelInfo
	if err := json.Unmarshal(body, &info); err != nil {
		e.t.Fatalf("channel info %s: %v", body, err)
	}
	return info
}

// TestBatchPublishClientThatReadsAfterSending: Python's http.client sends
// the whole NDJSON body before reading the reply; every line is published
// and acknowledged (issue: the broker stopped reading after ~4 MB and both
// sides waited forever).
func TestBatchPublishClientThatReadsAfterSending(t *testing.T) {
	py := "/usr/bin/python3"
	if _, err := os.Stat(py); err != nil {
		t.Skip("needs Debian's python3 (scripts/install-deps.sh installs it)")
	}
	e := newEnv(t, broker.MemoryOptions{Retention: broker.Retention{HistorySize: 100_000}}, server.Options{})
	const n = 90_000
	script := `
import http.client, socket, sys, json
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
body = b"".join(json.dumps({"data": "line %d %s" % (i, "p" * 40)}).encode() + b"\n" for i in range(1, n + 1))
c = http.client.HTTPConnection(host, port, timeout=20)
c.connect()
c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # acks are not read while sending
c.request("POST", "/pub?channel=py", body=body, headers={"Content-Type": "application/x-ndjson"})
r = c.getresponse()
acks = [json.loads(l) for l in r.read().splitlines()]
bad = [a for a in acks if "error" in a]
print(len(acks), len(bad), acks[-1]["line"], acks[-1].get("seq"))
`
	host, port, _ := net.SplitHostPort(e.srv.Listener.Addr().String())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, py, "-c", script, host, port, strconv.Itoa(n)).CombinedOutput()
	if err != nil {
		t.Fatalf("python client: %v\n%s", err, out)
	}
	if got, want := strings.TrimSpace(string(out)), fmt.Sprintf("%d 0 %d %d", n, n, n); got != want {
		t.Fatalf("python client saw %q, want %q (acks, errors, last line, last seq)", got, want)
	}
	if info := e.channelInfo("py"); info.LastSeq != n {
		t.Fatalf("channel has %d messages, want %d", info.LastSeq, n)
	}
}

// TestProtocolErrorsAreReadable covers the WebSocket and HTTP error texts,
// invalid UTF-8, resume positions from the future, frames without data,
// echo and the order of acks and echoes.
func TestProtocolErrorsAreReadable(t *testing.T) {
	e := newEnv(t, broker.MemoryOptions{}, server.Options{})
	// Channel names: the rune, not its bytes.
	resp, body := e.do("POST", "/pub/caf%C3%A9", strings.NewReader("x"))
	if resp.StatusCode != 400 || !strings.Contains(string(body), `'é'`) || strings.Contains(string(body), "Ã") {
		t.Errorf("café: %d %s", resp.StatusCode, body)
	}
	resp, body = e.do("POST", "/pub/news.*", strings.NewReader("x"))
	if resp.StatusCode != 400 || !strings.Contains(string(body), "patterns cannot be published to") {
		t.Errorf("publish to a pattern: %d %s", resp.StatusCode, body)
	}
	// A resume position beyond the newest message is refused, not ignored.
	a := e.publish("fut", "1")
	pos, _ := broker.ParsePosition(a.ID)
	pos.Seq += 5
	resp, body = e.do("GET", "/sub/fut?format=ndjson", nil, "Last-Event-ID", pos.String())
	if resp.StatusCode != 400 || !strings.Contains(string(body), "invalid_position") || !strings.Contains(string(body), "beyond the newest") {
		t.Errorf("Last-Event-ID from the future: %d %s", resp.StatusCode, body)
	}

	c := dialWS(t, e, "/ws")
	for _, tc := range []struct{ frame, code, text string }{
		{`[]`, "invalid_json", "frame must be a JSON object"},
		{`{"type":"subscribe","channels":"a"}`, "invalid_frame", `field "channels" must be an array`},
		{`{"type":"nope"}`, "invalid_frame", "auth"},
		{`{"type":"publish","channel":"x"}`, "invalid_frame", `publish needs "data"`},
		{`{"type":"publish","channel":"x.>","data":"d"}`, "invalid_channel", "patterns cannot be published to"},
		{`{"type":`, "invalid_json", "invalid JSON"},
	} {
		c.WriteMessage(websocket.TextMessage, []byte(tc.frame))
		f := readFrame(t, c)
		msg, _ := f["message"].(string)
		if f["code"] != tc.code || !strings.Contains(msg, tc.text) || strings.Contains(msg, "Go value") {
			t.Errorf("%s: got %v, want %s mentioning %q", tc.frame, f, tc.code, tc.text)
		}
	}
	c.WriteMessage(websocket.TextMessage, []byte("{\"type\":\"ping\",\"ref\":\"\xff\"}"))
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, _, err := c.ReadMessage(); !websocket.IsCloseError(err, websocket.CloseInvalidFramePayloadData) {
		t.Errorf("invalid UTF-8 in a text frame: %v, want close 1007", err)
	}
}

// TestOwnPublishesAckFirstOrNotAtAll: a connection's own publish is
// acknowledged before it comes back as a message, and not at all with
// echo off.
func TestOwnPublishesAckFirstOrNotAtAll(t *testing.T) {
	e := newEnv(t, broker.MemoryOptions{}, server.Options{})
	c := dialWS(t, e, "/ws")
	wsSubscribe(t, c, map[string]any{"channels": []string{"echo"}})
	const n = 500
	for i := 0; i < n; i++ {
		c.WriteJSON(map[string]any{"type": "publish", "channel": "echo", "data": strconv.Itoa(i), "ref": strconv.Itoa(i)})
	}
	acked := map[string]bool{}
	for got := 0; got < 2*n; got++ {
		f := readFrame(t, c)
		switch f["type"] {
		case "ack":
			acked[f["ref"].(string)] = true
		case "message":
			if !acked[f["data"].(string)] {
				t.Fatalf("message %v arrived before its ack", f["data"])
			}
		default:
			t.Fatalf("got %v", f)
		}
	}

	quiet := dialWS(t, e, "/ws")
	wsSubscribe(t, quiet, map[string]any{"channels": []string{"echo"}, "echo": false})
	quiet.WriteJSON(map[string]any{"type": "publish", "channel": "echo", "data": "mine", "ref": "m"})
	if f := readFrame(t, quiet); f["type"] != "ack" {
		t.Fatalf("got %v, want the ack", f)
	}
	e.publish("echo", "theirs")
	if f := readFrame(t, quiet); f["data"] != "theirs" {
		t.Fatalf("with echo off got %v, want only the other publisher's message", f)
	}
}

// TestSSEPatternResumeWithLastEventID: a browser's EventSource resumes a
// pattern subscription with only Last-Event-ID; the id carries the time
// from which channels it has not seen are replayed.
func TestSSEPatternResumeWithLastEventID(t *testing.T) {
	e := newEnv(t, broker.MemoryOptions{}, server.Options{})
	resp, r := e.stream("/sub/room.*", "Accept", "text/event-stream")
	if _, s, err := broker.ParseResume(resp.Header.Get("Pushctl-Cursor"), []string{"room.*"}); err != nil || s.IsZero() {
		t.Fatalf("Pushctl-Cursor %q: %v", resp.Header.Get("Pushctl-Cursor"), err)
	}
	e.waitSubs("room.a", 1)
	e.publish("room.a", "a1")
	ev := readSSE(t, r)
	for ev["id"] == "" {
		ev = readSSE(t, r)
	}
	resp.Body.Close()
	e.publish("room.b", "b1") // a new channel while away
	e.publish("room.a", "a2")
	_, r2 := e.stream("/sub/room.*", "Accept", "text/event-stream", "Last-Event-ID", ev["id"])
	var got []string
	for len(got) < 2 {
		ev := readSSE(t, r2)
		if ev["data"] == "" {
			continue
		}
		var m struct{ Channel, Data string }
		json.Unmarshal([]byte(ev["data"]), &m)
		got = append(got, m.Channel+"="+m.Data)
	}
	if strings.Join(got, " ") != "room.b=b1 room.a=a2" {
		t.Fatalf("resumed with %v", got)
	}
}

// TestSSEStartPosition: an SSE stream says where it starts before any
// message (so a browser that loses it early still resumes), and in the
// plain mode pushctl.js uses it is a readable event and every message is
// the default event.
func TestSSEStartPosition(t *testing.T) {
	e := newEnv(t, broker.MemoryOptions{}, server.Options{})
	a := e.publish("st", "before")
	_, r := e.stream("/sub/st?format=sse")
	for {
		l := readLine(t, r)
		if strings.HasPrefix(l, "data:") {
			t.Fatalf("data before the start id: %q", l)
		}
		if strings.HasPrefix(l, "id: ") {
			if l != "id: "+a.ID {
				t.Fatalf("start id %q, want %s", l, a.ID)
			}
			break
		}
	}
	_, r = e.stream("/sub/st.*?format=sse&onmessage=1")
	ev := map[string]string{}
	for ev["event"] != "pushctl-start" {
		ev = map[string]string{}
		for l := readLine(t, r); l != ""; l = readLine(t, r) {
			k, v, _ := strings.Cut(l, ": ")
			ev[k] = v
		}
	}
	if _, s, err := broker.ParseResume(ev["data"], []string{"st.*"}); err != nil || s.IsZero() || ev["id"] != ev["data"] {
		t.Fatalf("pushctl-start %v: %v", ev, err)
	}
	e.waitSubs("st.x", 1)
	e.publish("st.x", "hi", "X-Pushctl-Event", "deploy")
	got := readSSE(t, r)
	if _, named := got["event"]; named || !strings.Contains(got["data"], `"event":"deploy"`) {
		t.Fatalf("plain mode event: %v", got)
	}
}

// TestBrowserAssets: pushctl.js, its module and declarations are served
// (gzipped when asked, revalidated by ETag); the console only when on, and
// with a policy that lets it load nothing from elsewhere.
func TestBrowserAssets(t *testing.T) {
	e := newEnv(t, broker.MemoryOptions{}, server.Options{})
	for _, p := range []string{"/pushctl.js", "/pushctl.mjs", "/pushctl.d.ts", "/", "/console.js", "/console.css"} {
		resp, body := e.do("GET", p, nil)
		if resp.StatusCode != 200 || len(body) == 0 {
			t.Fatalf("%s: %d", p, resp.StatusCode)
		}
		req, _ := http.NewRequest("GET", e.srv.URL+p, nil)
		req.Header.Set("Accept-Encoding", "gzip")
		req.Header.Set("If-None-Match", resp.Header.Get("ETag"))
		r2, err := http.DefaultTransport.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		r2.Body.Close()
		if r2.StatusCode != http.StatusNotModified {
			t.Errorf("%s with its ETag: %d, want 304", p, r2.StatusCode)
		}
	}
	resp, body := e.do("GET", "/pushctl.js", nil)
	if !strings.Contains(string(body), "global.pushctl = pushctl") || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/javascript") {
		t.Errorf("pushctl.js: %s", resp.Header.Get("Content-Type"))
	}
	if _, body := e.do("GET", "/pushctl.mjs", nil); !strings.Contains(string(body), "export default pushctl") {
		t.Error("pushctl.mjs is not a module")
	}
	resp, _ = e.do("GET", "/", nil)
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") {
		t.Errorf("console CSP %q", csp)
	}
	off := newEnv(t, broker.MemoryOptions{}, server.Options{NoConsole: true})
	if resp, _ := off.do("GET", "/", nil); resp.StatusCode != 404 {
		t.Errorf("console with NoConsole: %d", resp.StatusCode)
	}
	if resp, _ := off.do("GET", "/pushctl.js", nil); resp.StatusCode != 200 {
		t.Errorf("pushctl.js with NoConsole: %d", resp.StatusCode)
	}
}

// TestStreamsOverHTTP2: over TLS with HTTP/2 a stream cannot be hijacked;
// the same loop writes through the ResponseWriter, in order, with the
// start position, and long-poll works the same.
func TestStreamsOverHTTP2(t *testing.T) {
	b := broker.NewMemory(broker.MemoryOptions{})
	t.Cleanup(func() { b.Close() })
	srv := httptest.NewUnstartedServer(server.New(b, server.Options{}))
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	c := srv.Client()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/sub/h2?format=ndjson", nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.ProtoMajor != 2 || resp.Header.Get("Pushctl-Cursor") == "" {
		t.Fatalf("proto %s, cursor %q", resp.Proto, resp.Header.Get("Pushctl-Cursor"))
	}
	if err := b.WaitSubscribers(ctx, "h2", 1); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 100; i++ {
		b.Publish(ctx, &broker.Message{Channel: "h2", Data: []byte(strconv.Itoa(i))})
	}
	br := bufio.NewReader(resp.Body)
	for i := 1; i <= 100; i++ {
		line := readLine(t, br)
		env, err := wire.DecodeEnvelope([]byte(line))
		if err != nil {
			t.Fatalf("line %d: %q", i, line)
		}
		if got, _ := env.Bytes(); string(got) != strconv.Itoa(i) {
			t.Fatalf("message %d is %q", i, got)
		}
	}
	preq, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/sub/h2?poll=0s&since=all", nil)
	presp, err := c.Do(preq)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(presp.Body)
	presp.Body.Close()
	if !strings.Contains(string(body), `"data":"100"`) || !strings.Contains(string(body), `"cursor":"h2=`) {
		t.Fatalf("long-poll over HTTP/2: %s", body)
	}
}

// TestBusyConnectionIsStillPinged: a subscriber kept busy without a pause
// still gets the broker's pings (liveness does not wait for idleness).
func TestBusyConnectionIsStillPinged(t *testing.T) {
	e := newEnv(t, broker.MemoryOptions{Retention: broker.Retention{HistorySize: -1}}, server.Options{PingInterval: 50 * time.Millisecond})
	c := dialWS(t, e, "/sub/busy")
	var pings atomic.Int64
	c.SetPingHandler(func(string) error { pings.Add(1); return nil })
	e.waitSubs("busy", 1)
	// The publisher stays 4,000 messages (16 MiB, more than the socket
	// buffers hold) ahead of the reader: the connection's queue is never
	// empty, and never overflows.
	read := make(chan struct{}, 1024)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		data := bytes.Repeat([]byte("b"), 4<<10)
		ahead := 0
		for {
			for ahead < 4000 {
				e.b.Publish(context.Background(), &broker.Message{Channel: "busy", Data: data})
				ahead++
			}
			select {
			case <-stop:
				return
			case <-read:
				ahead--
			}
		}
	}()
	// Read (keeping the queue full) until five pings came: a busy
	// connection is pinged between its data. The deadline is generous: on
	// a loaded machine a second of wall time held 2-3 ping intervals' worth
	// of CPU, and the test is about pings arriving, not their pace.
	deadline := time.Now().Add(30 * time.Second)
	for pings.Load() < 5 {
		if time.Now().After(deadline) {
			t.Fatalf("%d pings in 30s of a busy connection with a 50ms interval", pings.Load())
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, _, err := c.ReadMessage(); err != nil {
			t.Fatal(err)
		}
		read <- struct{}{}
	}
}

// TestStalledSubscribersDoNotHoldUpOthers: subscribers that stop reading
// leave their writes waiting for room (up to the write timeout); the
// other subscribers are written to meanwhile. (Sessions share a few
// writer goroutines, GOMAXPROCS of them; a write that must wait gives its
// place up first. Here more subscribers than that stall at once.)
func TestStalledSubscribersDoNotHoldUpOthers(t *testing.T) {
	e := newEnv(t, broker.MemoryOptions{}, server.Options{WriteTimeout: time.Minute})
	fast, _, err := websocket.DefaultDialer.Dial(wsURL(e, "/sub/fast"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer fast.Close()
	stalled := 2*runtime.GOMAXPROCS(0) + 2
	for range stalled {
		c, _, err := smallBufferDialer.Dial(wsURL(e, "/sub/stall"), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	e.waitSubs("fast", 1)
	e.waitSubs("stall", stalled)
	// More than the stalled sockets take: each writer of theirs waits.
	chunk := strings.Repeat("s", 1<<20-64)
	for range 4 {
		e.publish("stall", chunk)
	}
	e.publish("fast", "through")
	fast.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, data, err := fast.ReadMessage()
	if err != nil {
		t.Fatalf("a reading subscriber waited on stalled ones: %v", err)
	}
	if env, err := wire.DecodeEnvelope(data); err != nil || string(env.Data) != `"through"` {
		t.Fatalf("got %q", trunc(data))
	}
}
