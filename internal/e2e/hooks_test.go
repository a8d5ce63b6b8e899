//go:build cgo && !nozmq

package e2e

import (
	"bufio"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/pushctl/pushctl/internal/hooks"
)

const hookSecret = "hook-secret-for-the-e2e-tests-0123456789"

// app is the application behind the hooks: it knows the session cookie
// "alice", refuses room.secret, rejects a message saying "spam" and
// rewrites one saying "rewrite me". It checks every request's signature.
type app struct {
	t        *testing.T
	srv      *httptest.Server
	mu       sync.Mutex
	calls    map[string]int
	badSig   atomic.Int64
	slow     atomic.Bool
	forge    atomic.Bool
	shrink   atomic.Bool
	replay   atomic.Value // string: a signature to send again
	lastSig  atomic.Value
	ttl      int64
	refreshs atomic.Int64
}

func newApp(t *testing.T) *app {
	a := &app{t: t, calls: map[string]int{}, ttl: 3600}
	a.replay.Store("")
	a.srv = httptest.NewServer(http.HandlerFunc(a.serve))
	t.Cleanup(a.srv.Close)
	return a
}

func (a *app) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	if err := hooks.Verify([]byte(hookSecret), r.Header.Get(hooks.SignatureHeader), body, time.Now()); err != nil {
		a.badSig.Add(1)
		http.Error(w, "bad signature", 401)
		return
	}
	if a.slow.Load() {
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
		return
	}
	var req map[string]any
	json.Unmarshal(body, &req)
	hook, _ := req["hook"].(string)
	a.mu.Lock()
	a.calls[hook]++
	a.mu.Unlock()
	var answer any = map[string]any{}
	switch hook {
	case "connect", "refresh":
		if hook == "refresh" {
			a.refreshs.Add(1)
		}
		cookies, _ := req["cookies"].(map[string]any)
		if hook == "connect" && cookies["session"] != "alice" {
			answer = map[string]any{"error": map[string]string{"code": "login_required", "message": "log in first"}}
			break
		}
		grants := []string{"room.*"}
		if hook == "refresh" && a.shrink.Load() {
			grants = []string{"user.alice.*"} // alice left the room
		}
		answer = map[string]any{"user": "alice", "info": map[string]string{"name": "Alice"},
			"subscribe": grants, "publish": grants, "ttl": a.ttl}
	case "subscribe":
		if req["channel"] == "room.secret" {
			answer = map[string]any{"error": map[string]string{"message": "not for alice"}}
		} else if req["join"] == true {
			answer = map[string]any{"info": map[string]string{"badge": "gold"}}
		}
	case "publish":
		switch data, _ := req["data"].(string); data {
		case "spam":
			answer = map[string]any{"error": map[string]string{"code": "moderated", "message": "no spam here"}}
		case "rewrite me":
			answer = map[string]any{"data": map[string]string{"text": "rewritten by the app", "by": fmt.Sprint(req["user"])}}
		}
	}
	b, _ := json.Marshal(answer)
	reqSig := r.Header.Get(hooks.SignatureHeader)
	switch {
	case a.forge.Load():
		w.Header().Set(hooks.SignatureHeader, hooks.SignAnswer([]byte("not the secret"), time.Now(), reqSig, b))
	case a.replay.Load().(string) != "":
		w.Header().Set(hooks.SignatureHeader, a.replay.Load().(string)) // an earlier answer's signature
	default:
		sig := hooks.SignAnswer([]byte(hookSecret), time.Now(), reqSig, b)
		a.lastSig.Store(sig)
		w.Header().Set(hooks.SignatureHeader, sig)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(b)
}

func (a *app) count(hook string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.calls[hook]
}

