package server

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/pushctl/pushctl/internal/broker"
)

func FuzzLineReader(f *testing.F) {
	f.Add([]byte("a\nb\r\n\nc"), 4)
	f.Add([]byte(strings.Repeat("x", 100)+"\nok\n"), 8)
	f.Add([]byte{}, 1)
	f.Fuzz(func(t *testing.T, body []byte, max int) {
		if max < 1 || max > 1<<16 {
			return
		}
		lr := &lineReader{br: bufio.NewReaderSize(bytes.NewReader(body), 16), max: max}
		var got [][]byte
		tooLong := 0
		for {
			line, err := lr.next()
			if err == io.EOF {
				break
			}
			if errors.Is(err, errLineTooLong) {
				tooLong++
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, line)
		}
		// Every line within the limit comes out unchanged and in order.
		var want [][]byte
		wantLong := 0
		for i, l := range bytes.Split(body, []byte("\n")) {
			if i == bytes.Count(body, []byte("\n")) && len(l) == 0 {
				break
			}
			l = bytes.TrimSuffix(l, []byte("\r"))
			if len(l) > max+1 {
				wantLong++
				continue
			}
			want = append(want, l)
		}
		if tooLong > wantLong || len(got)+tooLong != len(want)+wantLong {
			t.Fatalf("got %d lines + %d too long, want %d + %d", len(got), tooLong, len(want), wantLong)
		}
	})
}

func FuzzWebSocketFrame(f *testing.F) {
	for _, s := range []string{
		`{"type":"publish","channel":"a","data":"x"}`,
		`{"type":"publish","channel":"a","data":{"k":[1,2]},"event":"e","ref":"1"}`,
		`{"type":"publish","channel":"a","data":"AAE=","encoding":"base64"}`,
		`{"type":"subscribe","channels":["a","b.*"],"since":"all","last":3}`,
		`{"type":"unsubscribe","channel":"a"}`,
		`{"type":"ping"}`, `{}`, `[]`, `{"type":"subscribe","channels":[""]}`, `{"data":` + strings.Repeat("[", 5000),
	} {
		f.Add([]byte(s))
	}
	b := broker.NewMemory(broker.MemoryOptions{})
	f.Cleanup(func() { b.Close() })
	s := New(b, Options{MaxMessageSize: 1024})
	r := httptest.NewRequest("GET", "/ws", nil)
	f.Fuzz(func(t *testing.T, frame []byte) {
		ss := newSession(s, wsEncoder{}, nil)
		rd := &wsReader{s: s, ss: ss, r: r, loopDone: make(chan struct{})}
		rd.handle(frame)
		if rd.replies != nil {
			close(rd.replies)
			<-rd.acker
		}
		ss.closeSubs()
		if len(ss.control) == 0 {
			t.Fatalf("frame %q got no reply", frame)
		}
		for _, c := range ss.control {
			// A text frame (unmasked, final) carrying one JSON frame.
			if len(c) < 2 || c[0] != 0x81 {
				t.Fatalf("reply %q is not a text frame", c)
			}
			payload := c[2:]
			switch c[1] {
			case 126:
				payload = c[4:]
			case 127:
				payload = c[10:]
			}
			if !bytes.HasPrefix(payload, []byte(`{"type":"`)) || !json.Valid(payload) {
				t.Fatalf("reply %q", payload)
			}
			if bytes.Contains(payload, []byte("Go value")) || bytes.Contains(payload, []byte("server.")) {
				t.Fatalf("reply speaks of Go types: %s", payload)
			}
		}
	})
}

func FuzzNDJSONPublish(f *testing.F) {
	f.Add([]byte("{\"channel\":\"a\",\"data\":\"x\"}\n{\"channel\":\"b\",\"data\":{\"k\":1}}\nnot json\n"))
	f.Add([]byte("{\"data\":\"no channel\"}\r\n\n\n{\"channel\":\"a\",\"data\":\"QQ==\",\"encoding\":\"base64\"}"))
	f.Add([]byte(strings.Repeat("{", 3000)))
	b := broker.NewMemory(broker.MemoryOptions{HistorySize: 10})
	f.Cleanup(func() { b.Close() })
	s := New(b, Options{MaxMessageSize: 256})
	f.Fuzz(func(t *testing.T, body []byte) {
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, httptest.NewRequest("POST", "/pub?channel=dflt", bytes.NewReader(body)))
		if rec.Code != 200 {
			t.Fatalf("status %d", rec.Code)
		}
		// One reply line per non-empty input line, each an ack or an error.
		want := 0
		for _, l := range bytes.Split(body, []byte("\n")) {
			if len(bytes.TrimSuffix(l, []byte("\r"))) > 0 {
				want++
			}
		}
		got := bytes.Count(rec.Body.Bytes(), []byte("\n"))
		if got != want {
			t.Fatalf("%d replies for %d lines:\n%s", got, want, rec.Body.Bytes())
		}
	})
}
