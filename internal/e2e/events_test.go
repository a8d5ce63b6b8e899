//go:build cgo && !nozmq

package e2e

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/pushctl/pushctl/internal/hooks"
)

const webhookSecret = "webhook-secret-for-the-e2e-tests-0123"

// lifecycleEvent is an event as a webhook body carries it.
type lifecycleEvent struct {
	Name         string `json:"name"`
	Channel      string `json:"channel"`
	UserID       string `json:"user_id"`
	ConnectionID string `json:"connection_id"`
	Transport    string `json:"transport"`
	Reason       string `json:"reason"`
	MessageSeq   uint64 `json:"message_seq"`
	Node         string `json:"node"`
	ReapedBy     string `json:"reaped_by"`
	TimeMs       int64  `json:"time_ms"`
	Seq          uint64 `json:"seq"`
	Epoch        string `json:"epoch"`
}

// receiver is the application's webhook endpoint: it checks every body's
// signature, keeps the events in the order they came, and can be down
// (503) for a while.
type receiver struct {
	t    *testing.T
	srv  *httptest.Server
	mu   sync.Mutex
	evs  []lifecycleEvent
	bad  []string
	down bool
	more chan struct{}
}

func newReceiver(t *testing.T) *receiver {
	rc := &receiver{t: t, more: make(chan struct{}, 1)}
	rc.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rc.mu.Lock()
		defer rc.mu.Unlock()
		if rc.down {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		if err := hooks.Verify([]byte(webhookSecret), r.Header.Get(hooks.SignatureHeader), body, time.Now()); err != nil {
			rc.bad = append(rc.bad, fmt.Sprintf("signature %v: %s", err, body))
		}
		var b struct {
			TimeMs int64            `json:"time_ms"`
			Events []lifecycleEvent `json:"events"`
		}
		if err := json.Unmarshal(body, &b); err != nil || b.TimeMs == 0 || len(b.Events) == 0 {
			rc.bad = append(rc.bad, fmt.Sprintf("body %v: %s", err, body))
		}
		rc.evs = append(rc.evs, b.Events...)
		select {
		case rc.more <- struct{}{}:
		default:
		}
	}))
	t.Cleanup(rc.srv.Close)
	return rc
}

func (rc *receiver) setDown(down bool) {
	rc.mu.Lock()
	rc.down = down
	rc.mu.Unlock()
}

// channel returns the events of one channel ("" for connections) so far.
func (rc *receiver) channel(ch string) []lifecycleEvent {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	var out []lifecycleEvent
	for _, ev := range rc.evs {
		if ev.Channel == ch {
			out = append(out, ev)
		}
	}
	return out
}

// waitFor waits until the channel's events include one named name (of
// user, when given), and returns the channel's events.
func (rc *receiver) waitFor(ch, name, user string, timeout time.Duration) []lifecycleEvent {
	rc.t.Helper()
	deadline := time.After(timeout)
	for {
		evs := rc.channel(ch)
		for _, ev := range evs {
			if ev.Name == name && (user == "" || ev.UserID == user) {
				return evs
			}
		}
		select {
		case <-rc.more:
		case <-deadline:
			rc.t.Fatalf("no %s %s of %q within %s; the channel's events: %+v", ch, name, user, timeout, evs)
		}
	}
}

// waitCount waits until a channel has n events and returns them.
func (rc *receiver) waitCount(ch string, n int, timeout time.Duration) []lifecycleEvent {
	rc.t.Helper()
	deadline := time.After(timeout)
	for {
		evs := rc.channel(ch)
		if len(evs) >= n {
			return evs
		}
		select {
		case <-rc.more:
		case <-deadline:
			rc.t.Fatalf("%s: %d events within %s, want %d: %v", ch, len(evs), timeout, n, names(evs))
		}
	}
}

// names lists events as "name:user".
func names(evs []lifecycleEvent) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		out[i] = ev.Name
		if ev.UserID != "" {
			out[i] += ":" + ev.UserID
		}
	}
	return out
}

