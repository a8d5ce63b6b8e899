package broker

import "testing"

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
