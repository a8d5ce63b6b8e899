package zmq

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

func FuzzDecode(f *testing.F) {
	f.Add([]byte("news"), []byte("payload"), []byte{0, 0, 0, 0, 0, 0, 0, 7}, 3)
	f.Add([]byte("news hello world"), []byte{}, []byte{}, 1)
	f.Add([]byte("bad channel"), []byte("x"), []byte{1}, 2)
	f.Add([]byte(""), []byte(""), []byte(""), 0)
	f.Fuzz(func(t *testing.T, a, b, c []byte, n int) {
		parts := [][]byte{a, b, c, []byte("extra")}
		if n < 0 || n > len(parts) {
			return
		}
		fr, err := Decode(parts[:n], ' ')
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error not marked malformed: %v", err)
			}
			return
		}
		// What decodes re-encodes to the same frames.
		var again Frame
		if fr.Legacy {
			again, err = Decode(EncodeLegacy(fr.Channel, fr.Payload, ' '), ' ')
		} else {
			again, err = Decode(Encode(fr.Channel, fr.Payload, fr.Seq), ' ')
		}
		if err != nil || again.Channel != fr.Channel || !bytes.Equal(again.Payload, fr.Payload) || again.Legacy != fr.Legacy {
			t.Fatalf("round trip of %+v: %+v %v", fr, again, err)
		}
		if fr.HasSeq && (!again.HasSeq || again.Seq != fr.Seq) {
			t.Fatalf("sequence lost in the round trip of %+v: %+v", fr, again)
		}
		// What was decoded is what was sent.
		switch {
		case n == 1:
			if !fr.Legacy || fr.HasSeq || fr.Channel+" "+string(fr.Payload) != string(a) {
				t.Fatalf("legacy frame %q decoded as %+v", a, fr)
			}
		default:
			if fr.Legacy || fr.Channel != string(a) || !bytes.Equal(fr.Payload, b) {
				t.Fatalf("frames %q %q decoded as %+v", a, b, fr)
			}
			if wantSeq := n >= 3 && len(c) == 8; fr.HasSeq != wantSeq || wantSeq && fr.Seq != binary.BigEndian.Uint64(c) {
				t.Fatalf("sequence frame %x decoded as %+v", c, fr)
			}
		}
	})
}

func TestPrefixesAndFilter(t *testing.T) {
	chans := []string{"chat", "news.*", "alerts.>", ">"}
	got := Prefixes(chans)
	want := []string{"chat", "news.", "alerts.", ""}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("prefixes %q, want %q", got, want)
		}
	}
	only := []string{"chat", "news.*"}
	for ch, ok := range map[string]bool{"chat": true, "chatter": false, "news.a": true, "news.a.b": false, "newsroom": false} {
		if Filter(only, ch) != ok {
			t.Errorf("Filter(%q) = %v", ch, !ok)
		}
	}
}

func TestParseEndpoint(t *testing.T) {
	for in, want := range map[string]string{
		"tcp://127.0.0.1:5556": ">tcp://127.0.0.1:5556", "@tcp://*:1": "@tcp://*:1", ">ipc:///tmp/x": ">ipc:///tmp/x",
	} {
		ep, err := ParseEndpoint(in, false)
		if err != nil || ep.String() != want {
			t.Errorf("%s: %v %v", in, ep, err)
		}
	}
	for _, bad := range []string{"", "tcp://", "udp://x:1", "127.0.0.1:5", "tcp://nohost"} {
		if _, err := ParseEndpoint(bad, true); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// FuzzParseEndpoint: what parses keeps its address and prints as an
// endpoint that parses back to itself.
func FuzzParseEndpoint(f *testing.F) {
	for _, s := range []string{"tcp://127.0.0.1:7071", "@tcp://*:1", ">ipc:///tmp/x", "inproc://a", "tcp://nohost", "udp://x:1", "@", ">>tcp://a:1", ""} {
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, s string, bind bool) {
		e, err := ParseEndpoint(s, bind)
		if err != nil {
			return
		}
		again, err := ParseEndpoint(e.String(), !bind)
		if err != nil || again != e {
			t.Fatalf("%q -> %+v -> %q -> %+v %v", s, e, e.String(), again, err)
		}
	})
}