// inOrder checks that a channel's events came once each, numbered 1, 2,
// 3… in one epoch, except where skip says a number was cancelled.
func inOrder(t *testing.T, what string, evs []lifecycleEvent, skipped int) {
	t.Helper()
	if len(evs) == 0 {
		t.Fatalf("%s: no events", what)
	}
	gaps := 0
	for i := 1; i < len(evs); i++ {
		if evs[i].Epoch != evs[0].Epoch {
			t.Fatalf("%s: epoch changed: %+v", what, evs)
		}
		switch d := int(evs[i].Seq) - int(evs[i-1].Seq); {
		case d <= 0:
			t.Fatalf("%s: event %d (seq %d) came after seq %d (twice or out of order): %v", what, i, evs[i].Seq, evs[i-1].Seq, names(evs))
		case d > 1:
			gaps += d - 1
		}
	}
	if gaps != skipped {
		t.Fatalf("%s: %d sequence numbers missing, want %d: %+v", what, gaps, skipped, evs)
	}
}

// eventsWorld is one node with webhooks to rc and a token secret; it
// returns the broker's URL and a token maker.
func eventsWorld(t *testing.T, rc *receiver, args ...string) (*proc, string, func(args ...string) string) {
	env, tok := eventsTokens(t)
	p, url := eventsNode(t, rc, env, args...)
	return p, url, tok
}

// eventsTokens makes a token secret: the environment that gives it to
// serve, and a token maker.
func eventsTokens(t *testing.T) ([]string, func(args ...string) string) {
	secret, _, _ := run(t, "", "token", "secret")
	env := []string{"PUSHCTL_TOKEN_SECRET=" + strings.TrimSpace(secret)}
	return env, func(args ...string) string {
		out, errOut, code := runEnv(t, env, append([]string{"token", "create", "--ttl", "1h"}, args...)...)
		if code != 0 {
			t.Fatalf("token create: %s", errOut)
		}
		return strings.TrimSpace(out)
	}
}

// eventsNode is a node with webhooks to rc.
func eventsNode(t *testing.T, rc *receiver, env []string, args ...string) (*proc, string) {
	return serveEnv(t, env, append([]string{"--webhook", rc.srv.URL + "/hook", "--webhook-secret", webhookSecret}, args...)...)
}

func dialWS(t *testing.T, base, path, token string) *websocket.Conn {
	t.Helper()
	h := http.Header{}
	if token != "" {
		h.Set("Authorization", "Bearer "+token)
	}
	c, resp, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(base, "http")+path, h)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial %s: %v (%d)", path, err, status)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestLifecycleEventsOneNode: a WebSocket, an SSE and a Pusher client