func getWithCookie(t *testing.T, u, cookie string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", u, nil)
	if cookie != "" {
		req.Header.Set("Cookie", cookie)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func dialCookie(t *testing.T, base, path, cookie string) (*websocket.Conn, int, string) {
	t.Helper()
	h := http.Header{}
	if cookie != "" {
		h.Set("Cookie", cookie)
	}
	c, resp, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(base, "http")+path, h)
	if err != nil {
		if resp == nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		return nil, resp.StatusCode, string(b)
	}
	t.Cleanup(func() { c.Close() })
	return c, 101, ""
}

// pusherRefused dials the Pusher endpoint without a cookie and returns the
// close it gets.
func pusherRefused(t *testing.T, base string) (int, string) {
	t.Helper()
	c, status, body := dialCookie(t, base, "/app/hookkey?protocol=7", "")
	if c == nil {
		t.Fatalf("Pusher dial: %d %s", status, body)
	}
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	for {
		_, _, err := c.ReadMessage()
		var ce *websocket.CloseError
		if errors.As(err, &ce) {
			return ce.Code, ce.Text
		}
		if err != nil {
			t.Fatalf("Pusher: %v", err)
		}
	}
}

// wsRefused dials /ws with cookie and returns how the broker refused it:
// the close code and reason it sends at once (a browser can read those,
// not a refused upgrade's status).
func wsRefused(t *testing.T, base, cookie string) (int, string) {
	t.Helper()
	c, status, body := dialCookie(t, base, "/ws", cookie)
	if c == nil {
		return status, body
	}
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	_, _, err := c.ReadMessage()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) {
		t.Fatalf("expected a close frame, got %v", err)
	}
	return ce.Code, ce.Text
}

