package server_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/server"
)

type env struct {
	t   *testing.T
	b   *broker.Core
	srv *httptest.Server
	s   *server.Server
}

func newEnv(t *testing.T, bo broker.MemoryOptions, so server.Options) *env {
	t.Helper()
	b := broker.NewMemory(bo)
	s := server.New(b, so)
	srv := httptest.NewServer(s)
	t.Cleanup(func() {
		srv.CloseClientConnections()
		b.Close()
		srv.Close()
	})
	return &env{t: t, b: b, srv: srv, s: s}
}

func tctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return c
}

func (e *env) do(method, path string, body io.Reader, hdr ...string) (*http.Response, []byte) {
	e.t.Helper()
	req, err := http.NewRequestWithContext(tctx(e.t), method, e.srv.URL+path, body)
	if err != nil {
		e.t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

type ack struct {
	ID          string `json:"id"`
	Channel     string `json:"channel"`
	Seq         uint64 `json:"seq"`
	Subscribers int    `json:"subscribers"`
	Line        int    `json:"line"`
	Error       *struct {
		Code string `json:"code"`
	} `json:"error"`
}

func (e *env) publish(ch, data string, hdr ...string) ack {
	e.t.Helper()
	resp, body := e.do("POST", "/pub/"+ch, strings.NewReader(data), hdr...)
	if resp.StatusCode != 200 {
		e.t.Fatalf("publish %s: %d %s", ch, resp.StatusCode, body)
	}
	var a ack
	if err := json.Unmarshal(body, &a); err != nil {
		e.t.Fatalf("ack %s: %v", body, err)
	}
	return a
}

// waitSubs blocks until channel has n subscribers (an event, not a sleep).
func (e *env) waitSubs(ch string, n int) {
	e.t.Helper()
	if err := e.b.WaitSubscribers(tctx(e.t), ch, n); err != nil {
		e.t.Fatalf("waiting for %d subscribers on %s: %v", n, ch, err)
	}
}

// stream opens a streaming GET and returns a line reader.
func (e *env) stream(path string, hdr ...string) (*http.Response, *bufio.Reader) {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	e.t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, "GET", e.srv.URL+path, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { resp.Body.Close() })
	return resp, bufio.NewReader(resp.Body)
}

func readLine(t *testing.T, r *bufio.Reader) string {
	t.Helper()
	type res struct {
		s   string
		err error
	}
	ch := make(chan res, 1)
	go func() { s, err := r.ReadString('\n'); ch <- res{s, err} }()
	select {
	case x := <-ch:
		if x.err != nil {
			t.Fatalf("read: %v (partial %q)", x.err, x.s)
		}
		return strings.TrimSuffix(x.s, "\n")
	case <-time.After(10 * time.Second):
		t.Fatal("timed out reading a line")
	}
	return ""
}

func TestPublishReply(t *testing.T) {
	e := newEnv(t, broker.MemoryOptions{}, server.Options{})
	a := e.publish("news", "hello")
	if a.Channel != "news" || a.Seq != 1 || a.Subscribers != 0 || !strings.HasSuffix(a.ID, "-1") {
		t.Fatalf("ack = %+v", a)
	}
	resp, body := e.do("PUT", "/pub/news?event=deploy", strings.NewReader("x"))
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"seq":2`) {
		t.Fatalf("PUT: %d %s", resp.StatusCode, body)
	}
	// The event name was stored with the message.
	_, body = e.do("GET", "/sub/news?poll=0s&since=all", nil)
	var pr struct {
		Events []struct {
			Seq         int
			Event, Data string
		}
	}
	if err := json.Unmarshal(body, &pr); err != nil || len(pr.Events) != 2 || pr.Events[1].Event != "deploy" || pr.Events[1].Data != "x" || pr.Events[0].Event != "message" {
		t.Fatalf("stored: %s", body)
	}
}

func TestErrors(t *testing.T) {
	e := newEnv(t, broker.MemoryOptions{}, server.Options{MaxMessageSize: 16})
	cases := []struct {
		method, path, body string
		hdr                []string
		status             int
		code               string
	}{
		{"POST", "/pub/bad%20name", "x", nil, 400, "invalid_channel"},
		{"POST", "/pub/a..b", "x", nil, 400, "invalid_channel"},
		{"POST", "/pub/news.*", "x", nil, 400, "invalid_channel"},
		{"POST", "/pub/" + strings.Repeat("a", 200), "x", nil, 400, "invalid_channel"},
		{"POST", "/pub/big", strings.Repeat("x", 17), nil, 413, "message_too_large"},
		{"POST", "/pub/j", "{not json", []string{"Content-Type", "application/json"}, 400, "invalid_json"},
		{"POST", "/pub/e?event=a%0Ab", "x", nil, 400, "invalid_parameter"},
		{"GET", "/pub/news", "", nil, 405, "method_not_allowed"},
		{"DELETE", "/sub/news", "", nil, 405, "method_not_allowed"},
		{"GET", "/nope", "", nil, 404, "not_found"},
		{"GET", "/channels/missing", "", nil, 404, "channel_not_found"},
		{"DELETE", "/channels/missing", "", nil, 404, "channel_not_found"},
		{"GET", "/sub/a,,b", "", nil, 400, "invalid_channel"},
		{"GET", "/sub/a.>.b", "", nil, 400, "invalid_channel"},
		{"GET", "/sub/news?since=garbage-x", "", nil, 400, "invalid_position"},
		{"GET", "/sub/news?since=yesterday", "", nil, 400, "invalid_position"},
		{"GET", "/sub/a,b?since=abc-1", "", nil, 400, "invalid_position"},
		{"GET", "/sub/news", "", []string{"Last-Event-ID", "not-an-id!"}, 400, "invalid_position"},
		{"GET", "/sub/news?last=-1", "", nil, 400, "invalid_parameter"},
		{"GET", "/sub/news?format=xml", "", nil, 400, "invalid_parameter"},
		{"GET", "/sub/news?poll=forever", "", nil, 400, "invalid_parameter"},
		{"GET", "/channels/news?wait_subscribers=x", "", nil, 400, "invalid_parameter"},
		{"GET", "/channels/news?wait_subscribers=1&timeout=1ms", "", nil, 408, "wait_timeout"},
		{"GET", "/ws", "", nil, 400, "invalid_parameter"},
	}
	for _, c := range cases {
		resp, body := e.do(c.method, c.path, strings.NewReader(c.body), c.hdr...)
		var eb struct {
			Error struct {
				Code    string `json:"code"`
				Message string `json:"message"`
			} `json:"error"`
		}
		json.Unmarshal(body, &eb)
		if resp.StatusCode != c.status || eb.Error.Code != c.code || eb.Error.Message == "" {
			t.Errorf("%s %s: %d %s; want %d %s", c.method, c.path, resp.StatusCode, body, c.status, c.code)
		}
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("%s %s: content type %q", c.method, c.path, ct)
		}
	}
	// Nothing bad was stored.
	if st := e.b.Stats(); st.Published != 0 {
		t.Fatalf("published %d after only bad requests", st.Published)
	}
}

func TestRawStream(t *testing.T) {
	e := newEnv(t, broker.MemoryOptions{}, server.Options{})
	resp, r := e.stream("/sub/news")
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Fatalf("content type %q", ct)
	}
	e.waitSubs("news", 1)
	e.publish("news", "hello")
	e.publish("news", "world")
	if l := readLine(t, r); l != "hello" {
		t.Fatalf("got %q", l)
	}
	if l := readLine(t, r); l != "world" {
		t.Fatalf("got %q", l)
	}
	// Several channels: each line names its channel.
	_, r2 := e.stream("/sub/a,b")
	e.waitSubs("b", 1)
	e.publish("b", "x")
	if l := readLine(t, r2); l != "b\tx" {
		t.Fatalf("tagged line %q", l)
	}
}

func TestNDJSONStreamAndEnvelope(t *testing.T) {
	e := newEnv(t, broker.MemoryOptions{}, server.Options{})
	_, r := e.stream("/sub/n.>", "Accept", "application/x-ndjson")
	e.waitSubs("n.x", 1)
	e.publish("n.x", `{"a":[1, 2]}`)
	e.publish("n.x", "plain text")
	e.publish("n.x", "\xff\x00bin")
	e.publish("n.x", "42", "Content-Type", "application/json")
	var got []map[string]any
	for i := 0; i < 4; i++ {
		var m map[string]any
		if err := json.Unmarshal([]byte(readLine(t, r)), &m); err != nil {
			t.Fatal(err)
		}
		got = append(got, m)
	}
	if got[0]["channel"] != "n.x" || got[0]["type"] != "message" || got[0]["event"] != "message" {
		t.Fatalf("envelope %v", got[0])
	}
	for _, k := range []string{"channel", "id", "seq", "event", "data", "time"} {
		if _, ok := got[0][k]; !ok {
			t.Fatalf("envelope lacks %s: %v", k, got[0])
		}
	}
	if d, ok := got[0]["data"].(map[string]any); !ok || fmt.Sprint(d["a"]) != "[1 2]" {
		t.Fatalf("JSON data not kept as JSON: %v", got[0]["data"])
	}
	if got[1]["data"] != "plain text" {
		t.Fatalf("text data %v", got[1]["data"])
	}
	if got[2]["data"] != "/wBiaW4=" || got[2]["encoding"] != "base64" {
		t.Fatalf("binary data %v %v", got[2]["data"], got[2]["encoding"])
	}
	if got[3]["data"] != float64(42) {
		t.Fatalf("declared JSON scalar %v", got[3]["data"])
	}
}

func TestSSEResumeAndGap(t *testing.T) {
	e := newEnv(t, broker.MemoryOptions{Retention: broker.Retention{HistorySize: 3}}, server.Options{Keepalive: 20 * time.Millisecond})
	resp, r := e.stream("/sub/s", "Accept", "text/event-stream")
	if resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("content type %q", resp.Header.Get("Content-Type"))
	}
	e.waitSubs("s", 1)
	a1 := e.publish("s", "line1\nline2", "X-Pushctl-Event", "deploy")
	ev := readSSE(t, r)
	if ev["id"] != a1.ID || ev["event"] != "deploy" {
		t.Fatalf("event %v", ev)
	}
	var env map[string]any
	json.Unmarshal([]byte(ev["data"]), &env)
	if env["data"] != "line1\nline2" || env["channel"] != "s" {
		t.Fatalf("data %q", ev["data"])
	}
	// Keepalive comments arrive while idle.
	for {
		l := readLine(t, r)
		if l == ": keepalive" {
			break
		}
	}
	// Resume with Last-Event-ID: only what came after.
	e.publish("s", "2")
	e.publish("s", "3")
	_, r2 := e.stream("/sub/s", "Accept", "text/event-stream", "Last-Event-ID", a1.ID)
	for _, want := range []string{"2", "3"} {
		ev := readSSE(t, r2)
		var env map[string]any
		json.Unmarshal([]byte(ev["data"]), &env)
		if env["data"] != want {
			t.Fatalf("resumed %v, want %s", ev, want)
		}
	}
	// Once history no longer holds the position, a gap event says so.
	e.publish("s", "4")
	e.publish("s", "5")
	_, r3 := e.stream("/sub/s?format=sse&data=raw", "Last-Event-ID", a1.ID)
	ev = readSSE(t, r3)
	if ev["event"] != "pushctl-gap" || !strings.Contains(ev["data"], `"type":"gap"`) {
		t.Fatalf("want gap, got %v", ev)
	}
	ev = readSSE(t, r3)
	if ev["data"] != "3" {
		t.Fatalf("after gap got %v, want raw data 3", ev)
	}
}

// readSSE reads one event (skipping comments, retry lines and the
// pushctl-start event that opens a stream).
func readSSE(t *testing.T, r *bufio.Reader) map[string]string {
	t.Helper()
	ev := map[string]string{}
	for {
		l := readLine(t, r)
		if l == "" {
			if len(ev) > 0 && ev["data"] != "" && ev["event"] != "pushctl-start" {
				return ev
			}
			ev = map[string]string{}
			continue
		}
		if strings.HasPrefix(l, ":") || strings.HasPrefix(l, "retry:") {
			continue
		}
		k, v, _ := strings.Cut(l, ": ")
		if k == "data" && ev["data"] != "" {
			v = ev["data"] + "\n" + v
		}
		ev[k] = v
	}
}

func TestSSEMultiChannelCursor(t *testing.T) {
	e := newEnv(t, broker.MemoryOptions{}, server.Options{})
	_, r := e.stream("/sub/a,b", "Accept", "text/event-stream")
	e.waitSubs("b", 1)
	e.publish("a", "1")
	e.publish("b", "2")
	readSSE(t, r)
	ev := readSSE(t, r)
	if !strings.Contains(ev["id"], "a=") || !strings.Contains(ev["id"], "b=") {
		t.Fatalf("cursor id %q should name both channels", ev["id"])
	}
	e.publish("a", "3")
	_, r2 := e.stream("/sub/a,b?format=sse&data=raw", "Last-Event-ID", ev["id"])
	if ev := readSSE(t, r2); ev["data"] != "3" {
		t.Fatalf("resumed with %v", ev)
	}
}

func TestLongPoll(t *testing.T) {
	e := newEnv(t, broker.MemoryOptions{}, server.Options{})
	type pollReply struct {
		Events []map[string]any `json:"events"`
		Cursor string           `json:"cursor"`
	}
	poll := func(q string) pollReply {
		resp, body := e.do("GET", "/sub/lp?poll=10s"+q, nil)
		if resp.StatusCode != 200 {
			t.Fatalf("poll: %d %s", resp.StatusCode, body)
		}
		var pr pollReply
		if err := json.Unmarshal(body, &pr); err != nil {
			t.Fatal(err)
		}
		return pr
	}
	// Empty poll times out with a cursor that still resumes.
	resp, body := e.do("GET", "/sub/lp?poll=1ms", nil)
	var empty pollReply
	json.Unmarshal(body, &empty)
	if resp.StatusCode != 200 || len(empty.Events) != 0 || empty.Cursor == "" {
		t.Fatalf("empty poll %d %s", resp.StatusCode, body)
	}
	e.publish("lp", "1")
	e.publish("lp", "2")
	pr := poll("&since=" + url.QueryEscape(empty.Cursor))
	if len(pr.Events) != 2 || pr.Events[0]["data"] != "1" {
		t.Fatalf("poll got %v", pr.Events)
	}
	// A waiting poll returns when a message arrives.
	type result struct {
		body []byte
		err  error
	}
	done := make(chan result, 1)
	go func() { // no t.Fatal off the test's goroutine
		resp, err := http.Get(e.srv.URL + "/sub/lp?poll=10s&since=" + url.QueryEscape(pr.Cursor))
		if err != nil {
			done <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		done <- result{b, err}
	}()
	e.waitSubs("lp", 1)
	e.publish("lp", "3")
	var r result
	select {
	case r = <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("the waiting poll did not return")
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
	pr = pollReply{}
	if err := json.Unmarshal(r.body, &pr); err != nil {
		t.Fatalf("poll reply %s: %v", r.body, err)
	}
	if len(pr.Events) != 1 || pr.Events[0]["data"] != "3" {
		t.Fatalf("waiting poll got %v", pr.Events)
	}
}

func TestBatchAndLinesPublish(t *testing.T) {
	e := newEnv(t, broker.MemoryOptions{}, server.Options{MaxMessageSize: 32})
	body := strings.Join([]string{
		`{"channel":"a","data":"one"}`,
		`not json`,
		`{"channel":"bad name","data":"x"}`,
		`{"data":{"k":1},"event":"e"}`,
		`{"channel":"a","data":"` + strings.Repeat("x", 40) + `"}`,
		`{"channel":"a","data":"/w==","encoding":"base64"}`,
		strings.Repeat("y", 200),
		`{"channel":"a","data":"last"}`,
	}, "\n")
	resp, out := e.do("POST", "/pub?channel=dflt", strings.NewReader(body))
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, out)
	}
	var acks []ack
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var a ack
		json.Unmarshal([]byte(l), &a)
		acks = append(acks, a)
	}
	if len(acks) != 8 {
		t.Fatalf("want 8 acks, got %d: %s", len(acks), out)
	}
	wantErr := map[int]string{2: "invalid_json", 3: "invalid_channel", 5: "message_too_large", 7: "message_too_large"}
	for i, a := range acks {
		if code, bad := wantErr[i+1]; bad {
			if a.Error == nil || a.Error.Code != code || a.Line != i+1 {
				t.Errorf("line %d: %+v, want error %s", i+1, a, code)
			}
		} else if a.Error != nil || a.ID == "" || a.Line != i+1 {
			t.Errorf("line %d: %+v, want ack", i+1, a)
		}
	}
	if acks[3].Channel != "dflt" {
		t.Errorf("default channel not used: %+v", acks[3])
	}
	info, _ := e.b.Channel(tctx(t), "a")
	if info.Messages != 3 {
		t.Fatalf("channel a holds %d messages, want 3", info.Messages)
	}
	// ?lines=1: one message per line.
	resp, out = e.do("POST", "/pub/l?lines=1", strings.NewReader("x\r\ny\n\nz"))
	if resp.StatusCode != 200 || strings.Count(string(out), `"id"`) != 3 {
		t.Fatalf("lines: %d %s", resp.StatusCode, out)
	}
}

func TestChannelsEndpoints(t *testing.T) {
	e := newEnv(t, broker.MemoryOptions{}, server.Options{})
	e.publish("x.a", "1")
	e.publish("y", "1")
	_, body := e.do("GET", "/channels?match=x.*", nil)
	if !strings.Contains(string(body), `"x.a"`) || strings.Contains(string(body), `"y"`) {
		t.Fatalf("channels %s", body)
	}
	_, r := e.stream("/sub/y?format=ndjson")
	e.waitSubs("y", 1)
	resp, body := e.do("GET", "/channels/y?wait_subscribers=1&timeout=5s", nil)
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"subscribers":1`) {
		t.Fatalf("info %d %s", resp.StatusCode, body)
	}
	resp, _ = e.do("DELETE", "/channels/y", nil)
	if resp.StatusCode != 200 {
		t.Fatalf("delete %d", resp.StatusCode)
	}
	if l := readLine(t, r); !strings.Contains(l, `"code":"channel_deleted"`) {
		t.Fatalf("subscriber told %q", l)
	}
	resp, body = e.do("GET", "/healthz", nil)
	if resp.StatusCode != 200 || !strings.Contains(string(body), "ok") {
		t.Fatalf("healthz %d %s", resp.StatusCode, body)
	}
	_, body = e.do("GET", "/stats", nil)
	if !strings.Contains(string(body), `"published":2`) {
		t.Fatalf("stats %s", body)
	}
}