// subscribe, join, leave and disconnect; the webhook receiver gets each
// event once, in order per channel, signed; `pushctl sub '$events.>'`
// reads the same events; a reconnect within the delay makes no
// vacated/occupied pair; clients can neither publish on nor (without a
// grant naming them) read the event channels.
func TestLifecycleEventsOneNode(t *testing.T) {
	rc := newReceiver(t)
	_, url, tok := eventsWorld(t, rc, "--webhook-delay", "1500ms", "--presence-grace", "0",
		"--pusher-app", "4243:evkey:events-pusher-secret-0123456789")
	admin := tok("--subscribe", "$events.>", "--subject", "ops")
	alice := tok("--subscribe", ">", "--publish", ">", "--subject", "alice", "--member", "alice")
	bob := tok("--subscribe", ">", "--subject", "bob")

	// Reading the event channels needs a grant that names them.
	if _, errOut, code := run(t, "", "sub", "-s", url, "--token", bob, "--count", "1", "--timeout", "5s", "$events.>"); code == 0 || !strings.Contains(errOut, "forbidden") {
		t.Fatalf("bob (grant >) reading $events: code %d %s", code, errOut)
	}
	if _, errOut, code := run(t, "", "pub", "-s", url, "--token", alice, "$events.connections", "forged"); code == 0 || !strings.Contains(errOut, "forbidden") {
		t.Fatalf("alice publishing on $events.connections: code %d %s", code, errOut)
	}
	// A subscriber of ">" must never see the broker's own channels.
	everything := dialWS(t, url, "/sub/>", bob)

	// Alice on WebSocket: subscribe and join room.a.
	ws := dialWS(t, url, "/ws", alice)
	if got := wsReply(t, ws, map[string]any{"type": "subscribe", "ref": ref(), "channel": "room.a"}); got != "ok" {
		t.Fatalf("alice subscribing: %s", got)
	}
	rc.waitFor("room.a", "subscribed", "alice", 20*time.Second)
	if got := wsReply(t, ws, map[string]any{"type": "join", "ref": ref(), "channel": "room.a"}); got != "ok" {
		t.Fatalf("alice joining: %s", got)
	}
	rc.waitFor("room.a", "member_added", "alice", 20*time.Second)
	// Bob on SSE.
	req, _ := http.NewRequest("GET", url+"/sub/room.a", nil)
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Authorization", "Bearer "+bob)
	sse, err := http.DefaultClient.Do(req)
	if err != nil || sse.StatusCode != 200 {
		t.Fatalf("SSE: %v", err)
	}
	rc.waitFor("room.a", "subscribed", "bob", 20*time.Second)
	// A Pusher client on room.a too.
	pc := dialWS(t, url, "/app/evkey?protocol=7", "")
	pc.WriteJSON(map[string]any{"event": "pusher:subscribe", "data": map[string]string{"channel": "room.a"}})
	waitPusher(t, pc, "pusher_internal:subscription_succeeded")
	// Bob leaves, then the Pusher client, then alice leaves presence and
	// disconnects.
	sse.Body.Close()
	rc.waitFor("room.a", "unsubscribed", "bob", 20*time.Second)
	pc.Close()
	rc.waitCount("room.a", 7, 20*time.Second) // its unsubscribed
	if got := wsReply(t, ws, map[string]any{"type": "leave", "ref": ref(), "channel": "room.a"}); got != "ok" {
		t.Fatalf("alice leaving: %s", got)
	}
	rc.waitFor("room.a", "member_removed", "alice", 20*time.Second)
	ws.Close()
	evs := rc.waitFor("room.a", "channel_vacated", "", 20*time.Second)
	want := []string{"channel_occupied", "subscribed:alice", "member_added:alice", "subscribed:bob", "subscribed",
		"unsubscribed:bob", "unsubscribed", "member_removed:alice", "unsubscribed:alice", "channel_vacated"}
	if strings.Join(names(evs), " ") != strings.Join(want, " ") {
		t.Fatalf("room.a events:\n got %v\nwant %v", names(evs), want)
	}
	inOrder(t, "room.a", evs, 0)

	// A reconnect within the delay: no vacated/occupied pair.
	c1 := dialWS(t, url, "/sub/room.b", bob)
	rc.waitFor("room.b", "subscribed", "bob", 20*time.Second)
	c1.Close()
	// The unsubscribe is sent, the vacated after it waits; a new
	// subscriber comes within the delay.
	rc.waitFor("room.b", "unsubscribed", "bob", 20*time.Second)
	c2 := dialWS(t, url, "/sub/room.b", alice)
	rc.waitFor("room.b", "subscribed", "alice", 20*time.Second)
	c2.Close()
	evs = rc.waitFor("room.b", "channel_vacated", "", 20*time.Second)
	want = []string{"channel_occupied", "subscribed:bob", "unsubscribed:bob", "subscribed:alice", "unsubscribed:alice", "channel_vacated"}
	if strings.Join(names(evs), " ") != strings.Join(want, " ") {
		t.Fatalf("room.b events with a reconnect in the delay:\n got %v\nwant %v", names(evs), want)
	}
	inOrder(t, "room.b", evs, 2) // the cancelled pair's numbers

	// The connections' events: each connection opened once and closed
	// once, with the transport and the reason.
	conns := rc.channel("")
	inOrder(t, "connections", conns, 0)
	opened, closed := map[string]lifecycleEvent{}, map[string]lifecycleEvent{}
	for _, ev := range conns {
		m := opened
		if ev.Name == "connection_closed" {
			m = closed
		}
		if _, dup := m[ev.ConnectionID]; dup {
			t.Fatalf("%s of connection %s twice", ev.Name, ev.ConnectionID)
		}
		m[ev.ConnectionID] = ev
	}
	transports := map[string]bool{}
	for id, ev := range closed {
		if _, ok := opened[id]; !ok || ev.Reason == "" {
			t.Errorf("closed without an open or a reason: %+v", ev)
		}
		transports[ev.Transport] = true
	}
	for _, tr := range []string{"websocket", "sse", "pusher"} {
		if !transports[tr] {
			t.Errorf("no %s connection closed: %+v", tr, conns)
		}
	}

	// pushctl sub reads the same events, in the same order, from the
	// event channels' history (room.b's with the cancelled pair: the
	// channel has every event).
	out, errOut, code := run(t, "", "sub", "-s", url, "--token", admin, "--since", "all", "--count", "18", "--timeout", "20s", "$events.channel.>")
	if code != 0 {
		t.Fatalf("pushctl sub '$events.channel.>' --since all: %d %s", code, errOut)
	}
	fromSub := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		ch, data, _ := strings.Cut(line, "\t")
		var ev lifecycleEvent
		if err := json.Unmarshal([]byte(data), &ev); err != nil {
			t.Fatalf("pushctl sub line %q: %v", line, err)
		}
		fromSub[ch] = append(fromSub[ch], names([]lifecycleEvent{ev})[0])
	}
	if got, want := strings.Join(fromSub["$events.channel.room.a"], " "), strings.Join(names(rc.channel("room.a")), " "); got != want {
		t.Fatalf("pushctl sub $events.channel.room.a: %v, the webhook %v", got, want)
	}
	if got, want := strings.Join(fromSub["$events.channel.room.b"], " "), "channel_occupied subscribed:bob unsubscribed:bob channel_vacated channel_occupied subscribed:alice unsubscribed:alice channel_vacated"; got != want {
		t.Fatalf("pushctl sub $events.channel.room.b: %v, want %v", got, want)
	}
	rc.mu.Lock()
	bad := rc.bad
	rc.mu.Unlock()
	if len(bad) > 0 {
		t.Fatalf("bad webhook requests: %v", bad)
	}
	// The ">" subscriber got nothing of the event channels.
	everything.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	for {
		_, msg, err := everything.ReadMessage()
		if err != nil {
			break
		}
		if strings.Contains(string(msg), "$events") {
			t.Fatalf("a subscriber of > received %s", msg)
		}
	}
}

