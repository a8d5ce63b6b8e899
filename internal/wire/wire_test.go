package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/pushctl/pushctl/internal/broker"
)

func FuzzAppendString(f *testing.F) {
	for _, s := range []string{"", "plain", "quote\" back\\slash", "\n\r\t\x00\x1f", "\u2028\u2029", "\xff\xfe", "é日本"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b := AppendString(nil, s)
		if !json.Valid(b) {
			t.Fatalf("invalid JSON for %q: %s", s, b)
		}
		var got string
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatal(err)
		}
		if utf8.ValidString(s) && got != s {
			t.Fatalf("round trip %q -> %q", s, got)
		}
	})
}

func FuzzEnvelopeRoundTrip(f *testing.F) {
	f.Add("news", "deploy", []byte("hello"), "")
	f.Add("a.b", "", []byte(`{"x":[1, 2]}`), "application/json")
	f.Add("bin", "e", []byte{0xff, 0, 1}, "")
	f.Add("t", "ev\nil", []byte("multi\nline\r\ndata"), "text/plain")
	f.Fuzz(func(t *testing.T, channel, event string, data []byte, ctype string) {
		if broker.ValidateChannel(channel) != nil || !utf8.ValidString(event) {
			return
		}
		kind, err := broker.ClassifyData(ctype, data)
		if err != nil {
			return
		}
		m := &broker.Message{Channel: channel, Epoch: "abc", Seq: 7, Event: event, Kind: kind, Data: data, Time: time.Unix(1700000000, 123000).UTC()}
		line := JSON(m)
		if bytes.Count(line, []byte("\n")) != 1 || line[len(line)-1] != '\n' {
			t.Fatalf("envelope is not one line: %q", line)
		}
		env, err := DecodeEnvelope(line)
		if err != nil {
			t.Fatalf("decode %s: %v", line, err)
		}
		back, err := env.Message()
		if err != nil {
			t.Fatalf("message from %s: %v", line, err)
		}
		if back.Channel != channel || back.Seq != 7 || back.Epoch != "abc" || !back.Time.Equal(m.Time) {
			t.Fatalf("fields changed: %+v", back)
		}
		switch kind {
		case broker.KindJSON:
			var a, b any
			json.Unmarshal(data, &a)
			json.Unmarshal(back.Data, &b)
			ja, _ := json.Marshal(a)
			jb, _ := json.Marshal(b)
			if !bytes.Equal(ja, jb) {
				t.Fatalf("JSON data changed: %s -> %s", data, back.Data)
			}
		default:
			if !bytes.Equal(back.Data, data) {
				t.Fatalf("data changed: %q -> %q", data, back.Data)
			}
		}
		// SSE blocks never let data break out of its lines.
		sse := SSE(m)
		if !bytes.HasSuffix(sse, []byte("\n\n")) || bytes.Contains(sse[:len(sse)-2], []byte("\n\n")) {
			t.Fatalf("SSE block %q", sse)
		}
		raw := SSERaw(m)
		if bytes.Contains(raw[:len(raw)-2], []byte("\n\n")) {
			t.Fatalf("raw SSE block %q", raw)
		}
	})
}

func TestEncodeOnce(t *testing.T) {
	m := &broker.Message{Channel: "c", Epoch: "e", Seq: 1, Data: []byte("x")}
	a, b := JSON(m), JSON(m)
	if &a[0] != &b[0] {
		t.Fatal("JSON encoding not cached")
	}
}

func TestWSFrameHeaders(t *testing.T) {
	for _, n := range []int{0, 125, 126, 65535, 65536, 1 << 20} {
		f := AppendWSFrame(nil, OpText, make([]byte, n))
		var hl int
		switch {
		case n < 126:
			hl = 2
		case n < 1<<16:
			hl = 4
		default:
			hl = 10
		}
		if len(f) != hl+n || f[0] != 0x81 || f[1]&0x80 != 0 {
			t.Fatalf("n=%d: header % x, len %d", n, f[:hl], len(f))
		}
	}
}

// FuzzDecodeEnvelope: any bytes decode or fail cleanly; a message that
// decodes re-encodes to an envelope that decodes to the same message.
func FuzzDecodeEnvelope(f *testing.F) {
	for _, s := range []string{
		`{"type":"message","channel":"a","id":"k-1","seq":1,"event":"e","data":{"x":[1]},"time":"2026-01-02T03:04:05Z"}`,
		`{"type":"message","channel":"a","id":"k-2","data":"AAE=","encoding":"base64"}`,
		`{"type":"gap","channel":"a","from":"k-1","to":"k-9"}`, `{"type":"ack","ref":"1"}`, `[]`, `{`, `{"data":"\ud800"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		env, err := DecodeEnvelope(b)
		if err != nil {
			if !errors.Is(err, ErrBadFrame) {
				t.Fatalf("error not marked as a bad frame: %v", err)
			}
			return
		}
		if env.Type != "message" && env.Type != "" {
			return
		}
		m, err := env.Message()
		if err != nil || broker.ValidateChannel(m.Channel) != nil {
			return
		}
		line := JSON(m)
		env2, err := DecodeEnvelope(line[:len(line)-1])
		if err != nil {
			t.Fatalf("%s re-encoded as %s: %v", b, line, err)
		}
		m2, err := env2.Message()
		if err != nil || m2.Channel != m.Channel || m2.ID() != m.ID() || m2.Event != m.Event || m2.Kind != m.Kind || !bytes.Equal(m2.Data, m.Data) {
			t.Fatalf("%s -> %s: %+v != %+v (%v)", b, line, m2, m, err)
		}
	})
}
