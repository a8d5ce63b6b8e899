package server_test

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/pushctl/pushctl/internal/auth"
	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/server"
)

var secret = []byte("matrix-secret-matrix-secret-0123")

func tok(t *testing.T, g auth.Grants, ttl time.Duration) string {
	t.Helper()
	s, err := auth.Issue(g, ttl, "tester", "", secret, nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestAuthorizationMatrix tries every endpoint with every combination of
// grants and with valid, expired, tampered and missing tokens.
func TestAuthorizationMatrix(t *testing.T) {
	e := newEnv(t, broker.MemoryOptions{}, server.Options{Auth: auth.New(auth.Config{Secret: secret})})
	e.b.Publish(tctx(t), &broker.Message{Channel: "ch", Data: []byte("x")})
	type perm struct {
		name string
		g    auth.Grants
	}
	perms := []perm{
		{"pub", auth.Grants{Publish: []string{"ch"}}},
		{"sub", auth.Grants{Subscribe: []string{"ch"}}},
		{"both", auth.Grants{Publish: []string{"ch"}, Subscribe: []string{"ch"}}},
		{"other", auth.Grants{Publish: []string{"other.>"}, Subscribe: []string{"other.>"}}},
		{"admin", auth.Grants{Publish: []string{">"}, Subscribe: []string{">"}}},
	}
	type endpoint struct {
		name, method, path, body string
		needs                    string // pub, sub or admin
		ws                       bool
		ok                       string // what success looks like in the body
	}
	endpoints := []endpoint{
		{"publish", "POST", "/pub/ch", "hello", "pub", false, `"seq":`},
		{"publish lines", "POST", "/pub/ch?lines=1", "a\nb", "pub", false, `"line":2,"id":`},
		{"publish batch", "POST", "/pub", `{"channel":"ch","data":"x"}`, "pub", false, `"line":1,"id":`},
		{"subscribe stream", "GET", "/sub/ch?format=ndjson&since=all", "", "sub", false, `"type":"message"`},
		{"long-poll", "GET", "/sub/ch?poll=1ms&since=all", "", "sub", false, `"cursor":"ch=`},
		{"websocket subscribe", "GET", "/sub/ch", "", "sub", true, ""},
		{"channel info", "GET", "/channels/ch", "", "pub or sub", false, `"channel":"ch"`},
		{"delete", "DELETE", "/channels/ch", "", "pub", false, `"deleted":"ch"`},
		{"list", "GET", "/channels", "", "admin", false, `"channels":[`},
		{"stats", "GET", "/stats", "", "admin", false, `"published":`},
	}
	grants := func(p perm, needs string) bool {
		switch needs {
		case "pub":
			return p.name == "pub" || p.name == "both" || p.name == "admin"
		case "sub":
			return p.name == "sub" || p.name == "both" || p.name == "admin"
		case "pub or sub":
			return p.name != "other"
		}
		return p.name == "admin"
	}
	call := func(ep endpoint, token string) (int, string) {
		if ep.ws {
			h := http.Header{}
			if token != "" {
				h.Set("Authorization", "Bearer "+token)
			}
			c, resp, err := websocket.DefaultDialer.Dial(wsURL(e, ep.path), h)
			if err == nil {
				c.Close()
				return 101, ""
			}
			b, _ := io.ReadAll(resp.Body)
			return resp.StatusCode, string(b)
		}
		req, _ := http.NewRequestWithContext(tctx(t), ep.method, e.srv.URL+ep.path, strings.NewReader(ep.body))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if ep.name != "subscribe stream" {
			b, _ := io.ReadAll(resp.Body)
			return resp.StatusCode, string(b)
		}
		// A stream never ends: read its first lines.
		b := make([]byte, 4096)
		n, _ := io.ReadAtLeast(resp.Body, b, 1)
		return resp.StatusCode, string(b[:n])
	}
	tried := 0
	for _, ep := range endpoints {
		for _, p := range perms {
			valid := tok(t, p.g, time.Hour)
			expired, _ := auth.Issue(p.g, time.Minute, "tester", "", secret, nil, time.Now().Add(-time.Hour))
			parts := strings.Split(valid, ".")
			tampered := parts[0] + "." + parts[1] + "." + strings.Repeat("A", len(parts[2]))
			for _, c := range []struct {
				state, token string
				status       int
				code         string
			}{
				{"missing", "", 401, "token_missing"},
				{"expired", expired, 401, "token_expired"},
				{"tampered", tampered, 401, "token_invalid"},
				{"valid", valid, 0, ""},
			} {
				if ep.name == "delete" && c.state == "valid" && grants(p, ep.needs) {
					// Re-create the channel so each delete has one to delete.
					e.b.Publish(tctx(t), &broker.Message{Channel: "ch", Data: []byte("x")})
				}
				status, body := call(ep, c.token)
				tried++
				want, wantCode := c.status, c.code
				if c.state == "valid" {
					if grants(p, ep.needs) {
						want := 200
						if ep.ws {
							want = 101
						}
						if status != want || !strings.Contains(body, ep.ok) || strings.Contains(body, `"error"`) {
							t.Errorf("%s with %s token (%s): %d %s, want %d with %s", ep.name, c.state, p.name, status, body, want, ep.ok)
						}
						continue
					}
					want, wantCode = 403, "forbidden"
					if ep.name == "publish batch" {
						want = 200 // refused line by line, in the acks
					}
				}
				if status != want || !strings.Contains(body, `"code":"`+wantCode+`"`) {
					t.Errorf("%s with %s token (%s): %d %s, want %d %s", ep.name, c.state, p.name, status, body, want, wantCode)
				}
			}
		}
	}
	// The WebSocket protocol: anonymous connection, then frames.
	c := dialWS(t, e, "/ws")
	send := func(v string) map[string]any {
		c.WriteMessage(websocket.TextMessage, []byte(v))
		return readFrame(t, c)
	}
	if f := send(`{"type":"publish","ref":"1","channel":"ch","data":"x"}`); f["code"] != "token_missing" {
		t.Fatalf("anonymous publish frame: %v", f)
	}
	if f := send(`{"type":"auth","ref":"a","token":"nonsense"}`); f["code"] != "token_invalid" {
		t.Fatalf("bad auth frame: %v", f)
	}
	if f := send(`{"type":"auth","ref":"a","token":"` + tok(t, auth.Grants{Subscribe: []string{"ch"}}, time.Hour) + `"}`); f["type"] != "authenticated" {
		t.Fatalf("auth frame: %v", f)
	}
	if f := send(`{"type":"publish","ref":"2","channel":"ch","data":"x"}`); f["code"] != "forbidden" {
		t.Fatalf("publish with a subscribe-only token: %v", f)
	}
	if f := send(`{"type":"subscribe","ref":"3","channels":["ch.>"]}`); f["code"] != "forbidden" {
		t.Fatalf("subscribe beyond the grant: %v", f)
	}
	if f := send(`{"type":"subscribe","ref":"4","channels":["ch"]}`); f["type"] != "subscribed" {
		t.Fatalf("subscribe within the grant: %v", f)
	}
	// Query-parameter tokens, for EventSource and browser WebSockets.
	resp, err := http.Get(e.srv.URL + "/sub/ch?poll=1ms&token=" + tok(t, auth.Grants{Subscribe: []string{"ch"}}, time.Hour))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("?token=: %v %v", err, resp.Status)
	}
	resp.Body.Close()
	t.Logf("authorization matrix: %d requests", tried)
}

func TestTokenExpiresOnLiveConnections(t *testing.T) {
	e := newEnv(t, broker.MemoryOptions{}, server.Options{Auth: auth.New(auth.Config{Secret: secret})})
	short := tok(t, auth.Grants{Subscribe: []string{"live"}}, 1500*time.Millisecond)
	_, r := e.stream("/sub/live?format=sse", "Authorization", "Bearer "+short)
	h := http.Header{"Authorization": {"Bearer " + short}}
	c, _, err := websocket.DefaultDialer.Dial(wsURL(e, "/sub/live"), h)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for {
		ev := readSSE(t, r)
		if ev["event"] == "pushctl-error" {
			if !strings.Contains(ev["data"], "token_expired") {
				t.Fatalf("stream ended with %v", ev)
			}
			break
		}
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, _, err = c.ReadMessage()
	if ce, ok := err.(*websocket.CloseError); !ok || ce.Code != server.CloseTokenExpired || ce.Text != "token_expired" {
		t.Fatalf("WebSocket ended with %v", err)
	}
}

func TestTrustedPublishersAndOrigins(t *testing.T) {
	az := auth.New(auth.Config{TrustedPublishers: mustPrefixes("127.0.0.1/32")})
	e := newEnv(t, broker.MemoryOptions{}, server.Options{Auth: az, AllowedOrigins: []string{"https://app.example"}})
	e.publish("t", "from a trusted address")
	// Browsers from other origins are refused; the allowed one gets CORS.
	h := http.Header{"Origin": {"https://evil.example"}}
	if _, resp, err := websocket.DefaultDialer.Dial(wsURL(e, "/sub/t"), h); err == nil || resp.StatusCode != 403 {
		t.Fatalf("foreign origin WebSocket: %v", err)
	}
	h.Set("Origin", "https://app.example")
	c, _, err := websocket.DefaultDialer.Dial(wsURL(e, "/sub/t"), h)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	resp, _ := e.do("OPTIONS", "/pub/t", nil, "Origin", "https://app.example", "Access-Control-Request-Method", "POST")
	if resp.StatusCode != 204 || resp.Header.Get("Access-Control-Allow-Origin") != "https://app.example" ||
		!strings.Contains(resp.Header.Get("Access-Control-Allow-Headers"), "Authorization") || !strings.Contains(resp.Header.Get("Access-Control-Allow-Headers"), "Idempotency-Key") {
		t.Fatalf("preflight: %d %v", resp.StatusCode, resp.Header)
	}
	resp, _ = e.do("GET", "/healthz", nil, "Origin", "https://evil.example")
	if resp.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Fatal("CORS header for a foreign origin")
	}
}

func TestRateAndConnectionLimits(t *testing.T) {
	e := newEnv(t, broker.MemoryOptions{}, server.Options{Limits: server.Limits{PublishRate: 5, PublishBurst: 5, ConnsPerIP: 2, ChannelsPerConn: 3}})
	limited := 0
	for i := 0; i < 20; i++ {
		resp, body := e.do("POST", "/pub/r", strings.NewReader("x"))
		if resp.StatusCode == 429 {
			limited++
			if resp.Header.Get("Retry-After") == "" || !strings.Contains(string(body), "rate_limited") {
				t.Fatalf("429 without Retry-After: %v %s", resp.Header, body)
			}
		}
	}
	if limited < 10 {
		t.Fatalf("only %d of 20 rapid publishes limited at 5/s", limited)
	}
	e.stream("/sub/c1") // two connections from this address, the limit
	e.stream("/sub/c2")
	e.waitSubs("c2", 1)
	resp, body := e.do("GET", "/sub/c3?poll=1ms", nil)
	if resp.StatusCode != 429 || !strings.Contains(string(body), "too_many_connections") {
		t.Fatalf("third connection: %d %s", resp.StatusCode, body)
	}
	_, body = e.do("GET", "/metrics", nil)
	for _, want := range []string{`pushctl_limit_hits_total{limit="publish_rate"}`, `pushctl_limit_hits_total{limit="conns_per_ip"}`} {
		if !strings.Contains(string(body), want) {
			t.Fatalf("metrics lack %s", want)
		}
	}
}

// TestTrustedProxies: behind a reverse proxy on the same host, the
// client's address comes from Forwarded/X-Forwarded-For, but only when the
// peer is a listed proxy, and a client cannot smuggle a trusted address in.
func TestTrustedProxies(t *testing.T) {
	trusted := mustPrefixes("10.0.0.5/32")
	az := auth.New(auth.Config{Secret: secret, TrustedPublishers: trusted})
	e := newEnv(t, broker.MemoryOptions{}, server.Options{Auth: az, TrustedProxies: mustPrefixes("127.0.0.1/32")})
	bare := newEnv(t, broker.MemoryOptions{}, server.Options{Auth: az})
	for _, tc := range []struct {
		env    *env
		hdr    []string
		status int
	}{
		{e, nil, 401}, // the proxy itself is not a trusted publisher
		{e, []string{"X-Forwarded-For", "10.0.0.5"}, 200},
		{e, []string{"X-Forwarded-For", "10.0.0.6"}, 401},
		{e, []string{"Forwarded", `for="10.0.0.5:4711";proto=http`}, 200},
		{e, []string{"Forwarded", `for="[2001:db8::1]"`}, 401},
		{e, []string{"X-Forwarded-For", "10.0.0.5, 10.0.0.9"}, 401}, // the client wrote the first hop itself
		{e, []string{"X-Forwarded-For", "10.0.0.9, 10.0.0.5, 127.0.0.1"}, 200},
		{e, []string{"X-Forwarded-For", "not-an-ip, 10.0.0.5"}, 200},
		{e, []string{"X-Forwarded-For", "10.0.0.5, not-an-ip"}, 401},
		{e, []string{"Forwarded", "proto=http"}, 401},
		{bare, []string{"X-Forwarded-For", "10.0.0.5"}, 401}, // headers from a peer that is no proxy are ignored
	} {
		resp, body := tc.env.do("POST", "/pub/prox", strings.NewReader("x"), tc.hdr...)
		if resp.StatusCode != tc.status {
			t.Errorf("%v: %d %s, want %d", tc.hdr, resp.StatusCode, body, tc.status)
		}
	}

	// Per-address connection limits count the forwarded client.
	lim := newEnv(t, broker.MemoryOptions{}, server.Options{TrustedProxies: mustPrefixes("127.0.0.1/32"), Limits: server.Limits{ConnsPerIP: 1}})
	lim.stream("/sub/c?format=ndjson", "X-Forwarded-For", "192.0.2.1")
	lim.waitSubs("c", 1)
	lim.stream("/sub/c?format=ndjson", "X-Forwarded-For", "192.0.2.2")
	lim.waitSubs("c", 2)
	resp, body := lim.do("GET", "/sub/c?format=ndjson", nil, "X-Forwarded-For", "192.0.2.1")
	if resp.StatusCode != 429 {
		t.Errorf("second stream from 192.0.2.1: %d %s, want 429", resp.StatusCode, body)
	}
}
