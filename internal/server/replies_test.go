package server_test

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/pushctl/pushctl/internal/auth"
	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/server"
)

// TestWebSocketErrorsCarryTheRef: a frame whose fields have the wrong JSON
// type is refused with invalid_frame, and the reply carries the frame's ref
// so a client matching replies by ref is not left waiting (issue 26: the
// ref was dropped).
func TestWebSocketErrorsCarryTheRef(t *testing.T) {
	e := newEnv(t, broker.MemoryOptions{}, server.Options{})
	c := dialWS(t, e, "/ws")
	for _, tc := range []struct{ frame, ref, code, text string }{
		{`{"type":"publish","ref":"x1","channel":123,"data":"d"}`, "x1", "invalid_frame", `"channel" must be a string`},
		{`{"type":"subscribe","ref":"x2","channels":"room.42"}`, "x2", "invalid_frame", `"channels" must be an array`},
		{`{"type":"subscribe","ref":"x3","channels":["room.42"],"last":"5"}`, "x3", "invalid_frame", `"last" must be a number`},
		{`{"channels":{},"ref":"x4","type":"subscribe"}`, "x4", "invalid_frame", `"channels" must be an array`},
		{`{"type":"publish","channel":true,"ref":"x5"}`, "x5", "invalid_frame", `"channel" must be a string`},
		{`{"type":"subscribe","ref":"x6","echo":"no","channels":["a"]}`, "x6", "invalid_frame", `"echo" must be true or false`},
	} {
		if err := c.WriteMessage(websocket.TextMessage, []byte(tc.frame)); err != nil {
			t.Fatal(err)
		}
		f := readFrame(t, c)
		msg, _ := f["message"].(string)
		if f["type"] != "error" || f["ref"] != tc.ref || f["code"] != tc.code || !strings.Contains(msg, tc.text) {
			t.Errorf("%s: got %v, want a %s error for ref %s mentioning %s", tc.frame, f, tc.code, tc.ref, tc.text)
		}
	}
	// The connection still works.
	c.WriteMessage(websocket.TextMessage, []byte(`{"type":"ping","ref":"p"}`))
	if f := readFrame(t, c); f["type"] != "pong" || f["ref"] != "p" {
		t.Fatalf("ping after errors: %v", f)
	}
}

// TestErrorBodiesAreNotHTMLEscaped: error texts meant for people and tools
// keep <, > and & as they are, on HTTP and WebSocket (issue 26: HTTP bodies
// read "Bearer \u003ctoken\u003e").
func TestErrorBodiesAreNotHTMLEscaped(t *testing.T) {
	e := newEnv(t, broker.MemoryOptions{}, server.Options{Auth: auth.New(auth.Config{Secret: secret})})
	resp, body := e.do("POST", "/pub/news", strings.NewReader("x"))
	if resp.StatusCode != 401 || !strings.Contains(string(body), "Bearer <token>") {
		t.Errorf("no token: %d %s, want the text Bearer <token>", resp.StatusCode, body)
	}
	admin := tok(t, auth.Grants{Publish: []string{">"}, Subscribe: []string{">"}}, time.Hour)
	resp, body = e.do("POST", "/pub/a%3Eb", strings.NewReader("x"), "Authorization", "Bearer "+admin)
	if resp.StatusCode != 400 || !strings.Contains(string(body), `\"a>b\": character '>'`) {
		t.Errorf("channel a>b: %d %s, want the name as written", resp.StatusCode, body)
	}
	// A streaming publish's per-line errors, the same.
	resp, body = e.do("POST", "/pub", strings.NewReader(`{"channel":"a&b","data":"x"}`+"\n"), "Authorization", "Bearer "+admin)
	if resp.StatusCode != 200 || !strings.Contains(string(body), `\"a&b\": character '&'`) {
		t.Errorf("batch line to a&b: %d %s, want the name as written", resp.StatusCode, body)
	}
	c := dialWS(t, e, "/ws?token="+admin)
	c.WriteMessage(websocket.TextMessage, []byte(`{"type":"publish","ref":"r","channel":"<b>","data":"x"}`))
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, raw, err := c.ReadMessage(); err != nil || !strings.Contains(string(raw), `\"<b>\": character '<'`) {
		t.Errorf("WebSocket publish to <b>: %s (%v)", raw, err)
	}
}

