package server_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/pusher"
	"github.com/pushctl/pushctl/internal/server"
	pushersdk "github.com/pusher/pusher-http-go/v5"
)

const (
	pAppID  = "4242"
	pKey    = "app-key"
	pSecret = "app-secret-0123456789"
)

func pusherApp(t *testing.T, opts string) pusher.App {
	t.Helper()
	a, err := pusher.ParseApp(pAppID + ":" + pKey + ":" + pSecret + opts)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func newPusherEnv(t *testing.T, so server.Options, appOpts string) (*env, *pushersdk.Client) {
	so.PusherApps = []pusher.App{pusherApp(t, appOpts)}
	e := newEnv(t, broker.MemoryOptions{}, so)
	sdk := &pushersdk.Client{AppID: pAppID, Key: pKey, Secret: pSecret, Host: strings.TrimPrefix(e.srv.URL, "http://")}
	return e, sdk
}

type pframe struct {
	Event   string          `json:"event"`
	Channel string          `json:"channel"`
	Data    json.RawMessage `json:"data"`
	UserID  string          `json:"user_id"`
}

// str returns the frame's data as the string Pusher sends it in.
func (f pframe) str(t *testing.T) string {
	t.Helper()
	var s string
	if err := json.Unmarshal(f.Data, &s); err != nil {
		t.Fatalf("%s: data %s is not a JSON string", f.Event, f.Data)
	}
	return s
}

type pclient struct {
	t        *testing.T
	c        *websocket.Conn
	socketID string
}

func pread(t *testing.T, c *websocket.Conn) pframe {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, b, err := c.ReadMessage()
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	var f pframe
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatalf("frame %s: %v", b, err)
	}
	return f
}

var socketIDRE = regexp.MustCompile(`^\d+\.\d+$`)

func pdial(t *testing.T, e *env) *pclient {
	t.Helper()
	c := dialWS(t, e, "/app/"+pKey+"?protocol=7&client=js&version=8.4.0")
	f := pread(t, c)
	if f.Event != "pusher:connection_established" {
		t.Fatalf("first frame: %+v", f)
	}
	var d struct {
		SocketID        string `json:"socket_id"`
		ActivityTimeout int    `json:"activity_timeout"`
	}
	if err := json.Unmarshal([]byte(f.str(t)), &d); err != nil || !socketIDRE.MatchString(d.SocketID) || d.ActivityTimeout != 120 {
		t.Fatalf("connection_established data %s (%v)", f.Data, err)
	}
	return &pclient{t: t, c: c, socketID: d.SocketID}
}

func (p *pclient) send(event string, data any, channel string) {
	p.t.Helper()
	f := map[string]any{"event": event, "data": data}
	if channel != "" {
		f["channel"] = channel
	}
	if err := p.c.WriteJSON(f); err != nil {
		p.t.Fatal(err)
	}
}

func (p *pclient) read() pframe { p.t.Helper(); return pread(p.t, p.c) }

// expect reads the next frame and checks its event and channel.
func (p *pclient) expect(event, channel string) pframe {
	p.t.Helper()
	f := p.read()
	if f.Event != event || f.Channel != channel {
		p.t.Fatalf("got %s on %q (%s), want %s on %q", f.Event, f.Channel, f.Data, event, channel)
	}
	return f
}

// subscribe subscribes with the auth the SDK computes, and returns the
// subscription_succeeded data.
func (p *pclient) subscribe(sdk *pushersdk.Client, channel string, member *pushersdk.MemberData) string {
	p.t.Helper()
	data := map[string]any{"channel": channel}
	params := []byte("socket_id=" + p.socketID + "&channel_name=" + url.QueryEscape(channel))
	var resp []byte
	var err error
	switch {
	case member != nil:
		resp, err = sdk.AuthorizePresenceChannel(params, *member)
	case strings.HasPrefix(channel, "private-"):
		resp, err = sdk.AuthorizePrivateChannel(params)
	}
	if err != nil {
		p.t.Fatal(err)
	}
	if resp != nil {
		var a map[string]string
		json.Unmarshal(resp, &a)
		data["auth"] = a["auth"]
		if cd, ok := a["channel_data"]; ok {
			data["channel_data"] = cd
		}
	}
	p.send("pusher:subscribe", data, "")
	return p.expect("pusher_internal:subscription_succeeded", channel).str(p.t)
}

