package bridge

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
)

type sseEvent struct{ event, id, data string }

// FuzzReadSSE: events written as SSE come back as they were (names, ids,
// multi-line data), and arbitrary bytes never panic or grow past the bound.
func FuzzReadSSE(f *testing.F) {
	f.Add([]byte("deploy\x01v1\x01line one\nline two\x00\x01\x01x"), []byte("data: a\n\nid: 7\n\n"))
	f.Add([]byte("\x01\x01"), []byte(": comment\nretry: 10\ndata\n\n"))
	f.Add([]byte("e\x01i"), []byte("data: "+strings.Repeat("z", 200)+"\n\n"))
	f.Fuzz(func(t *testing.T, spec, raw []byte) {
		// Structured: spec lists events as event\x01id\x01data, \x00 apart.
		var want []sseEvent
		var in bytes.Buffer
		for _, e := range bytes.Split(spec, []byte{0}) {
			p := strings.SplitN(string(e), "\x01", 3)
			for len(p) < 3 {
				p = append(p, "")
			}
			ev := sseEvent{clean(p[0]), clean(p[1]), strings.ReplaceAll(p[2], "\r", "")}
			if ev.event != "" {
				fmt.Fprintf(&in, "event: %s\n", ev.event)
			}
			if ev.id != "" {
				fmt.Fprintf(&in, "id: %s\n", ev.id)
			}
			for _, l := range strings.Split(ev.data, "\n") {
				fmt.Fprintf(&in, "data: %s\r\n", l)
			}
			in.WriteString("\n")
			want = append(want, ev)
		}
		var got []sseEvent
		lastID := ""
		err := readSSE(bufio.NewReaderSize(&in, 16), 1<<20, &lastID, func(event, id string, data []byte) error {
			got = append(got, sseEvent{event, id, string(data)})
			return nil
		})
		if err == nil || err.Error() != "stream ended" {
			t.Fatalf("ended with %v", err)
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("events %q\ncame back as %q", want, got)
		}
		// Raw: never a panic; the bound holds.
		n := 0
		err = readSSE(bufio.NewReaderSize(bytes.NewReader(raw), 16), 64, &lastID, func(event, id string, data []byte) error {
			n++
			if len(data) > 64+1 {
				t.Fatalf("event data of %d bytes past a bound of 64", len(data))
			}
			return nil
		})
		var fe *fatalError
		if err == nil || err.Error() != "stream ended" && !errors.As(err, &fe) {
			t.Fatalf("raw stream ended with %v", err)
		}
	})
}

// clean makes a field value that fits on one line without leading space.
func clean(s string) string {
	s = strings.NewReplacer("\n", "", "\r", "", "\x00", "").Replace(s)
	return strings.TrimLeft(s, " ")
}

// FuzzParseEndpoints: any endpoint string gives a source/sink or a clear
// error, never a panic.
func FuzzParseEndpoints(f *testing.F) {
	for _, s := range []string{"zmq:tcp://127.0.0.1:5556", "zmq:@tcp://*:1", "ws://h/x", "wss://h/ws", "sse://h/sub/a", "http://h/hook",
		"https://h/x", "pushctl://127.0.0.1:7070/news.>", "pushctls://h/a,b", "pushctl://a:1,b:2/x", "pushctl://a:1,,b/x", "pushctl://a:1,b:2?x", "-", "", "zmq:", "pushctl://", "ws://%zz", "gopher://x"} {
		f.Add(s)
	}
	env := &Env{}
	f.Fuzz(func(t *testing.T, raw string) {
		if src, err := ParseSource(raw, EndpointOptions{}, env); err != nil {
			if err.Error() == "" {
				t.Fatalf("empty error for source %q", raw)
			}
		} else if src == nil {
			t.Fatalf("no source and no error for %q", raw)
		}
		if snk, err := ParseSink(raw, EndpointOptions{}, env); err != nil {
			if err.Error() == "" {
				t.Fatalf("empty error for sink %q", raw)
			}
		} else if snk == nil {
			t.Fatalf("no sink and no error for %q", raw)
		}
	})
}

// FuzzDurableStreamURL: a ds:// or dss:// URL is taken only as an http(s)
// URL with a host and a path, its query split off; nothing panics.
func FuzzDurableStreamURL(f *testing.F) {
	f.Add("ds://127.0.0.1:7070/v1/stream/chat?offset=-1")
	f.Add("dss://example.com/v1/stream/a%2Fb?content-type=text/plain")
	f.Add("ds://")
	f.Fuzz(func(t *testing.T, raw string) {
		u, _, err := dsURL(raw)
		if err != nil {
			return
		}
		if strings.Contains(u, "?") || !(strings.HasPrefix(u, "http://") || strings.HasPrefix(u, "https://")) {
			t.Fatalf("dsURL(%q) = %q", raw, u)
		}
	})
}