// rawRequest sends a request line as written (Go's client would clean the
// path) and returns the status line and the body.
func rawRequest(t *testing.T, e *env, method, path string) (string, string) {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(e.srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "%s %s HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx", method, path)
	br := bufio.NewReader(c)
	status, _ := br.ReadString('\n')
	var body strings.Builder
	inBody := false
	for {
		l, err := br.ReadString('\n')
		if inBody {
			body.WriteString(l)
		} else if l == "\r\n" {
			inBody = true
		}
		if err != nil {
			break
		}
	}
	return strings.TrimSpace(status), body.String()
}

// TestNonCanonicalPathsGetJSONErrors: "." and ".." segments and empty
// segments are answered with the documented JSON error, not with a bare
// redirect from Go's mux to another channel (issue 26).
func TestNonCanonicalPathsGetJSONErrors(t *testing.T) {
	e := newEnv(t, broker.MemoryOptions{}, server.Options{})
	for _, tc := range []struct{ method, path, status, code string }{
		{"POST", "/pub/../x", "400", "invalid_channel"},
		{"POST", "/pub/./x", "400", "invalid_channel"},
		{"POST", "/pub//x", "400", "invalid_channel"},
		{"POST", "/pub/%2E%2E/x", "400", "invalid_channel"},
		{"GET", "/sub/news/../x", "400", "invalid_channel"},
		{"GET", "/sub/news/./x?format=ndjson", "400", "invalid_channel"},
		{"GET", "/channels/a/../b", "400", "invalid_channel"},
		{"GET", "/stats/../healthz", "404", "not_found"},
		{"GET", "//healthz", "404", "not_found"},
	} {
		status, body := rawRequest(t, e, tc.method, tc.path)
		if !strings.Contains(status, " "+tc.status+" ") || !strings.Contains(body, `"code":"`+tc.code+`"`) {
			t.Errorf("%s %s: %s %s, want %s %s", tc.method, tc.path, status, body, tc.status, tc.code)
		}
	}
	// Nothing was published to x by any of them.
	if resp, body := e.do("GET", "/channels/x", nil); resp.StatusCode != 404 {
		t.Errorf("channel x after the requests: %d %s", resp.StatusCode, body)
	}
}

// TestSubscribeChannelLimits pins the two limits docs/security.md lists: one
// subscribe names at most 64 channels (invalid_channel, as a /sub/ path
// does), and a WebSocket holds at most --max-channels-per-conn (256)
// subscriptions in all (invalid_parameter).
func TestSubscribeChannelLimits(t *testing.T) {
	e := newEnv(t, broker.MemoryOptions{}, server.Options{})
	names := func(from, n int) string {
		var s []string
		for i := from; i < from+n; i++ {
			s = append(s, fmt.Sprintf(`"c%d"`, i))
		}
		return "[" + strings.Join(s, ",") + "]"
	}
	c := dialWS(t, e, "/ws")
	c.WriteMessage(websocket.TextMessage, []byte(`{"type":"subscribe","ref":"big","channels":`+names(0, 65)+`}`))
	if f := readFrame(t, c); f["ref"] != "big" || f["code"] != "invalid_channel" || !strings.Contains(fmt.Sprint(f["message"]), "64") {
		t.Fatalf("65 channels in one subscribe: %v", f)
	}
	var list []string
	for i := 0; i < 65; i++ {
		list = append(list, fmt.Sprintf("c%d", i))
	}
	if resp, body := e.do("GET", "/sub/"+strings.Join(list, ",")+"?poll=1ms", nil); resp.StatusCode != 400 || !strings.Contains(string(body), "invalid_channel") {
		t.Fatalf("65 channels in a /sub/ path: %d %s", resp.StatusCode, body)
	}
	for i := 0; i < 4; i++ {
		c.WriteMessage(websocket.TextMessage, []byte(fmt.Sprintf(`{"type":"subscribe","ref":"s%d","channels":%s}`, i, names(i*64, 64))))
		if f := readFrame(t, c); f["type"] != "subscribed" {
			t.Fatalf("subscriptions %d to %d: %v", i*64, i*64+63, f)
		}
	}
	c.WriteMessage(websocket.TextMessage, []byte(`{"type":"subscribe","ref":"one-more","channels":["c999"]}`))
	if f := readFrame(t, c); f["ref"] != "one-more" || f["code"] != "invalid_parameter" || !strings.Contains(fmt.Sprint(f["message"]), "256") {
		t.Fatalf("the 257th subscription: %v", f)
	}
}
