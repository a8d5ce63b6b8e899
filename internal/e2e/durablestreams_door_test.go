package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pushctl/pushctl/internal/auth"
	"github.com/pushctl/pushctl/internal/redistest"
)

// What pushctl adds to the Durable Streams protocol: a stream is a
// channel (what one side writes the other reads), its requests pass the
// door, and on --data-dir an acknowledged append survives kill -9.

// dsDo sends one request and returns the status, headers and body.
func dsDo(t *testing.T, method, url, token, ctype, body string, hdr ...string) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

// dsCode is the stable code of an error reply ("" for none).
func dsCode(body string) string {
	var e struct {
		Error struct{ Code string } `json:"error"`
	}
	json.Unmarshal([]byte(body), &e)
	return e.Error.Code
}

// TestDurableStreamIsAChannel: what POST /pub publishes to ds.news.today
// a Durable Streams reader of /v1/stream/news/today reads, in order, and
// what a Durable Streams writer appends a /sub subscriber gets.
func TestDurableStreamIsAChannel(t *testing.T) {
	_, u := serve(t)
	stream := u + "/v1/stream/news/today"
	if st, _, b := dsDo(t, "PUT", stream, "", "text/plain", "one "); st != 201 {
		t.Fatalf("PUT: %d %s", st, b)
	}
	if st, _, b := dsDo(t, "POST", u+"/pub/ds.news.today", "", "text/plain", "two "); st != 200 {
		t.Fatalf("POST /pub: %d %s", st, b)
	}
	if st, _, b := dsDo(t, "POST", stream, "", "text/plain", "three"); st != 204 {
		t.Fatalf("append: %d %s", st, b)
	}
	st, h, b := dsDo(t, "GET", stream+"?offset=-1", "", "", "")
	if st != 200 || b != "one two three" || h.Get("Stream-Up-To-Date") != "true" {
		t.Fatalf("stream read: %d %q %v", st, b, h)
	}
	st, _, b = dsDo(t, "GET", u+"/sub/ds.news.today?last=100&poll=0s", "", "", "")
	var poll struct{ Events []struct{ Data string } }
	if err := json.Unmarshal([]byte(b), &poll); st != 200 || err != nil {
		t.Fatalf("/sub: %d %s", st, b)
	}
	var got []string
	for _, e := range poll.Events {
		got = append(got, e.Data)
	}
	if strings.Join(got, "|") != "one |two |three" {
		t.Fatalf("/sub read %q, want the stream's three appends", got)
	}
	// A stream keeps every message, past the broker's history (1000 here).
	var vals []string
	for i := range 1500 {
		vals = append(vals, strconv.Itoa(i))
	}
	all := "[" + strings.Join(vals, ",") + "]"
	dsDo(t, "PUT", u+"/v1/stream/long", "", "application/json", "")
	if st, _, b := dsDo(t, "POST", u+"/v1/stream/long", "", "application/json", all); st != 204 {
		t.Fatalf("append 1500: %d %s", st, b)
	}
	if st, _, b := dsDo(t, "GET", u+"/v1/stream/long?offset=-1", "", "", ""); st != 200 || b != all {
		t.Fatalf("read of 1500 messages: %d, %d bytes, want %d", st, len(b), len(all))
	}
	// A long-poll at the tail is woken by a /pub publish.
	done := make(chan string, 1)
	go func() {
		_, _, b := dsDo(t, "GET", stream+"?live=long-poll&offset="+h.Get("Stream-Next-Offset"), "", "", "")
		done <- b
	}()
	dsWaitSubscribers(t, u, "ds.news.today", 1)
	dsDo(t, "POST", u+"/pub/ds.news.today", "", "text/plain", "four")
	select {
	case b := <-done:
		if b != "four" {
			t.Fatalf("long-poll got %q, want four", b)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the long-poll did not see the /pub publish")
	}
}

// waitSubscribers waits until channel has n subscribers.
func dsWaitSubscribers(t *testing.T, u, channel string, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, _, b := dsDo(t, "GET", u+"/channels/"+channel, "", "", "")
		var info struct{ Subscribers int }
		json.Unmarshal([]byte(b), &info)
		if info.Subscribers >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never had %d subscribers: %s", channel, n, b)
		}
		time.Sleep(10 * time.Millisecond) // polling a state with a deadline
	}
}

