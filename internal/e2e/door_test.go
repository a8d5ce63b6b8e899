//go:build cgo && !nozmq

package e2e

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/pebbe/zmq4"
	"github.com/pushctl/pushctl/internal/auth"
)

// The one door, seen from outside: every way in refuses the same things
// with the same code. A broker with tokens, a publish rate of one per 100 s
// (burst 1), a 1000-byte message limit, a Pusher app and a ZeroMQ SUB
// endpoint; each case runs against every door.

const doorSecret = "door-secret-0123456789-0123456789-abcdef"

var doorTokenSeq atomic.Int64

// doorToken is a token of its own (its own rate bucket) granting pattern.
func doorToken(t *testing.T, pattern string, member string) string {
	t.Helper()
	g := auth.Grants{Publish: []string{pattern}, Subscribe: []string{pattern}}
	if member != "" {
		g.Presence = &auth.Presence{ID: member}
	}
	tok, err := auth.Issue(g, time.Hour, "", "door-"+strconv.FormatInt(doorTokenSeq.Add(1), 10), []byte(doorSecret), nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// doorCase is what a publishing door is asked to do.
type doorCase struct {
	name    string
	token   func(t *testing.T) string // "" for none
	channel string
	size    int  // bytes of data
	twice   bool // publish twice; the second is the one checked
	want    string
}

func doorCases() []doorCase {
	good := func(t *testing.T) string { return doorToken(t, "door.>", "m1") }
	return []doorCase{
		{name: "no token", token: func(*testing.T) string { return "" }, channel: "door.a", size: 10, want: "token_missing"},
		{name: "wrong grant", token: func(t *testing.T) string { return doorToken(t, "other.>", "m1") }, channel: "door.a", size: 10, want: "forbidden"},
		{name: "invalid name", token: good, channel: "door..a", size: 10, want: "invalid_channel"},
		{name: "oversized", token: good, channel: "door.a", size: 2000, want: "message_too_large"},
		{name: "over the rate", token: good, channel: "door.a", size: 10, twice: true, want: "rate_limited"},
	}
}

type doorEnv struct {
	url, zmqIn string
}

func startDoorBroker(t *testing.T) doorEnv {
	t.Helper()
	p, u := serve(t, "--token-secret", doorSecret, "--publish-rate", "0.01", "--publish-burst", "1",
		"--max-message-size", "1000", "--pusher-app", pAppID+":"+pKey+":"+pSecret, "--zmq-in", "tcp://127.0.0.1:*")
	var in string
	for _, l := range strings.Split(p.Stderr(), "\n") {
		if a, ok := strings.CutPrefix(l, "pushctl: ZeroMQ in on "); ok {
			in = a
		}
	}
	if in == "" {
		t.Fatalf("no ZeroMQ in endpoint:\n%s", p.Stderr())
	}
	return doorEnv{url: u, zmqIn: in}
}

const (
	pAppID  = "4242"
	pKey    = "door-key"
	pSecret = "door-pusher-secret-0123456789"
)

// codeOf returns the stable code of an HTTP error body.
func codeOf(t *testing.T, body []byte) string {
	t.Helper()
	var e struct {
		Error struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	if err := json.Unmarshal(body, &e); err != nil || e.Error.Code == "" {
		t.Fatalf("not an error body: %q", body)
	}
	return e.Error.Code
}

func post(t *testing.T, u, token, body string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest("POST", u, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// firstLineError is the code of the first NDJSON reply line with an
// error, after skip lines.
func firstLineError(t *testing.T, status int, body []byte, skip int) string {
	t.Helper()
	if status != 200 {
		return codeOf(t, body)
	}
	sc := bufio.NewScanner(bytes.NewReader(body))
	for i := 0; sc.Scan(); i++ {
		if i < skip {
			continue
		}
		var l struct {
			Error *struct {
				Code string `json:"code"`
			} `json:"error"`
		}
		json.Unmarshal(sc.Bytes(), &l)
		if l.Error != nil {
			return l.Error.Code
		}
		return "ok"
	}
	t.Fatalf("no reply line %d in %q", skip, body)
	return ""
}

func wsDial(t *testing.T, base, path, token string) *websocket.Conn {
	t.Helper()
	u := "ws" + strings.TrimPrefix(base, "http") + path
	if token != "" {
		u += "?token=" + url.QueryEscape(token)
	}
	c, resp, err := websocket.DefaultDialer.Dial(u, nil)
	if err != nil {
		if resp != nil {
			b, _ := io.ReadAll(resp.Body)
			t.Fatalf("dial %s: %v: %s", path, err, b)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// wsReply sends frame and returns the code of the reply with its ref
// ("ok" for any reply that is not an error).
func wsReply(t *testing.T, c *websocket.Conn, frame map[string]any) string {
	t.Helper()
	if err := c.WriteJSON(frame); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	for {
		var f struct {
			Type string `json:"type"`
			Ref  string `json:"ref"`
			Code string `json:"code"`
		}
		if err := c.ReadJSON(&f); err != nil {
			t.Fatalf("reading the reply to %v: %v", frame, err)
		}
		if f.Ref != frame["ref"] {
			continue
		}
		if f.Type == "error" {
			return f.Code
		}
		return "ok"
	}
}

var refSeq atomic.Int64

func ref() string { return "r" + strconv.FormatInt(refSeq.Add(1), 10) }

func TestEveryPublishDoorRefusesAlike(t *testing.T) {
	e := startDoorBroker(t)
	data := func(n int) string { return strings.Repeat("x", n) }
	doors := map[string]func(t *testing.T, c doorCase, tok string) string{
		"http single": func(t *testing.T, c doorCase, tok string) string {
			status, b := post(t, e.url+"/pub/"+c.channel, tok, data(c.size))
			if c.twice {
				status, b = post(t, e.url+"/pub/"+c.channel, tok, data(c.size))
			}
			if status == 200 {
				return "ok"
			}
			return codeOf(t, b)
		},
		"http lines": func(t *testing.T, c doorCase, tok string) string {
			body, skip := data(c.size)+"\n", 0
			if c.twice {
				body, skip = body+body, 1
			}
			status, b := post(t, e.url+"/pub/"+c.channel+"?lines=1", tok, body)
			return firstLineError(t, status, b, skip)
		},
		"http batch": func(t *testing.T, c doorCase, tok string) string {
			line, _ := json.Marshal(map[string]string{"channel": c.channel, "data": data(c.size)})
			body, skip := string(line)+"\n", 0
			if c.twice {
				body, skip = body+body, 1
			}
			status, b := post(t, e.url+"/pub", tok, body)
			return firstLineError(t, status, b, skip)
		},
		"websocket publish frame": func(t *testing.T, c doorCase, tok string) string {
			ws := wsDial(t, e.url, "/ws", tok)
			f := func() map[string]any {
				return map[string]any{"type": "publish", "ref": ref(), "channel": c.channel, "data": data(c.size)}
			}
			if c.twice {
				wsReply(t, ws, f())
			}
			return wsReply(t, ws, f())
		},
		"presence join": func(t *testing.T, c doorCase, tok string) string {
			ws := wsDial(t, e.url, "/ws", tok)
			info, _ := json.Marshal(data(c.size)) // oversized: the member's info
			f := func(ch string) map[string]any {
				return map[string]any{"type": "join", "ref": ref(), "channel": ch, "info": json.RawMessage(info)}
			}
			if c.twice {
				wsReply(t, ws, f(c.channel+".first"))
			}
			return wsReply(t, ws, f(c.channel))
		},
	}
	for _, c := range doorCases() {
		for name, door := range doors {
			t.Run(name+"/"+c.name, func(t *testing.T) {
				if got := door(t, c, c.token(t)); got != c.want {
					t.Errorf("%s, %s: got %s, want %s", name, c.name, got, c.want)
				}
			})
		}
	}
}

// The subscribe doors: /sub in each of its encodings and as a WebSocket
// upgrade, and the subscribe frame on /ws.
func TestEverySubscribeDoorRefusesAlike(t *testing.T) {
	e := startDoorBroker(t)
	get := func(t *testing.T, path, tok string, hdr map[string]string) string {
		req, _ := http.NewRequest("GET", e.url+path, nil)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode == 200 || resp.StatusCode == 101 {
			return "ok"
		}
		b, _ := io.ReadAll(resp.Body)
		return codeOf(t, b)
	}
	doors := map[string]func(t *testing.T, ch, tok string) string{
		"sse": func(t *testing.T, ch, tok string) string {
			return get(t, "/sub/"+ch, tok, map[string]string{"Accept": "text/event-stream"})
		},
		"ndjson":    func(t *testing.T, ch, tok string) string { return get(t, "/sub/"+ch+"?format=ndjson", tok, nil) },
		"raw":       func(t *testing.T, ch, tok string) string { return get(t, "/sub/"+ch+"?format=raw", tok, nil) },
		"long-poll": func(t *testing.T, ch, tok string) string { return get(t, "/sub/"+ch+"?poll=1ms", tok, nil) },
		"websocket upgrade": func(t *testing.T, ch, tok string) string {
			u := "ws" + strings.TrimPrefix(e.url, "http") + "/sub/" + ch
			h := http.Header{}
			if tok != "" {
				h.Set("Authorization", "Bearer "+tok)
			}
			c, resp, err := websocket.DefaultDialer.Dial(u, h)
			if err == nil {
				c.Close()
				return "ok"
			}
			if resp == nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			return codeOf(t, b)
		},
		"subscribe frame": func(t *testing.T, ch, tok string) string {
			ws := wsDial(t, e.url, "/ws", tok)
			return wsReply(t, ws, map[string]any{"type": "subscribe", "ref": ref(), "channels": []string{ch}})
		},
		// A durable consumer's fetch and consume frame are subscriptions.
		"consumer fetch": func(t *testing.T, ch, tok string) string {
			status, body := post(t, e.url+"/consumers/"+ref()+"/fetch?channel="+url.QueryEscape(ch), tok, "")
			if status == 200 {
				return "ok"
			}
			return codeOf(t, body)
		},
		"consume frame": func(t *testing.T, ch, tok string) string {
			ws := wsDial(t, e.url, "/ws", tok)
			return wsReply(t, ws, map[string]any{"type": "consume", "ref": ref(), "consumer": ref(), "channel": ch})
		},
	}
	for _, c := range doorCases() {
		if c.size > 1000 || c.twice {
			continue // subscribing carries no data and is not rate limited
		}
		for name, door := range doors {
			t.Run(name+"/"+c.name, func(t *testing.T) {
				if got := door(t, c.channel, c.token(t)); got != c.want {
					t.Errorf("%s, %s: got %s, want %s", name, c.name, got, c.want)
				}
			})
		}
	}
}

// Pusher callers are authenticated by the Pusher protocol (the app's key
// and secret, and channel signatures), not by pushctl tokens; past that,
// their publishes meet the same door: size, rate and names.
func TestPusherDoorsRefuseAlike(t *testing.T) {
	e := startDoorBroker(t)
	c := wsDial(t, e.url, "/app/"+pKey+"?protocol=7", "")
	read := func() (event string, data json.RawMessage) {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		var f struct {
			Event string          `json:"event"`
			Data  json.RawMessage `json:"data"`
		}
		if err := c.ReadJSON(&f); err != nil {
			t.Fatal(err)
		}
		return f.Event, f.Data
	}
	expect := func(event string) json.RawMessage {
		t.Helper()
		for {
			ev, d := read()
			if ev == event {
				return d
			}
			if ev == "pusher:error" || ev == "pusher:subscription_error" {
				t.Fatalf("want %s, got %s %s", event, ev, d)
			}
		}
	}
	var est struct {
		SocketID string `json:"socket_id"`
	}
	d := expect("pusher:connection_established")
	var s string
	json.Unmarshal(d, &s)
	json.Unmarshal([]byte(s), &est)
	sign := func(secret, ch string) string {
		m := hmac.New(sha256.New, []byte(secret))
		m.Write([]byte(est.SocketID + ":" + ch))
		return pKey + ":" + hex.EncodeToString(m.Sum(nil))
	}
	subErr := func(ch, authz string) string {
		t.Helper()
		c.WriteJSON(map[string]any{"event": "pusher:subscribe", "data": map[string]string{"channel": ch, "auth": authz}})
		for {
			ev, d := read()
			if ev == "pusher_internal:subscription_succeeded" {
				return "ok"
			}
			if ev == "pusher:subscription_error" {
				var e struct {
					Type   string `json:"type"`
					Status int    `json:"status"`
				}
				json.Unmarshal(d, &e)
				return fmt.Sprintf("%s %d", e.Type, e.Status)
			}
		}
	}
	// Subscribing: no signature and a signature by another secret are
	// Pusher's 401 (its token_missing and forbidden); a bad name its 400.
	if got := subErr("private-door", ""); got != "AuthError 401" {
		t.Errorf("no signature: %s", got)
	}
	if got := subErr("private-door", sign("another-secret", "private-door")); got != "AuthError 401" {
		t.Errorf("wrong signature: %s", got)
	}
	if got := subErr("private-door bad", sign(pSecret, "private-door bad")); got != "InvalidChannel 400" {
		t.Errorf("invalid name: %s", got)
	}
	if got := subErr("private-door", sign(pSecret, "private-door")); got != "ok" {
		t.Fatalf("subscribing: %s", got)
	}
	// Client events: over the size limit, then over the rate.
	clientEvent := func(n int) (int, string) {
		t.Helper()
		c.WriteJSON(map[string]any{"event": "client-x", "channel": "private-door", "data": map[string]string{"x": strings.Repeat("y", n)}})
		// A client event that is published has no reply: a ping marks
		// the end of what the event caused.
		c.WriteJSON(map[string]any{"event": "pusher:ping", "data": map[string]string{}})
		var code int
		var msg string
		for {
			ev, d := read()
			if ev == "pusher:pong" {
				return code, msg
			}
			if ev == "pusher:error" {
				var e struct {
					Code    *int   `json:"code"`
					Message string `json:"message"`
				}
				json.Unmarshal(d, &e)
				if e.Code != nil {
					code = *e.Code
				}
				msg = e.Message
			}
		}
	}
	if _, msg := clientEvent(2000); !strings.Contains(msg, "message_too_large") {
		t.Errorf("oversized client event: %q, want message_too_large", msg)
	}
	clientEvent(10)
	if code, msg := clientEvent(10); code != 4301 || !strings.Contains(msg, "publishing faster than") {
		t.Errorf("client event over the rate: %d %q, want 4301 from the publish rate", code, msg)
	}
	// The REST API: unsigned and wrongly signed are 401; then the same
	// codes as every other door.
	trigger := func(secret, ch string, n int) (int, string) {
		t.Helper()
		body, _ := json.Marshal(map[string]any{"name": "ev", "channel": ch, "data": strings.Repeat("z", n)})
		path := "/apps/" + pAppID + "/events"
		q := url.Values{}
		if secret != "" {
			sum := md5.Sum(body)
			q.Set("auth_key", pKey)
			q.Set("auth_timestamp", strconv.FormatInt(time.Now().Unix(), 10))
			q.Set("auth_version", "1.0")
			q.Set("body_md5", hex.EncodeToString(sum[:]))
			keys := make([]string, 0, len(q))
			for k := range q {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			parts := make([]string, len(keys))
			for i, k := range keys {
				parts[i] = k + "=" + q.Get(k)
			}
			m := hmac.New(sha256.New, []byte(secret))
			m.Write([]byte("POST\n" + path + "\n" + strings.Join(parts, "&")))
			q.Set("auth_signature", hex.EncodeToString(m.Sum(nil)))
		}
		resp, err := http.Post(e.url+path+"?"+q.Encode(), "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode == 200 {
			return 200, "ok"
		}
		var eb struct {
			Error struct {
				Code string `json:"code"`
			} `json:"error"`
		}
		json.Unmarshal(b, &eb)
		return resp.StatusCode, eb.Error.Code
	}
	if st, _ := trigger("", "door", 10); st != 401 {
		t.Errorf("unsigned trigger: HTTP %d, want 401", st)
	}
	if st, _ := trigger("another-secret", "door", 10); st != 401 {
		t.Errorf("wrongly signed trigger: HTTP %d, want 401", st)
	}
	if _, code := trigger(pSecret, "door bad", 10); code != "invalid_channel" {
		t.Errorf("trigger to an invalid name: %s", code)
	}
	if _, code := trigger(pSecret, "door", 2000); code != "message_too_large" {
		t.Errorf("oversized trigger: %s", code)
	}
	trigger(pSecret, "door", 10)
	if _, code := trigger(pSecret, "door", 10); code != "rate_limited" {
		t.Errorf("trigger over the rate: %s", code)
	}
}

// ZeroMQ ingest is the operator's own endpoint (no tokens, no rate), but
// what comes in is held to the same names and size: refused messages are
// counted, never published.
func TestZMQIngestDoor(t *testing.T) {
	e := startDoorBroker(t)
	admin := doorToken(t, ">", "")
	stats := func() map[string]float64 {
		req, _ := http.NewRequest("GET", e.url+"/stats", nil)
		req.Header.Set("Authorization", "Bearer "+admin)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		m := map[string]float64{}
		json.NewDecoder(resp.Body).Decode(&m)
		return m
	}
	pub, err := zmq4.NewSocket(zmq4.PUB)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	pub.SetLinger(0)
	if err := pub.Connect(e.zmqIn); err != nil {
		t.Fatal(err)
	}
	// send repeats a message until counter grows: a PUB socket drops what
	// it sends before the subscription reaches it.
	send := func(ch string, n int, counter string) {
		t.Helper()
		before := stats()[counter]
		deadline := time.Now().Add(20 * time.Second)
		for time.Now().Before(deadline) {
			pub.SendMessage(ch, strings.Repeat("q", n))
			poll := time.Now().Add(200 * time.Millisecond)
			for time.Now().Before(poll) {
				if stats()[counter] > before {
					return
				}
			}
		}
		t.Fatalf("%s (%d bytes) never counted in %s: %v", ch, n, counter, stats())
	}
	send("door.z", 10, "zmq_in_published")
	send("door.z", 2000, "zmq_in_refused")
	send("door..z", 10, "zmq_in_malformed")
	// Nothing refused reached the channel: only the small messages are in it.
	req, _ := http.NewRequest("GET", e.url+"/sub/door.z?since=all&poll=1ms&format=ndjson", nil)
	req.Header.Set("Authorization", "Bearer "+admin)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if bytes.Contains(b, []byte(strings.Repeat("q", 1001))) {
		t.Errorf("an oversized ZeroMQ message was published: %.200s", b)
	}
}
