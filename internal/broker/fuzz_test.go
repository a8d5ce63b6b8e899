package broker

import (
	"errors"
	"strings"
	"testing"
)

func FuzzChannelNames(f *testing.F) {
	for _, s := range []string{"news", "news.*", "news.>", "a.*.c", ">", "*", "a..b", ".a", "a.", "user:42", "a>b", "é", strings.Repeat("x", 129), "$events.>", "$*", "$>", "$", "$.a", "$events.channel.news"} {
		f.Add(s, "news.sport")
		f.Add(s, "$events.channel.news")
	}
	f.Fuzz(func(t *testing.T, pattern, name string) {
		perr := ValidatePattern(pattern)
		nerr := ValidateChannel(name)
		if nerr == nil {
			if ValidatePattern(name) != nil {
				t.Fatalf("valid channel %q is not a valid pattern", name)
			}
			if IsPattern(name) {
				t.Fatalf("channel %q reported as pattern", name)
			}
			if !Match(name, name) {
				t.Fatalf("%q does not match itself", name)
			}
			if perr == nil && Match(pattern, name) {
				// Every segment of a match is accounted for.
				if !IsPattern(pattern) && pattern != name {
					t.Fatalf("plain %q matched %q", pattern, name)
				}
			}
		}
		if perr == nil && ValidateChannel(pattern) == nil && IsPattern(pattern) {
			t.Fatalf("%q is both a channel and a pattern", pattern)
		}
		if Match(pattern, name) && IsReserved(name) != IsReserved(pattern) && nerr == nil && perr == nil {
			t.Fatalf("%q matched %q across the reserved names", pattern, name)
		}
		Match(pattern, name) // never panics, whatever the input
		if list, err := ParseChannelList(pattern); err == nil {
			for _, p := range list {
				if ValidatePattern(p) != nil {
					t.Fatalf("list gave invalid %q", p)
				}
			}
		}
	})
}

func FuzzParseCursor(f *testing.F) {
	for _, s := range []string{"abc-1", "news=abc-1,chat=x9-0", "=", "a=b", "abc-", "-1", "ABC-1", "a=abc-18446744073709551616", "x=1-1,x=2-2"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseCursor(s, []string{"news"})
		if err != nil {
			return
		}
		again, err := ParseCursor(c.String(), []string{"news"})
		if err != nil {
			t.Fatalf("cursor %q formatted as %q does not parse: %v", s, c.String(), err)
		}
		if again.String() != c.String() {
			t.Fatalf("round trip %q -> %q", c.String(), again.String())
		}
		for name, p := range c {
			if ValidateChannel(name) != nil {
				t.Fatalf("cursor kept invalid channel %q", name)
			}
			if q, err := ParsePosition(p.String()); err != nil || q != p {
				t.Fatalf("position %v round trip: %v %v", p, q, err)
			}
		}
	})
}

// FuzzParseResume: whatever ParseResume accepts formats back to the same
// cursor and time, names only valid channels, and stays within bounds.
func FuzzParseResume(f *testing.F) {
	for _, s := range []string{
		"news=abc-1,*=2026-11-24T19:54:40.123456789Z", "*=2026-11-24T19:54:40Z", "*=x", "*=2026-11-24T19:54:40Z,*=2026-11-24T19:54:40Z",
		"a=k-1,b=k-2", "abc-7", "*=1", "a.>=k-1", "=k-1", "a=k-1,", ",", "a=k-1,*=2026-13-40T99:99:99Z",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for _, chans := range [][]string{{"news"}, {"news.>"}} {
			c, since, err := ParseResume(s, chans)
			if err != nil {
				if !errors.Is(err, ErrInvalidPosition) && !errors.Is(err, ErrInvalidChannel) {
					t.Fatalf("%q: error %v wraps neither ErrInvalidPosition nor ErrInvalidChannel", s, err)
				}
				continue
			}
			if len(c) > MaxCursorEntries {
				t.Fatalf("%q: %d entries kept", s, len(c))
			}
			out := FormatResume(c, since)
			c2, since2, err := ParseResume(out, chans)
			if len(c) == 0 && since.IsZero() {
				continue // nothing to format
			}
			if err != nil || !since2.Equal(since) || FormatResume(c2, since2) != out {
				t.Fatalf("%q -> %q -> %v %v: round trip broke (%v)", s, out, c2, since2, err)
			}
			for name := range c {
				if ValidateChannel(name) != nil {
					t.Fatalf("cursor kept invalid channel %q", name)
				}
			}
		}
	})
}

// FuzzParsePosition: what parses prints back to itself.
func FuzzParsePosition(f *testing.F) {
	for _, s := range []string{"abc-1", "k-0", "-1", "a-", "A-1", "a-b-3", "a-18446744073709551615", "a-18446744073709551616", "a--1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePosition(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidPosition) {
				t.Fatalf("%q: %v is not an invalid position error", s, err)
			}
			return
		}
		q, err := ParsePosition(p.String())
		if err != nil || q != p {
			t.Fatalf("%q -> %v -> %q -> %v %v", s, p, p.String(), q, err)
		}
	})
}
