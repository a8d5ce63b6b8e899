package pusherd

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/events"
	"github.com/pushctl/pushctl/internal/pusher"
	"github.com/pushctl/pushctl/internal/wire"
)

// The socket and HTTP API behaviour is tested through the server that
// serves them (internal/server/pusher_test.go) and with real pusher-js,
// Laravel Echo and pusher-http-go clients (internal/e2e); these pin the
// parts Pusher clients rely on that a refactor could change silently.

// TestCloseCodes: why a connection ends maps to the close code Pusher
// clients act on (4200 reconnect at once, 4100 back off, 4009 do not
// reconnect as is) or to no close frame when there is no one to tell.
func TestCloseCodes(t *testing.T) {
	pc := &conn{}
	for _, c := range []struct {
		reason error
		code   string
		want   int
		text   string
	}{
		{errTerminated, "write_error", pusher.CloseUnauthorized, "Connection terminated by the server"},
		{fmt.Errorf("wrapped: %w", &closeError{pusher.CloseAppNotFound, "App key k does not exist"}), "write_error", pusher.CloseAppNotFound, "App key k does not exist"},
		{errors.New("x"), wire.CodeSlowConsumer, pusher.CloseOverCapacity, wire.CodeSlowConsumer},
		{errors.New("x"), wire.CodeStalled, pusher.CloseOverCapacity, wire.CodeStalled},
		{errors.New("x"), wire.CodeShuttingDown, pusher.CloseReconnect, "Server shutting down"},
		{errors.New("x"), "protocol_error", pusher.CloseReconnect, "protocol error"},
		{errors.New("x"), wire.CodeTooLarge, pusher.CloseReconnect, "frame too large"},
		{errors.New("x"), wire.CodeInternal, pusher.CloseReconnect, "internal error"},
		{errors.New("x"), "client_closed", 0, ""},
		{errors.New("x"), "write_error", 0, ""},
	} {
		code, text := pc.Close(c.reason, c.code)
		if code != c.want || text != c.text {
			t.Errorf("Close(%v, %q) = %d %q, want %d %q", c.reason, c.code, code, text, c.want, c.text)
		}
	}
}

// TestChannelNames: a Pusher channel is the pushctl channel of the same
// name after the app's prefix, a signed-in user's channel has a name no
// Pusher channel can take, and both map back to the name the client
// used.
func TestChannelNames(t *testing.T) {
	a, err := pusher.ParseApp("1:key:secret-0123456789?prefix=app1.")
	if err != nil {
		t.Fatal(err)
	}
	la := &liveApp{App: a}
	for name, want := range map[string]string{
		"chat":                  "app1.chat",
		"private-room":          "app1.private-room",
		"presence-lobby":        "app1.presence-lobby",
		"#server-to-user-alice": "app1.server-to-user:alice",
	} {
		ch, err := la.brokerChannel(name)
		if err != nil || ch != want {
			t.Errorf("brokerChannel(%q) = %q, %v; want %q", name, ch, err, want)
			continue
		}
		if back := la.pusherChannel(ch); back != name {
			t.Errorf("pusherChannel(%q) = %q, want %q", ch, back, name)
		}
	}
	for _, name := range []string{"", "a b", "#server-to-user-a/b", "x:y"} {
		if ch, err := la.brokerChannel(name); err == nil {
			t.Errorf("brokerChannel(%q) = %q, want an error", name, ch)
		}
	}
}

// TestDataOf: an event's data as Pusher sends it (a JSON string holding
// text or JSON, or JSON itself) becomes the message pushctl's other
// transports deliver.
func TestDataOf(t *testing.T) {
	for _, c := range []struct {
		raw  string
		kind broker.Kind
		data string
	}{
		{`"hello"`, broker.KindText, "hello"},
		{`"{\"a\":1}"`, broker.KindJSON, `{"a":1}`},
		{`{"a":1}`, broker.KindJSON, `{"a":1}`},
		{`42`, broker.KindJSON, `42`},
		{``, broker.KindText, ""},
	} {
		kind, data := dataOf([]byte(c.raw))
		if kind != c.kind || string(data) != c.data {
			t.Errorf("dataOf(%s) = %v %q, want %v %q", c.raw, kind, data, c.kind, c.data)
		}
	}
}

