package server

import (
	"bytes"
	"encoding/base64"
	"strings"
	"testing"
)

// FuzzStreamSSEData: whatever a text stream holds, its SSE data event is
// one event (nothing in the data can end it or start another, CR and LF
// alike) whose data, as an SSE reader joins it, is the stream's text with
// its line ends as LF; a binary stream's is its base64.
func FuzzStreamSSEData(f *testing.F) {
	f.Add([]byte("safe\r\n\r\nevent: control\r\ndata: {\"injected\":true}\r\n\r\nmore"), true)
	f.Add([]byte("start\r\revent: control\rdata: x\r\rend"), true)
	f.Add([]byte(" leading space\n"), true)
	f.Add([]byte{0, 1, 2, 0xff}, false)
	f.Fuzz(func(t *testing.T, body []byte, text bool) {
		var out bytes.Buffer
		writeSSEData(&out, body, text)
		s := out.String()
		if !strings.HasPrefix(s, "event: data\n") || !strings.HasSuffix(s, "\n\n") {
			t.Fatalf("not one data event: %q", s)
		}
		lines := strings.Split(strings.TrimSuffix(strings.TrimPrefix(s, "event: data\n"), "\n\n"), "\n")
		var data []string
		for _, l := range lines {
			if strings.ContainsRune(l, '\r') {
				t.Fatalf("a CR inside a line: %q", s)
			}
			v, ok := strings.CutPrefix(l, "data:")
			if !ok {
				t.Fatalf("line %q is not a data line in %q", l, s)
			}
			data = append(data, strings.TrimPrefix(v, " "))
		}
		got := strings.Join(data, "\n")
		want := string(body)
		if text {
			want = strings.ReplaceAll(strings.ReplaceAll(want, "\r\n", "\n"), "\r", "\n")
		} else {
			want = base64.StdEncoding.EncodeToString(body)
		}
		if got != want {
			t.Fatalf("data %q, want %q", got, want)
		}
	})
}