const dsSecret = "ds-door-secret-0123456789-0123456789-abc"

func dsToken(t *testing.T, pub, sub string) string {
	t.Helper()
	g := auth.Grants{}
	if pub != "" {
		g.Publish = []string{pub}
	}
	if sub != "" {
		g.Subscribe = []string{sub}
	}
	tok, err := auth.Issue(g, time.Hour, "", "ds-"+pub+sub, []byte(dsSecret), nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestDurableStreamsPassTheDoor: tokens, grants, the size limit, the
// publish rate and the subscribe hook apply to Durable Streams requests
// with the codes every other way in gives.
func TestDurableStreamsPassTheDoor(t *testing.T) {
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req struct{ Channel string }
		json.NewDecoder(r.Body).Decode(&req)
		w.Header().Set("Content-Type", "application/json")
		if strings.Contains(req.Channel, "secret") {
			w.WriteHeader(403)
			w.Write([]byte(`{"error":{"code":"no","message":"not this one"}}`))
			return
		}
		w.Write([]byte(`{}`))
	}))
	t.Cleanup(hook.Close)
	_, u := serve(t, "--token-secret", dsSecret, "--publish-rate", "0.01", "--publish-burst", "1",
		"--max-message-size", "1000", "--hook-subscribe", hook.URL)
	writer := dsToken(t, "ds.door.>", "ds.door.>")
	reader := dsToken(t, "", "ds.door.>")
	other := dsToken(t, "ds.other.>", "ds.other.>")
	if st, _, b := dsDo(t, "PUT", u+"/v1/stream/door/secret", writer, "text/plain", ""); st != 201 {
		t.Fatalf("PUT: %d %s", st, b)
	}
	s := u + "/v1/stream/door/a"
	for _, c := range []struct {
		name, method, url, token, body, want string
	}{
		{"create without a token", "PUT", s, "", "", "token_missing"},
		{"create outside the grant", "PUT", s, other, "", "forbidden"},
		{"create with a read-only token", "PUT", s, reader, "", "forbidden"},
		{"create", "PUT", s, writer, "", "ok"},
		{"append too large", "POST", s, writer, strings.Repeat("x", 2000), "message_too_large"},
		{"append", "POST", s, writer, "x", "ok"},
		{"append over the rate", "POST", s, writer, "y", "rate_limited"},
		{"read without a token", "GET", s, "", "", "token_missing"},
		{"read outside the grant", "GET", s, other, "", "forbidden"},
		{"head outside the grant", "HEAD", s, other, "", ""},
		{"read", "GET", s, reader, "", "ok"},
		{"delete with a read-only token", "DELETE", s, reader, "", "forbidden"},
		{"read what the hook refuses", "GET", u + "/v1/stream/door/secret", reader, "", "hook_denied"},
	} {
		st, _, b := dsDo(t, c.method, c.url, c.token, "text/plain", c.body)
		got := dsCode(b)
		if st < 300 {
			got = "ok"
		}
		if c.method == "HEAD" {
			if st != 403 {
				t.Errorf("%s: %d, want 403", c.name, st)
			}
			continue
		}
		if got != c.want {
			t.Errorf("%s: %d %s, want %s", c.name, st, b, c.want)
		}
	}
}

