package pusherd

import (
	"errors"
	"fmt"
	"testing"

	"github.com/pushctl/pushctl/internal/broker"
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