// TestPusherPublicChannel: a Pusher client connects, subscribes, gets
// events triggered by the Pusher Go SDK and by pushctl publishers, and
// pings; refused connections get Pusher's close codes.
func TestPusherPublicChannel(t *testing.T) {
	e, sdk := newPusherEnv(t, server.Options{}, "")
	p := pdial(t, e)
	if got := p.subscribe(sdk, "chat", nil); got != "{}" {
		t.Fatalf("subscription_succeeded data %q", got)
	}
	if err := sdk.Trigger("chat", "greet", map[string]string{"hello": "world"}); err != nil {
		t.Fatal(err)
	}
	if f := p.expect("greet", "chat"); f.str(t) != `{"hello":"world"}` {
		t.Fatalf("greet data %s", f.Data)
	}
	// A pushctl publish on the same channel, and what pushctl subscribers
	// see of the SDK's event.
	e.publish("chat", "plain text", "X-Pushctl-Event", "note")
	if f := p.expect("note", "chat"); f.str(t) != "plain text" {
		t.Fatalf("note data %s", f.Data)
	}
	resp, body := e.do("GET", "/sub/chat?last=5&poll=0s", nil)
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"event":"greet","data":{"hello":"world"}`) {
		t.Fatalf("pushctl replay of chat: %d %s", resp.StatusCode, body)
	}
	p.send("pusher:ping", map[string]any{}, "")
	p.expect("pusher:pong", "")

	for _, tc := range []struct {
		path string
		code int
	}{
		{"/app/nope?protocol=7", pusher.CloseAppNotFound},
		{"/app/" + pKey, pusher.CloseNoProtocol},
		{"/app/" + pKey + "?protocol=99", pusher.CloseUnsupportedProto},
	} {
		c := dialWS(t, e, tc.path)
		// A frame sent at once is not executed for a refused connection.
		c.WriteJSON(map[string]any{"event": "pusher:subscribe", "data": map[string]any{"channel": "chat"}})
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, _, err := c.ReadMessage()
		var ce *websocket.CloseError
		if !errorsAs(err, &ce) || ce.Code != tc.code {
			t.Errorf("%s: %v, want close %d", tc.path, err, tc.code)
		}
	}
}

func errorsAs(err error, ce **websocket.CloseError) bool {
	c, ok := err.(*websocket.CloseError)
	if ok {
		*ce = c
	}
	return ok
}

// TestPusherPrivateAndPresence: signatures made by the SDK are accepted
// and bad ones refused; presence lists include the subscriber, members
// come and go as pusher_internal events; the SDK reads channel info and
// users.
func TestPusherPrivateAndPresence(t *testing.T) {
	e, sdk := newPusherEnv(t, server.Options{PresenceGrace: 200 * time.Millisecond}, "")
	a := pdial(t, e)
	a.send("pusher:subscribe", map[string]any{"channel": "private-x", "auth": pKey + ":" + strings.Repeat("0", 64)}, "")
	if f := a.expect("pusher:subscription_error", "private-x"); !strings.Contains(string(f.Data), `"status":401`) {
		t.Fatalf("bad signature: %s", f.Data)
	}
	a.send("pusher:subscribe", map[string]any{"channel": "private-x"}, "")
	a.expect("pusher:subscription_error", "private-x")
	a.subscribe(sdk, "private-x", nil)

	got := a.subscribe(sdk, "presence-room", &pushersdk.MemberData{UserID: "1", UserInfo: map[string]string{"name": "Ann"}})
	if got != `{"presence":{"count":1,"hash":{"1":{"name":"Ann"}},"ids":["1"]}}` {
		t.Fatalf("presence data for the first member: %s", got)
	}
	b := pdial(t, e)
	got = b.subscribe(sdk, "presence-room", &pushersdk.MemberData{UserID: "2", UserInfo: map[string]string{"name": "Bo"}})
	if got != `{"presence":{"count":2,"hash":{"1":{"name":"Ann"},"2":{"name":"Bo"}},"ids":["1","2"]}}` {
		t.Fatalf("presence data for the second member: %s", got)
	}
	if f := a.expect("pusher_internal:member_added", "presence-room"); f.str(t) != `{"user_id":"2","user_info":{"name":"Bo"}}` {
		t.Fatalf("member_added %s", f.Data)
	}
	// A signature for another user's channel_data is refused.
	c := pdial(t, e)
	params := []byte("socket_id=" + c.socketID + "&channel_name=presence-room")
	resp, _ := sdk.AuthorizePresenceChannel(params, pushersdk.MemberData{UserID: "3"})
	var auth map[string]string
	json.Unmarshal(resp, &auth)
	c.send("pusher:subscribe", map[string]any{"channel": "presence-room", "auth": auth["auth"], "channel_data": `{"user_id":"admin"}`}, "")
	c.expect("pusher:subscription_error", "presence-room")

	ch, err := sdk.Channel("presence-room", pushersdk.ChannelParams{Info: ptr("user_count,subscription_count")})
	if err != nil || !ch.Occupied || ch.UserCount != 2 || ch.SubscriptionCount != 2 {
		t.Fatalf("channel info: %+v %v", ch, err)
	}
	users, err := sdk.GetChannelUsers("presence-room")
	if err != nil || len(users.List) != 2 || users.List[0].ID != "1" || users.List[1].ID != "2" {
		t.Fatalf("users: %+v %v", users, err)
	}
	list, err := sdk.Channels(pushersdk.ChannelsParams{FilterByPrefix: ptr("presence-"), Info: ptr("user_count")})
	if err != nil || len(list.Channels) != 1 || list.Channels["presence-room"].UserCount != 2 {
		t.Fatalf("channels: %+v %v", list, err)
	}
	// pushctl sees the same members.
	if l := e.presence("presence-room"); l.Count != 2 {
		t.Fatalf("pushctl presence: %+v", l)
	}
	b.c.Close()
	if f := a.expect("pusher_internal:member_removed", "presence-room"); f.str(t) != `{"user_id":"2"}` {
		t.Fatalf("member_removed %s", f.Data)
	}
}

func ptr[T any](v T) *T { return &v }

// TestPusherClientEvents: client events reach the other subscribers, not
// the sender; they are refused on public channels and over the rate.
func TestPusherClientEvents(t *testing.T) {
	e, sdk := newPusherEnv(t, server.Options{}, "?client_events_per_second=3")
	a, b := pdial(t, e), pdial(t, e)
	a.subscribe(sdk, "private-doc", nil)
	b.subscribe(sdk, "private-doc", nil)
	a.send("client-typing", map[string]any{"who": "a"}, "private-doc")
	if f := b.expect("client-typing", "private-doc"); f.str(t) != `{"who":"a"}` {
		t.Fatalf("client event data %s", f.Data)
	}
	if err := sdk.Trigger("private-doc", "marker", "m"); err != nil {
		t.Fatal(err)
	}
	a.expect("marker", "private-doc") // not its own client event first
	b.expect("marker", "private-doc")

	a.subscribe(sdk, "public", nil)
	a.send("client-x", map[string]any{}, "public")
	if f := a.expect("pusher:error", ""); !strings.Contains(string(f.Data), "only for private and presence") {
		t.Fatalf("client event on a public channel: %s", f.Data)
	}
	a.send("client-x", map[string]any{}, "private-other")
	a.expect("pusher:error", "")
	// Over the rate (3 a second): the rest are refused with 4301, and
	// every one is either delivered or refused.
	for range 6 {
		a.send("client-burst", "x", "private-doc")
	}
	a.send("pusher:ping", map[string]any{}, "") // answered after the six
	delivered, refused := 0, 0
	for f := a.read(); f.Event != "pusher:pong"; f = a.read() {
		if f.Event != "pusher:error" || !strings.Contains(string(f.Data), `"code":4301`) {
			t.Fatalf("a got %+v", f)
		}
		refused++
	}
	if err := sdk.Trigger("private-doc", "marker", "end"); err != nil {
		t.Fatal(err)
	}
	for f := b.read(); f.Event != "marker"; f = b.read() {
		if f.Event != "client-burst" {
			t.Fatalf("b got %+v", f)
		}
		delivered++
	}
	if delivered+refused != 6 || refused < 2 || delivered < 1 {
		t.Fatalf("%d client events delivered and %d refused of 6", delivered, refused)
	}
}

// TestPusherHTTPAPIRefusesBadRequests: signatures, timestamps, body
// digests, sizes and counts are checked and explained.
func TestPusherHTTPAPIRefusesBadRequests(t *testing.T) {
	e, sdk := newPusherEnv(t, server.Options{}, "")
	app := pusherApp(t, "")
	post := func(path string, q url.Values, body string) (int, string) {
		req, _ := http.NewRequest("POST", e.srv.URL+path+"?"+q.Encode(), strings.NewReader(body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	path := "/apps/" + pAppID + "/events"
	good := `{"name":"e","channels":["c"],"data":"x"}`
	signed := func(body string, at time.Time) url.Values {
		return app.SignRequest("POST", path, nil, []byte(body), at)
	}
	if code, body := post(path, signed(good, time.Now()), good); code != 200 || body != "{}\n" {
		t.Fatalf("good request: %d %s", code, body)
	}
	tampered := signed(good, time.Now())
	tampered.Set("auth_signature", strings.Repeat("a", 64))
	old := signed(good, time.Now().Add(-11*time.Minute))
	other := signed(good, time.Now())
	for _, tc := range []struct {
		name string
		q    url.Values
		body string
		code int
		want string
	}{
		{"tampered signature", tampered, good, 401, "auth_signature does not match"},
		{"replayed timestamp", old, good, 401, "auth_timestamp"},
		{"body changed after signing", other, `{"name":"e","channels":["secret"],"data":"x"}`, 401, "body_md5"},
		{"no auth at all", url.Values{}, good, 401, "auth_key"},
		{"oversize data", signed(`{"name":"e","channels":["c"],"data":"`+strings.Repeat("x", 10241)+`"}`, time.Now()), `{"name":"e","channels":["c"],"data":"` + strings.Repeat("x", 10241) + `"}`, 413, "limit is 10240"},
		{"too many channels", signed(manyChannels(101), time.Now()), manyChannels(101), 400, "at most 100 channels"},
		{"reserved event", signed(`{"name":"pusher:x","channel":"c","data":"x"}`, time.Now()), `{"name":"pusher:x","channel":"c","data":"x"}`, 400, "reserved"},
		{"bad channel", signed(`{"name":"e","channel":"a b","data":"x"}`, time.Now()), `{"name":"e","channel":"a b","data":"x"}`, 400, "not allowed"},
		{"not JSON", signed(`nope`, time.Now()), `nope`, 400, "invalid_json"},
	} {
		if code, body := post(path, tc.q, tc.body); code != tc.code || !strings.Contains(body, tc.want) {
			t.Errorf("%s: %d %s, want %d with %q", tc.name, code, body, tc.code, tc.want)
		}
	}
	// Nothing refused was published.
	if _, err := e.b.Channel(tctx(t), "secret"); err == nil {
		t.Error("the tampered request published")
	}
	info, _ := e.b.Channel(tctx(t), "c")
	if info.LastSeq != 1 {
		t.Errorf("c has %d messages, want the good request's only", info.LastSeq)
	}
	// A batch over the limit; the SDK's own batch.
	batch := make([]pushersdk.Event, 11)
	for i := range batch {
		batch[i] = pushersdk.Event{Channel: "b", Name: "e", Data: i}
	}
	if _, err := sdk.TriggerBatch(batch); err == nil || !strings.Contains(err.Error(), "1 to 10 events") {
		t.Errorf("batch of 11: %v", err)
	}
	if _, err := sdk.TriggerBatch(batch[:10]); err != nil {
		t.Errorf("batch of 10: %v", err)
	}
	if info, _ := e.b.Channel(tctx(t), "b"); info.LastSeq != 10 {
		t.Errorf("b has %d messages after the batch, want 10", info.LastSeq)
	}
}

func manyChannels(n int) string {
	chans := make([]string, n)
	for i := range chans {
		chans[i] = fmt.Sprintf("c%d", i)
	}
	b, _ := json.Marshal(map[string]any{"name": "e", "channels": chans, "data": "x"})
	return string(b)
}

// TestPusherSocketExclusionSigninAndTerminate: an event triggered with a
// socket_id skips that socket; a signed-in user gets events sent to it
// and its connections can be terminated.
func TestPusherSocketExclusionSigninAndTerminate(t *testing.T) {
	e, sdk := newPusherEnv(t, server.Options{}, "")
	a, b := pdial(t, e), pdial(t, e)
	a.subscribe(sdk, "news", nil)
	b.subscribe(sdk, "news", nil)
	if err := sdk.TriggerExclusive("news", "only-b", "x", a.socketID); err != nil {
		t.Fatal(err)
	}
	sdk.Trigger("news", "both", "y")
	a.expect("both", "news")
	b.expect("only-b", "news")
	b.expect("both", "news")

	resp, err := sdk.AuthenticateUser([]byte("socket_id="+a.socketID), map[string]any{"id": "u7", "name": "Seven"})
	if err != nil {
		t.Fatal(err)
	}
	var signin map[string]string
	json.Unmarshal(resp, &signin)
	a.send("pusher:signin", signin, "")
	if f := a.expect("pusher:signin_success", ""); !strings.Contains(f.str(t), `\"id\":\"u7\"`) {
		t.Fatalf("signin_success %s", f.Data)
	}
	// Another connection may not take u7's channel.
	b.send("pusher:subscribe", map[string]any{"channel": "#server-to-user-u7"}, "")
	b.expect("pusher:subscription_error", "#server-to-user-u7")
	a.send("pusher:subscribe", map[string]any{"channel": "#server-to-user-u7"}, "")
	a.expect("pusher_internal:subscription_succeeded", "#server-to-user-u7")
	if err := sdk.SendToUser("u7", "hello", "for you"); err != nil {
		t.Fatal(err)
	}
	if f := a.expect("hello", "#server-to-user-u7"); f.str(t) != "for you" {
		t.Fatalf("user event %s", f.Data)
	}
	// A forged signin ends the connection with 4009.
	b.send("pusher:signin", map[string]string{"auth": signin["auth"], "user_data": `{"id":"u7"}`}, "")
	b.expect("pusher:error", "")
	expectClose(t, b.c, pusher.CloseUnauthorized)

	app := pusherApp(t, "")
	path := "/apps/" + pAppID + "/users/u7/terminate_connections"
	q := app.SignRequest("POST", path, nil, []byte("{}"), time.Now())
	r, body := e.do("POST", path+"?"+q.Encode(), strings.NewReader("{}"))
	if r.StatusCode != 200 {
		t.Fatalf("terminate: %d %s", r.StatusCode, body)
	}
	expectClose(t, a.c, pusher.CloseUnauthorized)
}

