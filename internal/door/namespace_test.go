package door

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/pushctl/pushctl/internal/auth"
	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/presence"
	"github.com/pushctl/pushctl/internal/wire"
)

func ptr[T any](v T) *T { return &v }

func codeOf(err error) string {
	var e *wire.Error
	if errors.As(err, &e) {
		return e.Code
	}
	if errors.Is(err, broker.ErrInvalidChannel) {
		return "invalid_channel"
	}
	if err != nil {
		return err.Error()
	}
	return "ok"
}

func TestCoversMatchesAuthGrants(t *testing.T) {
	// The door's covers is auth's rule for grants, without allocations.
	for _, c := range []struct {
		g, p string
		want bool
	}{
		{">", "a", true}, {">", "a.b", true}, {">", ">", true},
		{"a.>", "a", false}, {"a.>", "a.b", true}, {"a.>", "a.>", true}, {"a.>", "a.*", true}, {"a.>", "b.c", false},
		{"a.*", "a.b", true}, {"a.*", "a.*", true}, {"a.*", "a.>", false}, {"a.*", "a.b.c", false}, {"a.*", "a", false},
		{"a.b", "a.b", true}, {"a.b", "a.*", false}, {"a", "a.b", false}, {"a.b.c", "a.b", false},
	} {
		if got := covers(c.g, c.p); got != c.want {
			t.Errorf("covers(%q, %q) = %v, want %v", c.g, c.p, got, c.want)
		}
	}
	if n := testing.AllocsPerRun(100, func() { covers("chat.*.>", "chat.room.x.y") }); n != 0 {
		t.Errorf("covers allocates %v times", n)
	}
}

// TestPatternAcrossNamespaces: a pattern subscription gets a namespace's
// rules only when no earlier namespace holds any channel it can match (the
// reviewer's case: staff before public, public anonymous).
func TestPatternAcrossNamespaces(t *testing.T) {
	secret := []byte("door-namespace-secret-0123456789-0123456789")
	b := broker.NewMemory(broker.MemoryOptions{})
	t.Cleanup(func() { b.Close() })
	d := New(b, Config{Auth: auth.New(auth.Config{Secret: secret}), Namespaces: []Namespace{
		{Name: "staff", Patterns: []string{"public.staff.>"}},
		{Name: "public", Patterns: []string{"public.>"}, Rules: Rules{AnonymousSubscribe: ptr(true)}},
	}})
	anon := Caller{Client: "x"}
	for ch, want := range map[string]string{
		"public.news":    "ok",
		"public.*":       "ok",            // cannot match a staff channel
		"public.staff.x": "token_missing", // staff's
		"public.>":       "token_missing", // spans staff and public
		"public.*.x":     "token_missing", // public.staff.x is one of its channels
	} {
		s, err := d.Subscribe(context.Background(), anon, broker.SubscribeOptions{Channels: []string{ch}})
		if err == nil {
			s.Close()
		}
		if got := codeOf(err); got != want {
			t.Errorf("anonymous subscribe to %s: %s, want %s", ch, got, want)
		}
	}
	for _, c := range []struct {
		a, b string
		want bool
	}{
		{"a.>", "a.b", true}, {"a.*", "a.b.c", false}, {"a.*.c", "a.b.*", true}, {"x", "y", false}, {">", "z", true}, {"a.b", "a", false},
	} {
		if got := overlaps(c.a, c.b); got != c.want || overlaps(c.b, c.a) != c.want {
			t.Errorf("overlaps(%q, %q) = %v, want %v", c.a, c.b, got, c.want)
		}
	}
}

func TestCheckNamespaces(t *testing.T) {
	for _, c := range []struct {
		nss  []Namespace
		want string // "" for accepted
	}{
		{[]Namespace{{Name: "a", Patterns: []string{"chat.>"}}, {Name: "b", Patterns: []string{"metrics.*"}}}, ""},
		{[]Namespace{{Name: "dm", Patterns: []string{"chat.dm.>"}}, {Name: "chat", Patterns: []string{"chat.>"}}}, ""},
		{[]Namespace{{Name: "chat", Patterns: []string{"chat.>"}}, {Name: "dm", Patterns: []string{"chat.dm.>"}}}, "can never match"},
		{[]Namespace{{Name: "a", Patterns: []string{"x"}}, {Name: "a", Patterns: []string{"y"}}}, "two namespaces"},
		{[]Namespace{{Name: "a"}}, "matches no channel"},
		{[]Namespace{{Name: "a", Patterns: []string{"bad..p"}}}, "match"},
		{[]Namespace{{Name: "a", Patterns: []string{"x"}, Rules: Rules{PublishRate: -1}}}, "negative"},
		// One pattern shadowed, another not: it can still match.
		{[]Namespace{{Name: "a", Patterns: []string{"x.>"}}, {Name: "b", Patterns: []string{"x.y", "z"}}}, ""},
	} {
		err := CheckNamespaces(c.nss)
		if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%+v: %v, want %q", c.nss, err, c.want)
		}
	}
}