// TestDurableStreamSurvivesKill9: on --data-dir, appends acknowledged
// before a kill -9, the stream's content type and its closure are there
// after a restart on the same directory, at the same offsets.
func TestDurableStreamSurvivesKill9(t *testing.T) {
	dir := t.TempDir()
	p, u := serve(t, "--data-dir", dir)
	s := u + "/v1/stream/jobs/42"
	if st, _, b := dsDo(t, "PUT", s, "", "application/json", `[{"n":1}]`); st != 201 {
		t.Fatalf("PUT: %d %s", st, b)
	}
	var next string
	for i := 2; i <= 50; i++ {
		st, h, b := dsDo(t, "POST", s, "", "application/json", `{"n":`+strconv.Itoa(i)+`}`, "Producer-Id", "p", "Producer-Epoch", "0", "Producer-Seq", strconv.Itoa(i-2))
		if st != 200 {
			t.Fatalf("append %d: %d %s", i, st, b)
		}
		next = h.Get("Stream-Next-Offset")
	}
	if st, _, b := dsDo(t, "POST", s, "", "", "", "Stream-Closed", "true", "Producer-Id", "p", "Producer-Epoch", "0", "Producer-Seq", "49"); st != 204 {
		t.Fatalf("close: %d %s", st, b)
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	p.wait(10 * time.Second)
	_, u = serve(t, "--data-dir", dir)
	s = u + "/v1/stream/jobs/42"
	st, h, b := dsDo(t, "GET", s+"?offset=-1", "", "", "")
	var got []struct{ N int }
	if err := json.Unmarshal([]byte(b), &got); st != 200 || err != nil || len(got) != 50 || got[49].N != 50 {
		t.Fatalf("after kill -9: %d %s", st, b)
	}
	if h.Get("Content-Type") != "application/json" || h.Get("Stream-Closed") != "true" || h.Get("Stream-Next-Offset") != next {
		t.Fatalf("after kill -9: headers %v, want application/json, closed, next offset %s", h, next)
	}
	// The producer's state survived too: a retry of its closing request
	// is a duplicate; another append is refused as after a close.
	if st, h, _ := dsDo(t, "POST", s, "", "", "", "Stream-Closed", "true", "Producer-Id", "p", "Producer-Epoch", "0", "Producer-Seq", "49"); st != 204 || h.Get("Stream-Closed") != "true" {
		t.Fatalf("retried close after kill -9: %d %v, want 204 (duplicate)", st, h)
	}
	if st, _, b := dsDo(t, "POST", s, "", "application/json", `{"n":51}`); st != 409 || dsCode(b) != "stream_closed" {
		t.Fatalf("append after kill -9: %d %s, want 409 stream_closed", st, b)
	}
}

// TestDurableStreamsOfficialClient: the official TypeScript client writes
// a stream with its IdempotentProducer; pushctl pub publishes to the
// stream's channel; the client reads both back in order, and pushctl sub
// gets the client's appends and the publish as messages of the channel,
// and so does a WebSocket subscriber replaying the channel.
func TestDurableStreamsOfficialClient(t *testing.T) {
	node := needDurableStreamsSuite(t)
	_, u := serve(t)
	stream := u + "/v1/stream/interop/a"
	nodeRun := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(node, append([]string{"interop.mjs"}, args...)...)
		cmd.Dir = durableStreamsDir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("node interop.mjs %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	nodeRun("write", stream, "100")
	if _, errs, code := run(t, "", "pub", "--server", u, "ds.interop.a", "from pushctl pub"); code != 0 {
		t.Fatalf("pub: %s", errs)
	}
	var want strings.Builder
	for i := range 100 {
		fmt.Fprintf(&want, "c%d\n", i)
	}
	want.WriteString("from pushctl pub")
	if got := nodeRun("read", stream); got != want.String() {
		t.Fatalf("the client read %q, want %q", got, want.String())
	}
	// The producer batches its appends into POSTs: each is one message.
	out, errs, code := run(t, "", "sub", "--server", u, "ds.interop.a", "--since", "all", "--format", "json", "--timeout", "3s")
	if code != 124 && code != 0 {
		t.Fatalf("sub: %d %s", code, errs)
	}
	var data strings.Builder
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var env struct{ Data string }
		if err := json.Unmarshal([]byte(line), &env); err != nil {
			t.Fatalf("sub line %q: %v", line, err)
		}
		data.WriteString(env.Data)
	}
	if data.String() != want.String() {
		t.Fatalf("pushctl sub read %q, want %q", data.String(), want.String())
	}
	// And over WebSocket, replayed from the channel's start.
	ws := dialWS(t, u, "/ws", "")
	if got := wsReply(t, ws, map[string]any{"type": "subscribe", "ref": ref(), "channel": "ds.interop.a", "since": "all"}); got != "ok" {
		t.Fatalf("WebSocket subscribe: %s", got)
	}
	var viaWS strings.Builder
	ws.SetReadDeadline(time.Now().Add(20 * time.Second))
	for viaWS.Len() < want.Len() {
		var f struct {
			Type string `json:"type"`
			Data string `json:"data"`
		}
		if err := ws.ReadJSON(&f); err != nil {
			t.Fatalf("WebSocket after %q: %v", viaWS.String(), err)
		}
		if f.Type == "message" {
			viaWS.WriteString(f.Data)
		}
	}
	if viaWS.String() != want.String() {
		t.Fatalf("WebSocket read %q, want %q", viaWS.String(), want.String())
	}
}

// TestBridgeDurableStreams: pushctl bridge appends stdin's lines to a
// Durable Stream it creates (ds://…?content-type=), and reads a stream
// from its start to stdout, ending when the stream is closed.
func TestBridgeDurableStreams(t *testing.T) {
	_, u := serve(t)
	ds := "ds://" + strings.TrimPrefix(u, "http://") + "/v1/stream/bridged/a"
	if _, errs, code := run(t, "{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n", "bridge", "-", ds+"?content-type=application/json"); code != 0 {
		t.Fatalf("bridge - ds://: %d %s", code, errs)
	}
	st, h, b := dsDo(t, "GET", u+"/v1/stream/bridged/a?offset=-1", "", "", "")
	if st != 200 || b != `[{"n":1},{"n":2},{"n":3}]` || h.Get("Content-Type") != "application/json" {
		t.Fatalf("the stream holds %d %q (%s)", st, b, h.Get("Content-Type"))
	}
	if st, _, b := dsDo(t, "POST", u+"/v1/stream/bridged/a", "", "", "", "Stream-Closed", "true"); st != 204 {
		t.Fatalf("close: %d %s", st, b)
	}
	out, errs, code := run(t, "", "bridge", ds+"?offset=-1", "-")
	if code != 0 || out != "{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n" {
		t.Fatalf("bridge ds:// -: %d %q %s", code, out, errs)
	}
}

// TestDurableStreamsClientThroughCutsAndKill9: the official TypeScript
// client follows a JSON stream by long-poll through a proxy that cuts its
// connection every 30 appends, while the durable broker behind it is
// killed with SIGKILL and restarted once: it reads every value once, in
// order.
func TestDurableStreamsClientThroughCutsAndKill9(t *testing.T) {
	node := needDurableStreamsSuite(t)
	dir := t.TempDir()
	p, u := serve(t, "--data-dir", dir)
	addr := strings.TrimPrefix(u, "http://")
	px := newProxy(t, addr)
	const total = 300
	if st, _, b := dsDo(t, "PUT", u+"/v1/stream/chaos", "", "application/json", ""); st != 201 {
		t.Fatalf("PUT: %d %s", st, b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "interop.mjs", "tail", px.url()+"/v1/stream/chaos", strconv.Itoa(total))
	cmd.Dir = durableStreamsDir
	var errOut strings.Builder
	cmd.Stderr = &errOut
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, total+1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var got []string
	// caughtUp waits until the client has read n values: then it is
	// waiting in a long-poll, which a cut or a kill interrupts.
	caughtUp := func(n int) {
		t.Helper()
		deadline := time.After(30 * time.Second)
		for len(got) < n {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("the client ended after %d values: %s", len(got), errOut.String())
				}
				got = append(got, l)
			case <-deadline:
				t.Fatalf("the client read %d values in 30s, want %d: %s", len(got), n, errOut.String())
			}
		}
	}
	for i := range total {
		if st, _, b := dsDo(t, "POST", u+"/v1/stream/chaos", "", "application/json", `{"n":`+strconv.Itoa(i)+`}`); st != 204 {
			t.Fatalf("append %d: %d %s", i, st, b)
		}
		if i%30 == 29 {
			caughtUp(i + 1)
			px.cut()
		}
		if i == total/2 {
			caughtUp(i + 1)
			p.cmd.Process.Signal(syscall.SIGKILL)
			p.wait(10 * time.Second)
			p, _ = serve(t, "--data-dir", dir, "--listen", addr)
		}
	}
	caughtUp(total)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("the client: %v\n%s", err, errOut.String())
	}
	for l := range lines {
		got = append(got, l)
	}
	if len(got) != total {
		t.Fatalf("the client read %d values, want %d: %v", len(got), total, got)
	}
	for i, v := range got {
		if v != strconv.Itoa(i) {
			t.Fatalf("value %d is %s: %v", i, v, got)
		}
	}
}

