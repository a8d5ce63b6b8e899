package door

import (
	"context"
	"testing"
	"time"

	"github.com/pushctl/pushctl/internal/auth"
	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/presence"
)

// The broker's own channels ($events.…, and the consumers' dead letters
// _dead.…): only the system publishes there;
// reading needs a grant that names them, whatever else would let a caller
// subscribe (tokens off, a namespace of > open to anonymous callers, a
// grant of >).
func TestReservedChannelsAccess(t *testing.T) {
	secret := []byte("door-events-secret-0123456789-0123456789-01")
	tokenOf := func(g auth.Grants) *auth.Identity {
		a := auth.New(auth.Config{Secret: secret})
		tok, err := auth.Issue(g, time.Hour, "u", "", secret, nil, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		id, err := a.Authenticate(tok, nil)
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	ops := tokenOf(auth.Grants{Subscribe: []string{"$events.>"}})
	all := tokenOf(auth.Grants{Subscribe: []string{">"}, Publish: []string{">"}})
	for _, tokens := range []bool{true, false} {
		var a *auth.Authorizer
		if tokens {
			a = auth.New(auth.Config{Secret: secret})
		}
		b := broker.NewMemory(broker.MemoryOptions{})
		d := New(b, Config{Auth: a, Namespaces: []Namespace{{Name: "open", Patterns: []string{">"}, Rules: Rules{AnonymousSubscribe: ptr(true)}}}})
		sub := func(c Caller, ch string) string {
			s, err := d.Subscribe(context.Background(), c, broker.SubscribeOptions{Channels: []string{ch}})
			if err == nil {
				s.Close()
			}
			return codeOf(err)
		}
		pub := func(c Caller, ch string) string {
			_, _, err := d.Publish(context.Background(), c, &broker.Message{Channel: ch, Data: []byte("x")})
			return codeOf(err)
		}
		for _, c := range []struct {
			what, got, want string
		}{
			{"anonymous reads $events.>", sub(Caller{Client: "x"}, "$events.>"), "forbidden"},
			{"a grant of > reads $events.connections", sub(Caller{ID: all, Client: "x"}, "$events.connections"), "forbidden"},
			{"a grant of $events.> reads $events.channel.a", sub(Caller{ID: ops, Client: "x"}, "$events.channel.a"), "ok"},
			{"a Pusher app reads $events.>", sub(Scoped("", "x"), "$events.>"), "forbidden"},
			{"a grant of > publishes on $events.connections", pub(Caller{ID: all, Client: "x"}, "$events.connections"), "forbidden"},
			{"the ZeroMQ ingest publishes on $events.connections", pub(Operator("zmq"), "$events.connections"), "forbidden"},
			{"the system publishes on $events.connections", pub(System, "$events.connections"), "ok"},
			{"a grant of > publishes on _dead.w", pub(Caller{ID: all, Client: "x"}, "_dead.w"), "forbidden"},
			{"the ZeroMQ ingest publishes on _dead.w", pub(Operator("zmq"), "_dead.w"), "forbidden"},
			{"the system publishes on _dead.w", pub(System, "_dead.w"), "ok"},
			{"anonymous reads > (open namespace)", sub(Caller{Client: "x"}, ">"), "ok"},
		} {
			if c.got != c.want {
				t.Errorf("tokens %v: %s: %s, want %s", tokens, c.what, c.got, c.want)
			}
		}
		if _, err := d.Join(context.Background(), Caller{ID: ops, Client: "x"}, "$events.connections", "m", nil, presence.Limits{}); codeOf(err) != "forbidden" {
			t.Errorf("a join of $events.connections: %v", err)
		}
		d.Close()
		b.Close()
	}
}