// waitPusher reads Pusher frames until one named event.
func waitPusher(t *testing.T, c *websocket.Conn, event string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	for {
		var f struct {
			Event string `json:"event"`
		}
		if err := c.ReadJSON(&f); err != nil {
			t.Fatalf("waiting for %s: %v", event, err)
		}
		if f.Event == event {
			return
		}
	}
}

// TestWebhookReceiverDownGetsEverythingAfter: events made while the
// receiver answers 503 arrive once it is back, once each and in order;
// with a queue bound of 3, what did not fit is counted as dropped.
func TestWebhookReceiverDownGetsEverythingAfter(t *testing.T) {
	rc := newReceiver(t)
	_, url, tok := eventsWorld(t, rc, "--webhook-delay", "0", "--webhook-retry", "2m")
	alice := tok("--subscribe", ">", "--subject", "alice")
	c := dialWS(t, url, "/sub/down.a", alice)
	rc.waitFor("down.a", "subscribed", "alice", 20*time.Second)
	rc.setDown(true)
	c.Close()
	for i := 0; i < 5; i++ {
		c := dialWS(t, url, "/sub/down."+strconv.Itoa(i), alice)
		c.Close()
	}
	// Down for several failed tries (the back-off grows to seconds).
	waitMetric(t, url, "pushctl_webhook_attempts_failed_total", 5, 30*time.Second)
	if n := len(rc.channel("down.a")); n != 2 {
		t.Fatalf("events arrived while down: %d", n)
	}
	rc.setDown(false)
	want := "channel_occupied subscribed:alice unsubscribed:alice channel_vacated"
	for _, ch := range []string{"down.a", "down.0", "down.1", "down.2", "down.3", "down.4"} {
		evs := rc.waitCount(ch, 4, 30*time.Second)
		if got := strings.Join(names(evs), " "); got != want {
			t.Fatalf("%s after the receiver came back: %s, want %s", ch, got, want)
		}
		inOrder(t, ch, evs, 0)
	}
	if d := metricValue(t, url, `pushctl_webhook_events_dropped_total`); d != 0 {
		t.Fatalf("dropped %v", d)
	}

	// A queue of 3: the drop is counted.
	rc2 := newReceiver(t)
	rc2.setDown(true)
	_, url2, tok2 := eventsWorld(t, rc2, "--webhook-delay", "0", "--webhook-queue", "3")
	bob := tok2("--subscribe", ">", "--subject", "bob")
	for i := 0; i < 4; i++ {
		c := dialWS(t, url2, "/sub/full."+strconv.Itoa(i), bob)
		c.Close()
	}
	waitMetric(t, url2, `pushctl_webhook_events_dropped_total{reason="queue_full"}`, 1, 20*time.Second)
}

// waitMetric polls /metrics until the samples named by prefix add up to
// at least want.
func waitMetric(t *testing.T, url, prefix string, want float64, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		got := metricValue(t, url, prefix)
		if got >= want {
			return
		}
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("%s = %v after %s, want at least %v", prefix, got, timeout, want)
		}
	}
}