func TestHooksDecideWhoConnectsSubscribesAndPublishes(t *testing.T) {
	a := newApp(t)
	_, url := serve(t, "--hook-connect", a.srv.URL, "--hook-subscribe", a.srv.URL, "--hook-publish", a.srv.URL,
		"--hook-secret", hookSecret, "--hook-signed-answers", "--hook-timeout", "2s",
		"--pusher-app", "4242:hookkey:hook-pusher-secret-0123456789",
		"--namespace", "name=open,match=open.>,hooks=none")

	// No session: the application's refusal, with its message.
	if code, text := wsRefused(t, url, ""); code != 4403 || text != "hook_denied: login_required: log in first" {
		t.Fatalf("no cookie: %d %q", code, text)
	}
	// On /sub the refusal is the HTTP error.
	if status, b := getWithCookie(t, url+"/sub/room.a?poll=1ms", ""); status != 403 || !strings.Contains(b, "hook_denied") {
		t.Fatalf("long-poll without a cookie: %d %s", status, b)
	}
	// Alice's cookie: connected with no token, granted room.* only.
	ws, status, body := dialCookie(t, url, "/ws", "session=alice")
	if status != 101 {
		t.Fatalf("alice: %d %s", status, body)
	}
	for ch, want := range map[string]string{"room.a": "ok", "room.secret": "hook_denied", "other": "forbidden"} {
		if got := wsReply(t, ws, map[string]any{"type": "subscribe", "ref": ref(), "channel": ch}); got != want {
			t.Errorf("alice subscribing to %s: %s, want %s", ch, got, want)
		}
	}
	// A join is asked about too, and the answer's info is what the member shows.
	ws.WriteJSON(map[string]any{"type": "join", "ref": "j1", "channel": "room.a"})
	ws.SetReadDeadline(time.Now().Add(20 * time.Second))
	for {
		var f struct {
			Type    string `json:"type"`
			Ref     string `json:"ref"`
			Members []struct {
				ID   string          `json:"id"`
				Info json.RawMessage `json:"info"`
			} `json:"members"`
		}
		if err := ws.ReadJSON(&f); err != nil {
			t.Fatal(err)
		}
		if f.Ref != "j1" {
			continue
		}
		if f.Type != "joined" || len(f.Members) != 1 || f.Members[0].ID != "alice" || string(f.Members[0].Info) != `{"badge":"gold"}` {
			t.Fatalf("join: %+v", f)
		}
		break
	}
	// Subscribers on SSE (alice's cookie) and Pusher see what alice publishes.
	req, _ := http.NewRequest("GET", url+"/sub/room.a", nil)
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Cookie", "session=alice")
	sse, err := http.DefaultClient.Do(req)
	if err != nil || sse.StatusCode != 200 {
		t.Fatalf("SSE with alice's cookie: %v %v", err, sse.Status)
	}
	defer sse.Body.Close()
	// A Pusher connection is asked about too: without the cookie it is
	// closed with Pusher's 4009 and the application's reason.
	if code, text := pusherRefused(t, url); code != 4009 || text != "hook_denied: login_required: log in first" {
		t.Errorf("Pusher connection without a session: %d %q", code, text)
	}
	pc, _, _ := dialCookie(t, url, "/app/hookkey?protocol=7", "session=alice")
	pc.WriteJSON(map[string]any{"event": "pusher:subscribe", "data": map[string]string{"channel": "room.a"}})
	// A second connection of alice's that only reads (ws reads its replies).
	wsSub, _, _ := dialCookie(t, url, "/ws", "session=alice")
	if got := wsReply(t, wsSub, map[string]any{"type": "subscribe", "ref": ref(), "channel": "room.a"}); got != "ok" {
		t.Fatalf("second subscription: %s", got)
	}
	waitSubscribers(t, url, "room.a", 4)

	for data, want := range map[string]string{"spam": "hook_denied", "rewrite me": "ok", "plain": "ok"} {
		if got := wsReply(t, ws, map[string]any{"type": "publish", "ref": ref(), "channel": "room.a", "data": data}); got != want {
			t.Errorf("publishing %q: %s, want %s", data, got, want)
		}
	}
	// The WebSocket, SSE and Pusher subscribers all get the rewritten
	// message and the plain one, never the spam.
	readWS := func() []string {
		var got []string
		wsSub.SetReadDeadline(time.Now().Add(20 * time.Second))
		for len(got) < 2 {
			var f struct {
				Type string          `json:"type"`
				Data json.RawMessage `json:"data"`
			}
			if err := wsSub.ReadJSON(&f); err != nil {
				t.Fatalf("WebSocket: %v after %v", err, got)
			}
			if f.Type == "message" {
				got = append(got, string(f.Data))
			}
		}
		return got
	}
	if got := readWS(); !strings.Contains(got[0], "rewritten by the app") && !strings.Contains(got[1], "rewritten by the app") || strings.Contains(strings.Join(got, " "), "spam") {
		t.Errorf("WebSocket subscriber got %v", got)
	}
	br := bufio.NewReader(sse.Body)
	var sseData []string
	for len(sseData) < 2 {
		l, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("SSE: %v", err)
		}
		if d, ok := strings.CutPrefix(strings.TrimSpace(l), "data: "); ok {
			sseData = append(sseData, d)
		}
	}
	if s := strings.Join(sseData, " "); !strings.Contains(s, "rewritten by the app") || !strings.Contains(s, `"by":"alice"`) || strings.Contains(s, "spam") {
		t.Errorf("SSE subscriber got %v", sseData)
	}
	// Pusher subscriptions meet the subscribe hook too.
	pc.WriteJSON(map[string]any{"event": "pusher:subscribe", "data": map[string]string{"channel": "room.secret"}})
	var pusherData []string
	pusherRefused := false
	pc.SetReadDeadline(time.Now().Add(20 * time.Second))
	for len(pusherData) < 2 || !pusherRefused {
		var f struct {
			Event string          `json:"event"`
			Data  json.RawMessage `json:"data"`
		}
		if err := pc.ReadJSON(&f); err != nil {
			t.Fatalf("Pusher: %v (messages %v, room.secret refused %v)", err, pusherData, pusherRefused)
		}
		switch {
		case f.Event == "pusher:subscription_error":
			pusherRefused = strings.Contains(string(f.Data), "hook_denied")
		case !strings.HasPrefix(f.Event, "pusher"):
			var d string
			json.Unmarshal(f.Data, &d)
			pusherData = append(pusherData, d)
		}
	}
	if s := strings.Join(pusherData, " "); !strings.Contains(s, "rewritten by the app") || strings.Contains(s, "spam") {
		t.Errorf("Pusher subscriber got %v", pusherData)
	}
	// A namespace without hooks is not asked about.
	before := a.count("subscribe")
	if status, _ := post(t, url+"/pub/open.x", "", "x"); status != 200 {
		t.Errorf("HTTP publish to open.x: %d", status)
	}
	if got := wsReply(t, ws, map[string]any{"type": "subscribe", "ref": ref(), "channel": "open.x"}); got != "forbidden" {
		t.Errorf("subscribing to open.x outside alice's grants: %s", got) // grants still hold
	}
	if a.count("subscribe") != before {
		t.Error("the subscribe hook was asked about a namespace with hooks=none")
	}
	if n := a.badSig.Load(); n != 0 {
		t.Errorf("%d hook requests were not signed right", n)
	}

	// The application slow, then answering with a forged signature: the
	// failure policy (deny) applies, with its code.
	a.slow.Store(true)
	if code, text := wsRefused(t, url, "session=alice"); code != 4503 || !strings.HasPrefix(text, "hook_unavailable: ") {
		t.Errorf("%s: %d %q", "slow application", code, text)
	}
	a.slow.Store(false)
	a.forge.Store(true)
	if code, text := wsRefused(t, url, "session=alice"); code != 4503 || !strings.HasPrefix(text, "hook_unavailable: ") {
		t.Errorf("%s: %d %q", "forged answer", code, text)
	}
	a.forge.Store(false)
	// A signed answer replayed to another request is not trusted either:
	// its signature covers the request it answered.
	a.replay.Store(a.lastSig.Load().(string))
	if code, text := wsRefused(t, url, "session=alice"); code != 4503 || !strings.HasPrefix(text, "hook_unavailable: ") {
		t.Errorf("replayed answer: %d %q", code, text)
	}
	a.replay.Store("")
	// The application stopped.
	a.srv.Close()
	if code, text := wsRefused(t, url, "session=alice"); code != 4503 || !strings.HasPrefix(text, "hook_unavailable: ") {
		t.Errorf("%s: %d %q", "application down", code, text)
	}
	// Counted in /metrics.
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	m, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`pushctl_hook_requests_total{hook="publish",outcome="denied"} 1`, `pushctl_hook_duration_seconds_count{hook="connect"}`, `outcome="unavailable"`} {
		if !strings.Contains(string(m), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// The refresh hook keeps a connection the connect hook identified alive
// past its first expiry.
func TestRefreshHookKeepsConnectionAlive(t *testing.T) {
	a := newApp(t)
	a.ttl = 1
	_, url := serve(t, "--hook-connect", a.srv.URL, "--hook-refresh", a.srv.URL, "--hook-secret", hookSecret)
	ws, status, body := dialCookie(t, url, "/ws", "session=alice")
	if status != 101 {
		t.Fatalf("alice: %d %s", status, body)
	}
	if got := wsReply(t, ws, map[string]any{"type": "subscribe", "ref": ref(), "channel": "room.a"}); got != "ok" {
		t.Fatalf("subscribe: %s", got)
	}
	// Wait for two refreshes (each answer lasts 1 s), then the connection
	// still delivers.
	deadline := time.Now().Add(20 * time.Second)
	for a.refreshs.Load() < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("%d refreshes in 20s", a.refreshs.Load())
		}
		if got := wsReply(t, ws, map[string]any{"type": "ping", "ref": ref()}); got != "ok" {
			t.Fatalf("ping between refreshes: %s", got)
		}
	}
	if status, b := post(t, url+"/pub/room.a", "", "still here"); status != 200 {
		t.Fatalf("publish: %d %s", status, b)
	}
	ws.SetReadDeadline(time.Now().Add(20 * time.Second))
	for {
		var f struct {
			Type string `json:"type"`
			Data string `json:"data"`
		}
		if err := ws.ReadJSON(&f); err != nil {
			t.Fatalf("the connection ended after its first expiry: %v", err)
		}
		if f.Type == "message" && f.Data == "still here" {
			return
		}
	}
}