// TestWebhooks: an app's webhooks are made of its channels' lifecycle
// events: occupied and vacated of any of its channels, member events of
// its presence channels, nothing else (no subscribed, no other app's
// channel); a body is Pusher's, with the Pusher channel names, signed
// with the app's secret as the SDKs check it. The webhook reads only
// the event channels of the app's prefix.
func TestWebhooks(t *testing.T) {
	const secret = "secret-0123456789"
	a, err := pusher.ParseApp("7:key:" + secret + "?prefix=app1.&webhook=http://h/one&webhook=http://h/two")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pusher.ParseApp("8:other:" + secret + "?webhook=http://h/one")
	none, _ := pusher.ParseApp("9:none:" + secret + "?prefix=app3.")
	hooks := Webhooks([]pusher.App{a, b, none}, -1)
	if len(hooks) != 3 {
		t.Fatalf("%d webhooks, want 3 (two of app 7, one of app 8)", len(hooks))
	}
	h, other := hooks[0], hooks[2]
	if h.URL != "http://h/one" || hooks[1].URL != "http://h/two" || h.Scope == other.Scope || h.Delay != -1 {
		t.Fatalf("webhooks %+v", hooks)
	}
	if !slices.Equal(h.Channels, []string{"$events.channel.app1.>"}) || !slices.Equal(other.Channels, []string{"$events.channel.>"}) {
		t.Fatalf("event channels read: %v and %v", h.Channels, other.Channels)
	}
	for _, c := range []struct {
		ev   events.Event
		want bool
	}{
		{events.Event{Name: events.ChannelOccupied, Channel: "app1.news"}, true},
		{events.Event{Name: events.ChannelVacated, Channel: "app1.presence-r"}, true},
		{events.Event{Name: events.MemberAdded, Channel: "app1.presence-r", UserID: "u1"}, true},
		{events.Event{Name: events.MemberRemoved, Channel: "app1.presence-r", UserID: "u1"}, true},
		{events.Event{Name: events.MemberAdded, Channel: "app1.news", UserID: "u1"}, false},
		{events.Event{Name: events.Subscribed, Channel: "app1.news"}, false},
		{events.Event{Name: events.Unsubscribed, Channel: "app1.news"}, false},
		{events.Event{Name: events.Published, Channel: "app1.news"}, false},
		{events.Event{Name: events.ChannelOccupied, Channel: "app2.news"}, false},
		{events.Event{Name: events.ConnectionOpened}, false},
	} {
		if got := h.Wants(&c.ev); got != c.want {
			t.Errorf("app 7 wants %+v: %v, want %v", c.ev, got, c.want)
		}
	}
	now := time.UnixMilli(1796563000446)
	body, header := h.Encode([]events.Event{
		{Name: events.ChannelOccupied, Channel: "app1.presence-r", Node: "n", Seq: 1, Epoch: "e", TimeMs: 5},
		{Name: events.MemberAdded, Channel: "app1.presence-r", UserID: "u1", Seq: 2, Epoch: "e"},
		{Name: events.ChannelVacated, Channel: "app1.server-to-user:alice", Seq: 1, Epoch: "e"},
	}, now)
	want := `{"time_ms":1796563000446,"events":[{"name":"channel_occupied","channel":"presence-r"},{"name":"member_added","channel":"presence-r","user_id":"u1"},{"name":"channel_vacated","channel":"#server-to-user-alice"}]}`
	if string(body) != want {
		t.Fatalf("body %s\nwant %s", body, want)
	}
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(body)
	if header.Get("X-Pusher-Key") != "key" || header.Get("X-Pusher-Signature") != hex.EncodeToString(m.Sum(nil)) {
		t.Fatalf("headers %v", header)
	}
}
