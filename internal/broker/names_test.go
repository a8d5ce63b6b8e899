package broker

import (
	"strings"
	"testing"
)

func TestMatch(t *testing.T) {
	for _, c := range []struct {
		pattern, name string
		want          bool
	}{
		{"news", "news", true},
		{"news", "news.a", false},
		{"news", "newsroom", false},
		{"news.*", "news.a", true},
		{"news.*", "news", false},
		{"news.*", "news.a.b", false},
		{"news.*", "newsroom.a", false},
		{"*.eu", "orders.eu", true},
		{"*.eu", "orders.us", false},
		{"*.eu", "eu", false},
		{"a.*.c", "a.b.c", true},
		{"a.*.c", "a.b.d", false},
		{"a.*.c", "a.b.c.d", false},
		{"news.>", "news.a", true},
		{"news.>", "news.a.b.c", true},
		{"news.>", "news", false},
		{"news.>", "newsroom.a", false},
		{">", "a", true},
		{">", "a.b", true},
		{"*", "a", true},
		{"*", "a.b", false},
		{"*.>", "a.b", true},
		{"*.>", "a", false},
		{"a.b", "a.b", true},
		{"a.b", "a.bc", false},
		{"a.b", "a", false},
	} {
		if got := Match(c.pattern, c.name); got != c.want {
			t.Errorf("Match(%q, %q) = %v, want %v", c.pattern, c.name, got, c.want)
		}
	}
}

// Reserved names ("$events.…") are valid names and patterns, but no
// wildcard first segment reaches them: a subscriber of ">" or "*.x" never
// receives the broker's own channels.
func TestReservedNames(t *testing.T) {
	for _, ok := range []string{"$events.connections", "$events.channel.chat.a", "$events.>", "$events.channel.*.a"} {
		if err := ValidatePattern(ok); err != nil {
			t.Errorf("ValidatePattern(%q) = %v", ok, err)
		}
	}
	if err := ValidateChannel("$events.channel." + strings.Repeat("a", MaxChannelLen)); err != nil {
		t.Errorf("an event channel of a longest channel: %v", err)
	}
	for _, bad := range []string{"$", "$.x", "$*", "$>", "$>.x", "a.$b", "$$x"} {
		if ValidatePattern(bad) == nil {
			t.Errorf("ValidatePattern(%q) accepted", bad)
		}
	}
	for _, c := range []struct {
		p, n string
		want bool
	}{
		{">", "$events.connections", false},
		{"*.connections", "$events.connections", false},
		{"$events.>", "$events.connections", true},
		{"$events.channel.>", "$events.channel.chat.a", true},
		{"$events.*", "$events.connections", true},
		{"$events.>", "events.connections", false},
		{">", "chat.a", true},
	} {
		if got := Match(c.p, c.n); got != c.want {
			t.Errorf("Match(%q, %q) = %v, want %v", c.p, c.n, got, c.want)
		}
	}
}