// TestPusherWebhooksWaitForTheReceiver: a Pusher app's webhook endpoint
// that fails for a while (here its first six attempts) gets the
// events once it answers, within the retry window (--webhook-retry,
// 1m by default), as the --webhook URLs do. Its sender used to give up
// after five attempts, about three seconds: the events were lost.
func TestPusherWebhooksWaitForTheReceiver(t *testing.T) {
	var mu sync.Mutex
	attempts := 0
	got := make(chan *pushersdk.Webhook, 16)
	var sdk *pushersdk.Client
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		attempts++
		n := attempts
		mu.Unlock()
		if n <= 6 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		body, _ := io.ReadAll(r.Body)
		wh, err := sdk.Webhook(r.Header, body)
		if err != nil {
			t.Errorf("the SDK refused a webhook: %v (%s)", err, body)
			w.WriteHeader(401)
			return
		}
		got <- wh
	}))
	defer hook.Close()
	e, s := newPusherEnv(t, server.Options{PusherWebhookDelay: -1, PresenceGrace: -1}, "?webhook="+url.QueryEscape(hook.URL))
	sdk = s
	a := pdial(t, e)
	a.subscribe(sdk, "chat", nil)
	select {
	case wh := <-got:
		if len(wh.Events) != 1 || wh.Events[0].Name != "channel_occupied" || wh.Events[0].Channel != "chat" {
			t.Fatalf("webhook %+v", wh.Events)
		}
	case <-time.After(30 * time.Second):
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("no webhook within 30s (%d attempts)", attempts)
	}
}