func wsURL(e *env, path string) string { return "ws" + strings.TrimPrefix(e.srv.URL, "http") + path }

func dialWS(t *testing.T, e *env, path string) *websocket.Conn {
	t.Helper()
	c, resp, err := websocket.DefaultDialer.DialContext(tctx(t), wsURL(e, path), nil)
	if err != nil {
		t.Fatalf("dial %s: %v (%v)", path, err, resp)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func readFrame(t *testing.T, c *websocket.Conn) map[string]any {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, data, err := c.ReadMessage()
	if err != nil {
		t.Fatalf("read frame: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatalf("frame %s: %v", data, err)
	}
	return m
}

func TestWebSocketProtocol(t *testing.T) {
	e := newEnv(t, broker.MemoryOptions{}, server.Options{})
	c := dialWS(t, e, "/ws")
	send := func(v string) {
		if err := c.WriteMessage(websocket.TextMessage, []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	send(`{"type":"subscribe","ref":"s1","channels":["room","dm.*"]}`)
	if f := readFrame(t, c); f["type"] != "subscribed" || f["ref"] != "s1" {
		t.Fatalf("got %v", f)
	}
	send(`{"type":"publish","ref":"p1","channel":"room","event":"digit","data":"5"}`)
	// The ack and the message may come in either order.
	seen := map[string]map[string]any{}
	for len(seen) < 2 {
		f := readFrame(t, c)
		seen[f["type"].(string)] = f
	}
	if a := seen["ack"]; a["ref"] != "p1" || a["subscribers"] != float64(1) || a["channel"] != "room" {
		t.Fatalf("ack %v", a)
	}
	if m := seen["message"]; m["data"] != "5" || m["event"] != "digit" || m["channel"] != "room" {
		t.Fatalf("message %v", m)
	}
	e.publish("dm.bob", `{"hi":true}`)
	if m := readFrame(t, c); m["channel"] != "dm.bob" || fmt.Sprint(m["data"]) != "map[hi:true]" {
		t.Fatalf("pattern message %v", m)
	}
	// Errors keep the connection open and carry stable codes.
	for _, bad := range []struct{ frame, code string }{
		{`{"type":"publish","ref":"x","channel":"bad name","data":"1"}`, "invalid_channel"},
		{`{"type":"subscribe","ref":"x","channels":["a..b"]}`, "invalid_channel"},
		{`{"type":"subscribe","ref":"x","channel":"q","since":"nonsense"}`, "invalid_position"},
		{`{"type":"dance","ref":"x"}`, "invalid_frame"},
		{`{"type":"publish","ref":"x","channel":"a","data":"@@","encoding":"base64"}`, "invalid_parameter"},
		{`[1,2`, "invalid_json"},
	} {
		send(bad.frame)
		if f := readFrame(t, c); f["type"] != "error" || f["code"] != bad.code {
			t.Fatalf("%s: got %v, want %s", bad.frame, f, bad.code)
		}
	}
	if err := c.WriteMessage(websocket.BinaryMessage, []byte{0, 1}); err != nil {
		t.Fatal(err)
	}
	if f := readFrame(t, c); f["code"] != "invalid_frame" {
		t.Fatalf("binary frame: %v", f)
	}
	send(`{"type":"unsubscribe","ref":"u","channels":["room"]}`)
	if f := readFrame(t, c); f["type"] != "unsubscribed" {
		t.Fatalf("got %v", f)
	}
	send(`{"type":"publish","ref":"p2","channel":"room","data":"after"}`)
	if f := readFrame(t, c); f["type"] != "ack" || f["subscribers"] != float64(0) {
		t.Fatalf("after unsubscribe: %v", f)
	}
	send(`{"type":"ping","ref":"z"}`)
	if f := readFrame(t, c); f["type"] != "pong" {
		t.Fatalf("got %v", f)
	}
}

func TestWebSocketSubscribePathResume(t *testing.T) {
	e := newEnv(t, broker.MemoryOptions{}, server.Options{})
	a1 := e.publish("w", "1")
	e.publish("w", "2")
	c := dialWS(t, e, "/sub/w?since="+a1.ID)
	if f := readFrame(t, c); f["data"] != "2" {
		t.Fatalf("resumed %v", f)
	}
	raw := dialWS(t, e, "/sub/w?last=1&data=raw")
	raw.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, d, err := raw.ReadMessage(); err != nil || string(d) != "2" {
		t.Fatalf("raw frame %q %v", d, err)
	}
}

func TestWebSocketSlowConsumerIsDisconnected(t *testing.T) {
	e := newEnv(t, broker.MemoryOptions{}, server.Options{QueueSize: 8, MaxMessageSize: 1 << 20})
	slow := dialWS(t, e, "/sub/flood")
	fast := dialWS(t, e, "/sub/flood")
	e.waitSubs("flood", 2)
	// The fast client acknowledges each message it read; the publisher
	// stays a few messages ahead of it, so only the client that reads
	// nothing can overflow its queue.
	read := make(chan struct{}, 300)
	go func() {
		for {
			fast.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, _, err := fast.ReadMessage(); err != nil {
				close(read)
				return
			}
			read <- struct{}{}
		}
	}()
	payload := strings.Repeat("x", 256<<10)
	for i := 0; i < 300; i++ {
		if i >= 4 {
			if _, ok := <-read; !ok {
				t.Fatalf("fast client lost its connection after %d messages", i-4)
			}
		}
		if _, _, err := e.b.Publish(tctx(t), &broker.Message{Channel: "flood", Data: []byte(payload)}); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 4; i++ {
		if _, ok := <-read; !ok {
			t.Fatal("fast client lost its connection")
		}
	}
	if st := e.b.Stats(); st.SlowConsumers != 1 {
		t.Fatalf("slow consumer disconnects = %d, want 1", st.SlowConsumers)
	}
	for {
		slow.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, _, err := slow.ReadMessage()
		if err == nil {
			continue
		}
		if ce, ok := err.(*websocket.CloseError); !ok || ce.Code != server.CloseSlowConsumer || ce.Text != "slow_consumer" {
			t.Fatalf("slow client ended with %v, want close %d", err, server.CloseSlowConsumer)
		}
		break
	}
}

func mustPrefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}