// TestNamespaceRulesAtTheDoor: each rule of a namespace is enforced for
// every caller of its channels, and channels of no namespace keep today's
// behaviour.
func TestNamespaceRulesAtTheDoor(t *testing.T) {
	secret := []byte("door-namespace-secret-0123456789-0123456789")
	az := auth.New(auth.Config{Secret: secret})
	b := broker.NewMemory(broker.MemoryOptions{})
	t.Cleanup(func() { b.Close() })
	d := New(b, Config{Auth: az, MaxMessageSize: 1000, Namespaces: []Namespace{
		{Name: "public", Patterns: []string{"public.>"}, Rules: Rules{AnonymousSubscribe: ptr(true), ClientPublish: ptr(false), Presence: ptr(false)}},
		{Name: "small", Patterns: []string{"small.*"}, Rules: Rules{MaxMessageSize: 10, PublishRate: 0.001, PublishBurst: 2, PresenceMembers: 1}},
	}})
	tok, err := auth.Issue(auth.Grants{Publish: []string{">"}, Subscribe: []string{">"}, Presence: &auth.Presence{ID: "u1"}}, time.Hour, "u1", "t1", secret, nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	id, err := d.Identify(tok, nil)
	if err != nil {
		t.Fatal(err)
	}
	user, anon := Caller{ID: id, Client: "1"}, Caller{Client: "2"}
	ctx := context.Background()
	pub := func(c Caller, ch string, n int) string {
		_, _, err := d.Publish(ctx, c, &broker.Message{Channel: ch, Data: []byte(strings.Repeat("x", n))})
		return codeOf(err)
	}
	subscribe := func(c Caller, ch string) string {
		s, err := d.Subscribe(ctx, c, broker.SubscribeOptions{Channels: []string{ch}})
		if err == nil {
			s.Close()
		}
		return codeOf(err)
	}
	join := func(c Caller, ch, member string) string {
		m, err := d.Join(ctx, c, ch, member, nil, presence.Limits{})
		if err == nil {
			t.Cleanup(func() { m.Leave(true) })
		}
		return codeOf(err)
	}
	for _, c := range []struct{ name, got, want string }{
		{"HTTP publish to public", pub(user, "public.a", 5), "ok"},
		{"client publish to public", pub(user.OnSocket(), "public.a", 5), "forbidden"},
		{"client publish elsewhere", pub(user.OnSocket(), "other", 5), "ok"},
		{"anonymous subscribe to public", subscribe(anon, "public.a"), "ok"},
		{"anonymous subscribe to public.>", subscribe(anon, "public.>"), "ok"},
		{"anonymous subscribe across namespaces", subscribe(anon, ">"), "token_missing"},
		{"anonymous subscribe elsewhere", subscribe(anon, "other"), "token_missing"},
		{"anonymous publish to public", pub(anon, "public.a", 5), "token_missing"},
		{"join public (presence off)", join(user, "public.a", "u1"), "forbidden"},
		{"join elsewhere", join(user, "other", "u1"), "ok"},
		{"over small's size", pub(user, "small.a", 11), "message_too_large"},
		{"within small's size", pub(user, "small.a", 10), "ok"},
		{"small's burst", pub(user, "small.b", 1), "ok"},
		{"over small's rate", pub(user, "small.c", 1), "rate_limited"},
		{"the broker's rate elsewhere (none)", pub(user, "other", 1), "ok"},
		{"the broker's size elsewhere", pub(user, "other", 1001), "message_too_large"},
	} {
		if c.got != c.want {
			t.Errorf("%s: %s, want %s", c.name, c.got, c.want)
		}
	}
	if e := d.Rules("small.x"); e.Namespace != "small" || e.MaxMessageSize != 10 || e.PresenceMembers != 1 || e.PublishRate != 0.001 || !e.ClientPublish {
		t.Errorf("rules of small.x: %+v", e)
	}
	if e := d.Rules("other"); e.Namespace != "" || e.MaxMessageSize != 1000 || !e.ClientPublish || !e.Presence || e.AnonymousSubscribe {
		t.Errorf("rules of a channel of no namespace: %+v", e)
	}
}

func TestRetentionForFollowsNamespaces(t *testing.T) {
	f := RetentionFor([]Namespace{
		{Name: "a", Patterns: []string{"a.>"}, Rules: Rules{History: &broker.Retention{HistorySize: 5}}},
		{Name: "b", Patterns: []string{"b.>"}},
	})
	if r, ok := f("a.x"); !ok || r.HistorySize != 5 {
		t.Errorf("a.x: %+v %v", r, ok)
	}
	if _, ok := f("b.x"); ok {
		t.Error("a namespace without history rules changed b.x's")
	}
	if _, ok := f("c"); ok {
		t.Error("a channel of no namespace got a retention")
	}
	if RetentionFor(nil) != nil {
		t.Error("no namespaces should leave the logs alone")
	}
}