// The example application of docs/hooks.md, run as it is written (on a
// free port instead of 8000), answers a real broker's hooks.
func TestHooksDocExampleApp(t *testing.T) {
	doc, err := os.ReadFile("../../docs/hooks.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(doc), "```python\n")
	script, _, ok2 := strings.Cut(rest, "```")
	if !ok || !ok2 {
		t.Fatal("docs/hooks.md has no python block")
	}
	const last = `HTTPServer(("127.0.0.1", 8000), Hooks).serve_forever()`
	if !strings.Contains(script, last) {
		t.Fatalf("the example no longer ends with %s", last)
	}
	script = strings.Replace(script, last, `srv = HTTPServer(("127.0.0.1", 0), Hooks)
print(srv.server_address[1], flush=True)
srv.serve_forever()`, 1)
	path := filepath.Join(t.TempDir(), "hooks_app.py")
	os.WriteFile(path, []byte(script), 0o600)
	cmd := exec.Command(python, path)
	cmd.Env = append(os.Environ(), "PUSHCTL_HOOK_SECRET="+hookSecret)
	out, _ := cmd.StdoutPipe()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	portc := make(chan string, 1)
	go func() {
		l, _ := bufio.NewReader(out).ReadString('\n')
		portc <- strings.TrimSpace(l)
	}()
	var port string
	select {
	case port = <-portc:
	case <-time.After(20 * time.Second):
		t.Fatalf("the example app did not start: %s", stderr.String())
	}
	appURL := "http://127.0.0.1:" + port + "/pushctl"
	_, url := serve(t, "--hook-connect", appURL, "--hook-publish", appURL, "--hook-refresh", appURL, "--hook-secret", hookSecret)
	if code, text := wsRefused(t, url, "session=wrong"); code != 4403 || text != "hook_denied: login_required: log in first" {
		t.Fatalf("unknown session: %d %q", code, text)
	}
	ws, status, body := dialCookie(t, url, "/ws", "session=s3cr3t-session")
	if status != 101 {
		t.Fatalf("a logged-in page: %d %s (app: %s)", status, body, stderr.String())
	}
	if got := wsReply(t, ws, map[string]any{"type": "subscribe", "ref": ref(), "channel": "user.42.inbox"}); got != "ok" {
		t.Errorf("subscribing to the user's own channel: %s", got)
	}
	if got := wsReply(t, ws, map[string]any{"type": "subscribe", "ref": ref(), "channel": "user.43.inbox"}); got != "forbidden" {
		t.Errorf("subscribing to another user's channel: %s", got)
	}
	for data, want := range map[string]string{"hello": "ok", "buy spam now": "hook_denied"} {
		if got := wsReply(t, ws, map[string]any{"type": "publish", "ref": ref(), "channel": "room.1", "data": data}); got != want {
			t.Errorf("publishing %q: %s, want %s", data, got, want)
		}
	}
}

// A page of the application with a session cookie connects through
// pushctl.js with no token at all and gets exactly what the application
// granted; without the cookie, the application's refusal is a readable
// state, not endless reconnecting.
func TestBrowserConnectsWithSessionCookie(t *testing.T) {
	ctx := browser(t)
	a := newApp(t)
	_, url := serve(t, "--hook-connect", a.srv.URL, "--hook-subscribe", a.srv.URL, "--hook-secret", hookSecret)
	page(t, ctx, url, `document.cookie = "session=alice; path=/"`)
	js(t, ctx, `window.p = pushctl.connect(location.origin);`+fmt.Sprintf(collect, "room.a")+`
		window.secret = p.subscribe("room.secret"); window.secretErr = null;
		secret.on("error", (e) => { window.secretErr = e.code; });
		window.other = p.subscribe("other"); window.otherErr = null;
		other.on("error", (e) => { window.otherErr = e.code; });`)
	until(t, ctx, `p.state === "connected" && p.channel("room.a").subscribed`, 20*time.Second)
	until(t, ctx, `window.secretErr && window.otherErr`, 20*time.Second)
	if errs := eval[[]string](t, ctx, `[window.secretErr, window.otherErr]`); errs[0] != "hook_denied" || errs[1] != "forbidden" {
		t.Errorf("refused subscriptions: %v, want hook_denied (the subscribe hook) and forbidden (outside the grants)", errs)
	}
	if _, errs, code := run(t, "", "pub", "--server", url, "room.a", "hello alice"); code != 0 {
		t.Fatalf("pub: %s", errs)
	}
	until(t, ctx, `window.got.length >= 1`, 20*time.Second)
	if got := eval[[]string](t, ctx, `window.got`); len(got) != 1 || got[0] != "room.a|message|hello alice" {
		t.Fatalf("page got %q", got)
	}
	// Logged out: the refusal is the state, with the application's message.
	js(t, ctx, `document.cookie = "session=; path=/; max-age=0";
		window.q = pushctl.connect(location.origin); window.qstates = [];
		q.on("state", (s) => window.qstates.push(s.state + (s.error ? ":" + s.error.code + ":" + s.error.message : "")));
		q.subscribe("room.a");`)
	until(t, ctx, `q.state === "disconnected"`, 20*time.Second)
	states := eval[[]string](t, ctx, `window.qstates`)
	last := states[len(states)-1]
	if last != "disconnected:hook_denied:login_required: log in first" {
		t.Fatalf("logged-out page's states: %q", states)
	}
	for _, s := range states {
		if strings.HasPrefix(s, "reconnecting") {
			t.Fatalf("a refusal by the application was retried: %q", states)
		}
	}
}

// A refresh that grants less ends the subscriptions it no longer allows,
// saying so.
func TestRefreshWithFewerGrantsRevokes(t *testing.T) {
	a := newApp(t)
	a.ttl = 1
	a.shrink.Store(true)
	_, url := serve(t, "--hook-connect", a.srv.URL, "--hook-refresh", a.srv.URL, "--hook-secret", hookSecret)
	ws, status, body := dialCookie(t, url, "/ws", "session=alice")
	if status != 101 {
		t.Fatalf("alice: %d %s", status, body)
	}
	if got := wsReply(t, ws, map[string]any{"type": "subscribe", "ref": ref(), "channel": "room.a"}); got != "ok" {
		t.Fatalf("subscribe: %s", got)
	}
	ws.SetReadDeadline(time.Now().Add(20 * time.Second))
	for {
		var f struct {
			Type     string   `json:"type"`
			Channels []string `json:"channels"`
			Code     string   `json:"code"`
		}
		if err := ws.ReadJSON(&f); err != nil {
			t.Fatalf("no unsubscribed frame after a refresh without room.*: %v", err)
		}
		if f.Type == "unsubscribed" {
			if f.Code != "forbidden" || len(f.Channels) != 1 || f.Channels[0] != "room.a" {
				t.Fatalf("unsubscribed: %+v", f)
			}
			return
		}
	}
}

// A Pusher presence subscription is one decision for the application:
// the subscribe hook is asked once, as a join (its answer's info is what
// the member shows), not once to subscribe and again to join.
func TestPusherPresenceAsksTheSubscribeHookOnce(t *testing.T) {
	var mu sync.Mutex
	var asked []string
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var req map[string]any
		json.Unmarshal(body, &req)
		mu.Lock()
		asked = append(asked, fmt.Sprintf("%v %v join=%v", req["hook"], req["channel"], req["join"]))
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if req["join"] == true {
			w.Write([]byte(`{"info":{"badge":"gold"}}`))
			return
		}
		w.Write([]byte(`{}`))
	}))
	defer app.Close()
	const secret = "presence-pusher-secret-0123456789"
	_, url := serve(t, "--hook-subscribe", app.URL, "--hook-secret", hookSecret, "--pusher-app", "77:preskey:"+secret)

	pc, status, body := dialCookie(t, url, "/app/preskey?protocol=7", "")
	if pc == nil {
		t.Fatalf("Pusher dial: %d %s", status, body)
	}
	pc.SetReadDeadline(time.Now().Add(20 * time.Second))
	var established struct {
		Event string `json:"event"`
		Data  string `json:"data"`
	}
	if err := pc.ReadJSON(&established); err != nil || established.Event != "pusher:connection_established" {
		t.Fatalf("connection: %v %+v", err, established)
	}
	var conn struct {
		SocketID string `json:"socket_id"`
	}
	json.Unmarshal([]byte(established.Data), &conn)
	const channel = "presence-room"
	channelData := `{"user_id":"alice","user_info":{"name":"Alice"}}`
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(conn.SocketID + ":" + channel + ":" + channelData))
	pc.WriteJSON(map[string]any{"event": "pusher:subscribe", "data": map[string]string{
		"channel": channel, "auth": "preskey:" + hex.EncodeToString(m.Sum(nil)), "channel_data": channelData}})
	for {
		var f struct {
			Event string `json:"event"`
			Data  string `json:"data"`
		}
		if err := pc.ReadJSON(&f); err != nil {
			t.Fatal(err)
		}
		if f.Event == "pusher:subscription_error" {
			t.Fatalf("presence subscription refused: %s", f.Data)
		}
		if f.Event != "pusher_internal:subscription_succeeded" {
			continue
		}
		if !strings.Contains(f.Data, `"badge":"gold"`) {
			t.Fatalf("the member does not show the hook's info: %s", f.Data)
		}
		break
	}
	mu.Lock()
	defer mu.Unlock()
	if len(asked) != 1 || asked[0] != "subscribe presence-room join=true" {
		t.Fatalf("the application was asked %q, want once, as a join", asked)
	}
}