// TestDurableStreamAnyRedisNode: two nodes on one Redis serve the same
// streams: created on one, appended on either, a long-poll on the other
// is woken, and the state (closure) is the same on both.
func TestDurableStreamAnyRedisNode(t *testing.T) {
	rs := redistest.Start(t, redistest.Options{})
	_, a := serve(t, "--broker", rs.URL())
	_, b := serve(t, "--broker", rs.URL())
	if st, _, body := dsDo(t, "PUT", a+"/v1/stream/shared", "", "text/plain", "one "); st != 201 {
		t.Fatalf("PUT on A: %d %s", st, body)
	}
	st, h, body := dsDo(t, "GET", b+"/v1/stream/shared?offset=-1", "", "", "")
	if st != 200 || body != "one " {
		t.Fatalf("read on B: %d %q", st, body)
	}
	done := make(chan string, 1)
	go func() {
		_, _, body := dsDo(t, "GET", b+"/v1/stream/shared?live=long-poll&offset="+h.Get("Stream-Next-Offset"), "", "", "")
		done <- body
	}()
	dsWaitSubscribers(t, b, "ds.shared", 1)
	if st, _, body := dsDo(t, "POST", a+"/v1/stream/shared", "", "text/plain", "two"); st != 204 {
		t.Fatalf("append on A: %d %s", st, body)
	}
	select {
	case body := <-done:
		if body != "two" {
			t.Fatalf("B's long-poll got %q, want two", body)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("B's long-poll did not see A's append")
	}
	if st, _, body := dsDo(t, "POST", b+"/v1/stream/shared", "", "", "", "Stream-Closed", "true"); st != 204 {
		t.Fatalf("close on B: %d %s", st, body)
	}
	if st, h, _ := dsDo(t, "HEAD", a+"/v1/stream/shared", "", "", ""); st != 200 || h.Get("Stream-Closed") != "true" {
		t.Fatalf("A after B closed: %d %v", st, h)
	}
}

// TestDurableStreamLiveReadsAreConnections: a live read counts against
// --max-conns-per-ip like any subscriber connection, and a broker told to
// stop ends a waiting SSE read at once instead of waiting out its minute.
func TestDurableStreamLiveReadsAreConnections(t *testing.T) {
	p, u := serve(t, "--max-conns-per-ip", "1")
	s := u + "/v1/stream/live"
	if st, _, b := dsDo(t, "PUT", s, "", "text/plain", ""); st != 201 {
		t.Fatalf("PUT: %d %s", st, b)
	}
	sse := make(chan error, 1)
	go func() {
		resp, err := http.Get(s + "?offset=now&live=sse")
		if err == nil {
			_, err = io.Copy(io.Discard, resp.Body) // until the broker ends it
			resp.Body.Close()
		}
		sse <- err
	}()
	dsWaitSubscribers(t, u, "ds.live", 1)
	if st, _, b := dsDo(t, "GET", s+"?offset=now&live=long-poll", "", "", ""); st != 429 || dsCode(b) != "too_many_connections" {
		t.Fatalf("a second live read from one address: %d %s, want 429 too_many_connections", st, b)
	}
	start := time.Now()
	p.signal(syscall.SIGTERM)
	if code := p.wait(10 * time.Second); code != 0 {
		t.Fatalf("serve exited %d", code)
	}
	if took := time.Since(start); took > 4*time.Second {
		t.Errorf("serve took %s to stop with an SSE read open", took)
	}
	select {
	case <-sse:
	case <-time.After(5 * time.Second):
		t.Fatal("the SSE read was not ended")
	}
}
