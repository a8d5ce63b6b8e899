package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"testing"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/wire"
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
		// What comes out, in order: each line, or "!" for one too long.
		var got []string
		for {
			line, err := lr.next()
			if err == io.EOF {
				break
			}
			if errors.Is(err, errLineTooLong) {
				got = append(got, "!")
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, "="+string(line))
		}
		// The model: lines split at \n (a final empty piece is no line);
		// with its \n a line may be max+2 bytes long (room for \r\n), and
		// a trailing \r is dropped.
		var want []string
		pieces := bytes.Split(body, []byte("\n"))
		for i, l := range pieces {
			last := i == len(pieces)-1
			if last && len(l) == 0 {
				break
			}
			size := len(l)
			if !last {
				size++
			}
			if size > max+2 {
				want = append(want, "!")
				continue
			}
			want = append(want, "="+string(bytes.TrimSuffix(l, []byte("\r"))))
		}
		if strings.Join(got, "\x00") != strings.Join(want, "\x00") {
			t.Fatalf("max %d, body %q:\ngot  %q\nwant %q", max, body, got, want)
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
		`{"type":"publish","ref":"x1","channel":123}`, `{"type":"subscribe","ref":"x2","channels":"room.42"}`,
		`{"ref":"x3","type":"subscribe","channels":["a"],"last":"5"}`,
	} {
		f.Add([]byte(s))
	}
	b := broker.NewMemory(broker.MemoryOptions{})
	f.Cleanup(func() { b.Close() })
	s := New(b, Options{MaxMessageSize: 1024})
	r := httptest.NewRequest("GET", "/ws", nil)
	f.Fuzz(func(t *testing.T, frame []byte) {
		ss := newSession(s, wsEncoder{}, nil, true)
		rd := &wsReader{s: s, ss: ss, addr: s.remoteAddr(r), client: s.clientKey(r)}
		rd.handle(frame)
		rd.ackers.Wait()
		ss.closeSubs()
		if len(ss.control) == 0 {
			t.Fatalf("frame %q got no reply", frame)
		}
		// Every error answering a frame with a ref carries it.
		var sent struct {
			Ref string `json:"ref"`
		}
		hasRef := json.Unmarshal(frame, &sent) == nil && sent.Ref != "" && len(sent.Ref) <= wire.MaxRef
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
			var reply struct{ Type, Ref string }
			json.Unmarshal(payload, &reply)
			if hasRef && reply.Type == "error" && reply.Ref != sent.Ref {
				t.Fatalf("frame %q (ref %q) got the error %s", frame, sent.Ref, payload)
			}
		}
	})
}

func FuzzNDJSONPublish(f *testing.F) {
	f.Add([]byte("{\"channel\":\"a\",\"data\":\"x\"}\n{\"channel\":\"b\",\"data\":{\"k\":1}}\nnot json\n"))
	f.Add([]byte("{\"data\":\"no channel\"}\r\n\n\n{\"channel\":\"a\",\"data\":\"QQ==\",\"encoding\":\"base64\"}"))
	f.Add([]byte(strings.Repeat("{", 3000)))
	b := broker.NewMemory(broker.MemoryOptions{Retention: broker.Retention{HistorySize: 10}})
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

// FuzzResumeParameters: since, since_time, last and Last-Event-ID (the
// long-poll cursor is since) either give a clear 4xx error or a position
// the broker subscribes from without an internal error.
func FuzzResumeParameters(f *testing.F) {
	f.Add("all", "", "", "", false)
	f.Add("news=k-1,*=2026-11-24T19:54:40Z", "", "", "", true)
	f.Add("", "2026-11-24T19:54:40Z", "5", "k-3", false)
	f.Add("5m", "x", "-1", "", true)
	f.Add("k-99999999999999999999", "", "1000001", "=,=", false)
	b := broker.NewMemory(broker.MemoryOptions{Retention: broker.Retention{HistorySize: 10}})
	f.Cleanup(func() { b.Close() })
	for i := 0; i < 3; i++ {
		b.Publish(context.Background(), &broker.Message{Channel: "news", Data: []byte("x")})
	}
	f.Fuzz(func(t *testing.T, since, sinceTime, last, lastEventID string, pattern bool) {
		q := url.Values{}
		for k, v := range map[string]string{"since": since, "since_time": sinceTime, "last": last} {
			if v != "" {
				q.Set(k, v)
			}
		}
		r := httptest.NewRequest("GET", "/sub/x?"+q.Encode(), nil)
		if lastEventID != "" {
			r.Header.Set("Last-Event-ID", lastEventID)
		}
		chans := []string{"news"}
		if pattern {
			chans = []string{"news.>"}
		}
		opts := broker.SubscribeOptions{Channels: chans}
		if err := parseResume(r, &opts); err != nil {
			if e := asError(err); e.Status != 400 {
				t.Fatalf("%v: %v (status %d)", q, err, e.Status)
			}
			return
		}
		sub, err := b.Subscribe(context.Background(), opts)
		if err != nil {
			if e := asError(err); e.Status != 400 {
				t.Fatalf("subscribe %+v: %v (status %d)", opts, err, e.Status)
			}
			return
		}
		sub.Close()
	})
}

// FuzzForwarded: any Forwarded/X-Forwarded-For from a trusted proxy gives
// either no address or one the headers (or the peer) named.
func FuzzForwarded(f *testing.F) {
	f.Add(`for="[2001:db8::1]:80";proto=https, for=10.0.0.1`, "")
	f.Add("", "10.0.0.1, 10.0.0.2,127.0.0.1")
	f.Add("for=unknown", "::ffff:10.0.0.1")
	s := New(broker.NewMemory(broker.MemoryOptions{}), Options{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
	f.Fuzz(func(t *testing.T, fwd, xff string) {
		r := httptest.NewRequest("GET", "/", nil)
		r.RemoteAddr = "127.0.0.1:5000"
		if fwd != "" {
			r.Header.Set("Forwarded", fwd)
		}
		if xff != "" {
			r.Header.Set("X-Forwarded-For", xff)
		}
		ip := s.clientIP(r)
		if !ip.IsValid() {
			return
		}
		if !strings.Contains(fwd+xff, ip.String()) && !strings.Contains(fwd+xff, ip.StringExpanded()) && ip.String() != "127.0.0.1" {
			// An IPv4-mapped or differently spelled address still names it.
			if p := parseHop(ip.String()); p != ip {
				t.Fatalf("client %v from Forwarded %q X-Forwarded-For %q", ip, fwd, xff)
			}
		}
	})
}
