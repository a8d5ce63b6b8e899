package server_test

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/server"
	"github.com/pushctl/pushctl/internal/server/servertest"
)

// TestPublishBodies: a body is published whole whether its length is
// declared, chunked, empty or exactly the size limit; one over the limit
// is refused; a body cut short of its Content-Length publishes nothing;
// the channel holds exactly what was acknowledged.
func TestPublishBodies(t *testing.T) {
	b, url := servertest.Start(t, server.Options{MaxMessageSize: 1000})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	post := func(body io.Reader, chunked bool) int {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, "POST", url+"/pub/bodies", body)
		if err != nil {
			t.Fatal(err)
		}
		if chunked {
			req.ContentLength = -1
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	var want []string
	for _, c := range []struct {
		body    string
		chunked bool
		status  int
	}{
		{"declared", false, 200},
		{"chunked", true, 200},
		{"", false, 200},
		{strings.Repeat("x", 1000), false, 200},
		{strings.Repeat("y", 1000), true, 200},
		{strings.Repeat("z", 1001), false, http.StatusRequestEntityTooLarge},
		{strings.Repeat("w", 1001), true, http.StatusRequestEntityTooLarge},
	} {
		if got := post(strings.NewReader(c.body), c.chunked); got != c.status {
			t.Fatalf("%d bytes (chunked %v): status %d, want %d", len(c.body), c.chunked, got, c.status)
		}
		if c.status == 200 {
			want = append(want, c.body)
		}
	}

	// A body that ends before its declared length.
	addr := strings.TrimPrefix(url, "http://")
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(conn, "POST /pub/bodies HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\nonly this")
	conn.(*net.TCPConn).CloseWrite()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if resp, err := http.ReadResponse(bufio.NewReader(conn), nil); err == nil {
		if resp.StatusCode == 200 {
			t.Fatalf("a body cut short was acknowledged")
		}
		resp.Body.Close()
	}
	conn.Close()

	var got []string
	sub, err := b.Subscribe(ctx, broker.SubscribeOptions{Channels: []string{"bodies"}, Last: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	for len(got) < len(want) {
		evs, err := sub.Next(ctx, nil)
		if err != nil {
			t.Fatalf("history holds %d messages, want %d: %v", len(got), len(want), err)
		}
		for _, ev := range evs {
			if ev.Msg != nil {
				got = append(got, string(ev.Msg.Data))
			}
		}
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("message %d is %d bytes %.20q, want %d bytes %.20q", i, len(got[i]), got[i], len(want[i]), want[i])
		}
	}
	if inf, err := b.Channel(ctx, "bodies"); err != nil || inf.Messages != len(want) {
		t.Fatalf("channel info %+v, %v: want %d messages", inf, err, len(want))
	}
}

// TestStreamAppendBodyCutShort: a Durable Streams append whose body ends
// before its Content-Length is refused with 400 invalid_parameter and
// appends nothing; a whole one after it is appended alone.
func TestStreamAppendBodyCutShort(t *testing.T) {
	_, url := servertest.Start(t, server.Options{MaxMessageSize: 1000})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	do := func(method, path, body string) (int, string) {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, method, url+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "text/plain")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := do("PUT", "/v1/stream/cut", ""); code != http.StatusCreated {
		t.Fatalf("create: %d %s", code, body)
	}
	conn, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "POST /v1/stream/cut HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 50\r\n\r\nonly this")
	conn.(*net.TCPConn).CloseWrite()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer to a body cut short: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), "invalid_parameter") {
		t.Fatalf("a body cut short: %d %s, want 400 invalid_parameter", resp.StatusCode, b)
	}
	if code, body := do("POST", "/v1/stream/cut", "whole"); code/100 != 2 {
		t.Fatalf("append: %d %s", code, body)
	}
	if code, body := do("GET", "/v1/stream/cut?offset=-1", ""); code != http.StatusOK || body != "whole" {
		t.Fatalf("the stream holds %q (%d), want only %q", body, code, "whole")
	}
}