var metricLine = regexp.MustCompile(`^(\S+) (\S+)$`)

// metricValue sums the /metrics samples whose name (with labels) begins
// with prefix.
func metricValue(t *testing.T, url, prefix string) float64 {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	sum := 0.0
	for _, l := range strings.Split(string(b), "\n") {
		m := metricLine.FindStringSubmatch(l)
		if m == nil || !strings.HasPrefix(m[1], prefix) {
			continue
		}
		v, _ := strconv.ParseFloat(m[2], 64)
		sum += v
	}
	return sum
}

// TestNamespaceWebhookAndPublishEvents: a namespace's webhook gets its
// channels' events, published ones included (publish-events=true), and
// nothing else: no connection events, no other channel's; without
// --events or a global webhook, other channels have no events at all.
func TestNamespaceWebhookAndPublishEvents(t *testing.T) {
	rc := newReceiver(t)
	_, url := serve(t, "--webhook-secret", webhookSecret, "--webhook-delay", "0",
		"--namespace", "name=orders,match=orders.>,publish-events=true,webhook="+rc.srv.URL+"/orders")
	c := dialWS(t, url, "/sub/orders.eu", "")
	rc.waitFor("orders.eu", "subscribed", "", 20*time.Second)
	for _, ch := range []string{"orders.eu", "news"} {
		if _, errOut, code := run(t, "", "pub", "-s", url, ch, "hello"); code != 0 {
			t.Fatalf("pub %s: %s", ch, errOut)
		}
	}
	evs := rc.waitFor("orders.eu", "published", "", 20*time.Second)
	c.Close()
	evs = rc.waitFor("orders.eu", "channel_vacated", "", 20*time.Second)
	if got := strings.Join(names(evs), " "); got != "channel_occupied subscribed published unsubscribed channel_vacated" {
		t.Fatalf("orders.eu: %s", got)
	}
	inOrder(t, "orders.eu", evs, 0)
	if evs[2].MessageSeq != 1 {
		t.Fatalf("published: %+v", evs[2])
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	for _, ev := range rc.evs {
		if ev.Channel != "orders.eu" {
			t.Fatalf("the orders webhook got %+v", ev)
		}
	}
	// news has no events: its event channel was never written.
	resp, err := http.Get(url + "/channels/" + "$events.channel.news")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("$events.channel.news: %s", resp.Status)
	}
}

// A Pusher presence subscription is a subscription and a join in one
// step: it is told as both (subscribed, member_added), and its end as
// both, once each and in order.
func TestPusherPresenceSubscriptionEvents(t *testing.T) {
	rc := newReceiver(t)
	const secret = "events-presence-secret-0123456789"
	_, url, _ := eventsWorld(t, rc, "--webhook-delay", "0", "--presence-grace", "0",
		"--pusher-app", "4244:preskey:"+secret)
	pc := dialWS(t, url, "/app/preskey?protocol=7", "")
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
	const channel = "presence-lobby"
	channelData := `{"user_id":"carol"}`
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(conn.SocketID + ":" + channel + ":" + channelData))
	pc.WriteJSON(map[string]any{"event": "pusher:subscribe", "data": map[string]string{
		"channel": channel, "auth": "preskey:" + hex.EncodeToString(m.Sum(nil)), "channel_data": channelData}})
	waitPusher(t, pc, "pusher_internal:subscription_succeeded")
	rc.waitFor(channel, "member_added", "carol", 20*time.Second)
	pc.Close()
	evs := rc.waitFor(channel, "channel_vacated", "", 20*time.Second)
	evs = rc.waitFor(channel, "member_removed", "carol", 20*time.Second)
	count := map[string]int{}
	for _, n := range names(evs) {
		count[n]++
	}
	got := strings.Join(names(evs), " ")
	for _, want := range []string{"channel_occupied", "subscribed", "member_added:carol", "member_removed:carol", "unsubscribed", "channel_vacated"} {
		if count[want] != 1 {
			t.Fatalf("%s events: %s; want %s once", channel, got, want)
		}
	}
	// The member leaves after the connection's subscriptions end (its
	// presence outlives them by --presence-grace).
	if !strings.HasPrefix(got, "channel_occupied subscribed member_added:carol unsubscribed") {
		t.Fatalf("%s events out of order: %s", channel, got)
	}
	inOrder(t, channel, evs, 0)
}