func expectClose(t *testing.T, c *websocket.Conn, code int) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		_, _, err := c.ReadMessage()
		if err == nil {
			continue
		}
		var ce *websocket.CloseError
		if !errorsAs(err, &ce) || ce.Code != code {
			t.Fatalf("connection ended with %v, want close %d", err, code)
		}
		return
	}
}

// TestPusherWebhooks: events reach the webhook signed so that the SDK's
// own check accepts them; vacated waits and is dropped when the channel
// is occupied again within the delay.
func TestPusherWebhooks(t *testing.T) {
	got := make(chan *pushersdk.Webhook, 16)
	var sdk *pushersdk.Client
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		wh, err := sdk.Webhook(r.Header, body)
		if err != nil {
			t.Errorf("the SDK refused a webhook: %v (%s)", err, body)
			w.WriteHeader(401)
			return
		}
		got <- wh
	}))
	defer hook.Close()
	e, s := newPusherEnv(t, server.Options{PusherWebhookDelay: 300 * time.Millisecond, PresenceGrace: -1}, "?webhook="+url.QueryEscape(hook.URL))
	sdk = s
	var queue []pushersdk.WebhookEvent
	next := func() pushersdk.WebhookEvent {
		t.Helper()
		for len(queue) == 0 {
			select {
			case wh := <-got:
				queue = append(queue, wh.Events...)
			case <-time.After(10 * time.Second):
				t.Fatal("no webhook")
			}
		}
		ev := queue[0]
		queue = queue[1:]
		return ev
	}
	a := pdial(t, e)
	a.subscribe(sdk, "presence-r", &pushersdk.MemberData{UserID: "1"})
	evs := map[string]bool{}
	for range 2 {
		ev := next()
		evs[ev.Name+" "+ev.Channel+" "+ev.UserID] = true
	}
	if !evs["channel_occupied presence-r "] || !evs["member_added presence-r 1"] {
		t.Fatalf("webhooks %v", evs)
	}
	a.send("client-ping", map[string]any{"n": 1}, "presence-r")
	if ev := next(); ev.Name != "client_event" || ev.Event != "client-ping" || ev.SocketID != a.socketID || ev.UserID != "1" {
		t.Fatalf("client_event webhook %+v", ev)
	}
	a.c.Close()
	evs = map[string]bool{}
	for range 2 {
		ev := next()
		evs[ev.Name+" "+ev.Channel+" "+ev.UserID] = true
	}
	if !evs["channel_vacated presence-r "] || !evs["member_removed presence-r 1"] {
		t.Fatalf("webhooks %v", evs)
	}
}
