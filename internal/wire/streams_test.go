package wire

import (
	"strings"
	"testing"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
)

func TestStreamChannelMapping(t *testing.T) {
	for _, c := range []struct{ path, ch string }{
		{"chat", "ds.chat"},
		{"chat/room-1", "ds.chat.room-1"},
		{"v1.2", "ds.v1~2E2"},
		{"a~b", "ds.a~7Eb"},
		{"sp ace/é", "ds.sp~20ace.~C3~A9"},
		{"~", "ds.~7E"}, // never the state prefix's "~" segment
	} {
		ch, err := StreamChannel(c.path)
		if err != nil || ch != c.ch {
			t.Errorf("StreamChannel(%q) = %q, %v; want %q", c.path, ch, err, c.ch)
			continue
		}
		if back, ok := StreamPath(ch); !ok || back != c.path {
			t.Errorf("StreamPath(%q) = %q, %v; want %q", ch, back, ok, c.path)
		}
	}
	for _, bad := range []string{"", "a//b", "/a", "a/", strings.Repeat("x", 200)} {
		if ch, err := StreamChannel(bad); err == nil {
			t.Errorf("StreamChannel(%q) = %q, want an error", bad, ch)
		}
	}
	if _, ok := StreamPath(StateChannel("ds.chat")); ok {
		t.Errorf("a state channel is not a stream's")
	}
}

func TestOffsetsSortAsPositions(t *testing.T) {
	a := FormatOffset(broker.Position{Epoch: "lq2k3j9x1c", Seq: 9})
	b := FormatOffset(broker.Position{Epoch: "lq2k3j9x1c", Seq: 10})
	c := FormatOffset(broker.Position{Epoch: "lq2k3j9x1c", Seq: 1 << 40})
	if !(a < b && b < c) {
		t.Fatalf("offsets do not sort: %q %q %q", a, b, c)
	}
	for _, bad := range []string{"", "-1", "now", "x_1", "e_000000000000000G", "e_000000000000000A", "a.b_0000000000000001", "a/b_0000000000000001"} {
		if _, err := ParseOffset(bad); err == nil {
			t.Errorf("ParseOffset(%q) accepted", bad)
		}
	}
}

func TestStreamCursorNeverGoesBack(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	cur := StreamCursor(now, "", 0.5)
	for _, j := range []float64{0, 0.5, 0.999} {
		next := StreamCursor(now, cur, j)
		if len(next) < len(cur) || (len(next) == len(cur) && next <= cur) {
			t.Fatalf("cursor %q after the client's %q: not later", next, cur)
		}
	}
	if got := StreamCursor(now, "12", 0); got != cur {
		t.Errorf("an old client cursor gives %q, want the interval %q", got, cur)
	}
}

func TestParseStreamTTL(t *testing.T) {
	if d, err := ParseStreamTTL("3600"); err != nil || d != time.Hour {
		t.Errorf("3600: %v %v", d, err)
	}
	if d, err := ParseStreamTTL("0"); err != nil || d != 0 {
		t.Errorf("0: %v %v", d, err)
	}
	for _, bad := range []string{"", "+3600", "03600", "3600.0", "3.6e3", "-1", " 1", "1s"} {
		if _, err := ParseStreamTTL(bad); err == nil {
			t.Errorf("Stream-TTL %q accepted", bad)
		}
	}
}

func FuzzParseOffset(f *testing.F) {
	f.Add("lq2k3j9x1c_000000000000002a")
	f.Add("-1")
	f.Add("now")
	f.Add("a_ffffffffffffffff")
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParseOffset(s)
		if err != nil {
			return
		}
		// An offset the parser takes is one FormatOffset writes, and
		// holds none of the characters the protocol reserves.
		if got := FormatOffset(p); got != s {
			t.Fatalf("ParseOffset(%q) = %+v, which formats as %q", s, p, got)
		}
		if strings.ContainsAny(s, ",&=?/") || s == OffsetStart || s == OffsetNow {
			t.Fatalf("offset %q holds a reserved character or is a sentinel", s)
		}
	})
}

func FuzzStreamChannel(f *testing.F) {
	f.Add("chat/room-1")
	f.Add("v1.2/~x")
	f.Add("é/ /%")
	f.Fuzz(func(t *testing.T, path string) {
		ch, err := StreamChannel(path)
		if err != nil {
			return
		}
		// Every stream path names a valid channel under ds., never a
		// state channel, and the channel gives the path back.
		if err := broker.ValidateChannel(ch); err != nil {
			t.Fatalf("StreamChannel(%q) = %q: %v", path, ch, err)
		}
		if !strings.HasPrefix(ch, StreamPrefix) || strings.HasPrefix(ch, StreamStatePrefix) {
			t.Fatalf("StreamChannel(%q) = %q: not a stream's channel", path, ch)
		}
		if back, ok := StreamPath(ch); !ok || back != path {
			t.Fatalf("StreamPath(StreamChannel(%q)) = %q, %v", path, back, ok)
		}
	})
}

func FuzzStreamHeaders(f *testing.F) {
	f.Add("3600")
	f.Add("9007199254740991")
	f.Add("007")
	f.Fuzz(func(t *testing.T, s string) {
		if d, err := ParseStreamTTL(s); err == nil {
			if d < 0 || s[0] == '0' && s != "0" {
				t.Fatalf("Stream-TTL %q = %v", s, d)
			}
		}
		if n, err := ParseProducerNumber("Producer-Seq", s); err == nil {
			if n > MaxProducerNumber || strings.TrimLeft(s, "0123456789") != "" {
				t.Fatalf("Producer-Seq %q = %d", s, n)
			}
		}
	})
}
