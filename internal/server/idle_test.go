package server_test

// An idle connection costs memory but no goroutine: input is watched by
// the poller, the writer runs only while there is something to write, and
// keepalives come from a shared wheel (issue: 30 KiB per idle WebSocket).

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/server"
)

// settleGoroutines waits (up to 10 s) until at most max goroutines run
// and returns how many do. The count has no event to wait on, so it is
// sampled.
func settleGoroutines(t *testing.T, max int) int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= max || time.Now().After(deadline) {
			return n
		}
		runtime.Gosched()
		time.Sleep(5 * time.Millisecond) // sampling interval, not a wait for an event
	}
}

// rawSSE opens an SSE stream over a bare TCP connection (no client
// goroutines) and reads its response head.
func rawSSE(t *testing.T, e *env, path string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(e.srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n", path)
	br := bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("SSE %s: %v %v", path, resp, err)
	}
	return c, br
}

func TestIdleConnectionsHoldNoGoroutine(t *testing.T) {
	if !server.PollerAvailable() {
		t.Skip("no poller on this system: a goroutine per connection waits in read")
	}
	// Keepalives would keep writer goroutines busy; the first is due in
	// about a minute.
	e := newEnv(t, broker.MemoryOptions{}, server.Options{PingInterval: time.Minute, Keepalive: time.Minute})
	// One of each first, so the shared goroutines (poller, wheels) run.
	first := dialWS(t, e, "/sub/idle-ws")
	rawSSE(t, e, "/sub/idle-sse")
	e.waitSubs("idle-ws", 1)
	e.waitSubs("idle-sse", 1)
	base := runtime.NumGoroutine()

	const n = 100
	ws := []*websocket.Conn{first}
	for range n {
		ws = append(ws, dialWS(t, e, "/sub/idle-ws"))
	}
	var sse []*bufio.Reader
	for range n {
		_, br := rawSSE(t, e, "/sub/idle-sse")
		sse = append(sse, br)
	}
	e.waitSubs("idle-ws", n+1)
	e.waitSubs("idle-sse", n+1)
	// Pings from the clients: the server reads a control frame, answers,
	// and its reader leaves instead of waiting for the next frame; the
	// writers that sent the pongs leave once idle (writerLinger).
	for _, c := range ws {
		if err := c.WriteControl(websocket.PingMessage, []byte("hi"), time.Now().Add(5*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	if got := settleGoroutines(t, base+5); got > base+5 {
		t.Fatalf("%d goroutines with %d more idle connections, %d with two: idle connections hold goroutines", got, 2*n, base)
	}

	// They are all alive: a message reaches each.
	e.publish("idle-ws", "to-ws")
	e.publish("idle-sse", "to-sse")
	for i, c := range ws {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, data, err := c.ReadMessage()
		if err != nil || !strings.Contains(string(data), "to-ws") {
			t.Fatalf("ws %d: %s %v", i, data, err)
		}
	}
	for i, br := range sse {
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				t.Fatalf("sse %d: %v", i, err)
			}
			if strings.HasPrefix(line, "data: ") {
				if !strings.Contains(line, "to-sse") {
					t.Fatalf("sse %d: %q", i, line)
				}
				break
			}
		}
	}
	// A frame after the ping is read and answered: the reader left and
	// came back in step with gorilla's state.
	if err := ws[1].WriteMessage(websocket.TextMessage, []byte(`{"type":"ping","ref":"after"}`)); err != nil {
		t.Fatal(err)
	}
	if f := readFrame(t, ws[1]); f["type"] != "pong" || f["ref"] != "after" {
		t.Fatalf("reply to a ping frame after a control ping: %v", f)
	}
}

// wsRaw is a client WebSocket on a bare TCP connection, for frames gorilla
// would not send (fragments with control frames between them) and for a
// peer that never answers.
type wsRaw struct {
	net.Conn
	br *bufio.Reader
}

func dialRawWS(t *testing.T, e *env, path string) *wsRaw {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(e.srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	key := make([]byte, 16)
	rand.Read(key)
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: %s\r\n\r\n",
		path, base64.StdEncoding.EncodeToString(key))
	br := bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade %s: %v %v", path, resp, err)
	}
	return &wsRaw{Conn: c, br: br}
}

// send writes one masked frame.
func (w *wsRaw) send(t *testing.T, op byte, fin bool, payload []byte) {
	t.Helper()
	b0 := op
	if fin {
		b0 |= 0x80
	}
	if len(payload) > 125 {
		t.Fatal("test frames are small")
	}
	frame := []byte{b0, 0x80 | byte(len(payload)), 1, 2, 3, 4}
	for i, c := range payload {
		frame = append(frame, c^frame[2+i%4])
	}
	if _, err := w.Write(frame); err != nil {
		t.Fatal(err)
	}
}

// next reads one (unmasked) server frame.
func (w *wsRaw) next(t *testing.T) (op byte, payload []byte) {
	t.Helper()
	w.SetReadDeadline(time.Now().Add(10 * time.Second))
	var h [2]byte
	if _, err := io.ReadFull(w.br, h[:]); err != nil {
		t.Fatal(err)
	}
	n := int(h[1] & 0x7f)
	switch n {
	case 126:
		var l [2]byte
		io.ReadFull(w.br, l[:])
		n = int(binary.BigEndian.Uint16(l[:]))
	case 127:
		var l [8]byte
		io.ReadFull(w.br, l[:])
		n = int(binary.BigEndian.Uint64(l[:]))
	}
	payload = make([]byte, n)
	if _, err := io.ReadFull(w.br, payload); err != nil {
		t.Fatal(err)
	}
	return h[0] & 0x0f, payload
}

// TestFragmentedMessageAroundPing: a ping between the fragments of one
// message is answered at once, and the message, completed later, is read
// whole (the reader may not leave in the middle of a message).
func TestFragmentedMessageAroundPing(t *testing.T) {
	e := newEnv(t, broker.MemoryOptions{}, server.Options{})
	w := dialRawWS(t, e, "/ws")
	w.send(t, 0x1, false, []byte(`{"type":"pi`))
	w.send(t, 0x9, true, []byte("between"))
	if op, p := w.next(t); op != 0xA || string(p) != "between" {
		t.Fatalf("got op %d %q, want the pong", op, p)
	}
	w.send(t, 0x0, false, []byte(`ng","r`))
	w.send(t, 0xA, true, nil) // an unsolicited pong, also between fragments
	w.send(t, 0x0, true, []byte(`ef":"frag"}`))
	for {
		op, p := w.next(t)
		if op == 0x9 {
			continue // the server's keepalive ping
		}
		if op != 0x1 || string(p) != `{"type":"pong","ref":"frag"}` {
			t.Fatalf("got op %d %q, want the reply to the whole message", op, p)
		}
		break
	}
}

// maskedFrame builds one final client frame, with the 16-bit length form
// when the payload needs it.
func maskedFrame(op byte, payload []byte) []byte {
	f := []byte{0x80 | op}
	if len(payload) > 125 {
		f = append(f, 0x80|126, byte(len(payload)>>8), byte(len(payload)))
	} else {
		f = append(f, 0x80|byte(len(payload)))
	}
	mask := []byte{9, 8, 7, 6}
	f = append(f, mask...)
	for i, c := range payload {
		f = append(f, c^mask[i%4])
	}
	return f
}

// TestFrameSplitAcrossReads: a frame whose first part arrives with the
// frame before it and whose rest comes later (TCP may cut a stream
// anywhere) is read whole, wherever the cut falls: in the header, in the
// extended length, in the mask, in the payload. The reader leaves to wait
// for input only between frames; leaving after gorilla took part of a
// frame lost the frame without a word (found by pushctl bench: one
// publish in ~10 million never acknowledged).
func TestFrameSplitAcrossReads(t *testing.T) {
	e := newEnv(t, broker.MemoryOptions{}, server.Options{})
	w := dialRawWS(t, e, "/ws")
	reply := func(want string) {
		t.Helper()
		for {
			op, p := w.next(t)
			if op == 0x9 {
				continue // the server's keepalive ping
			}
			if op != 0x1 || string(p) != want {
				t.Fatalf("got op %d %q, want %s", op, p, want)
			}
			return
		}
	}
	for _, pad := range []int{0, 200} { // short and 16-bit length forms
		for cut := 1; ; cut++ {
			ref := fmt.Sprintf("p%d-%d", pad, cut)
			b := maskedFrame(0x1, []byte(`{"type":"ping","ref":"`+ref+`","x":"`+strings.Repeat("x", pad)+`"}`))
			if cut >= len(b) {
				break
			}
			first := append(maskedFrame(0x1, []byte(`{"type":"ping","ref":"before-`+ref+`"}`)), b[:cut]...)
			if _, err := w.Write(first); err != nil {
				t.Fatal(err)
			}
			// The reply to the frame before shows the reader has taken
			// the first part of this one.
			reply(`{"type":"pong","ref":"before-` + ref + `"}`)
			if _, err := w.Write(b[cut:]); err != nil {
				t.Fatal(err)
			}
			reply(`{"type":"pong","ref":"` + ref + `"}`)
		}
	}
}

// TestSilentWebSocketPeerIsDropped: a peer that answers nothing (no pong,
// no frame) for two ping intervals and a write timeout is disconnected,
// and counted.
func TestSilentWebSocketPeerIsDropped(t *testing.T) {
	e := newEnv(t, broker.MemoryOptions{}, server.Options{PingInterval: 50 * time.Millisecond, WriteTimeout: 100 * time.Millisecond})
	// Timed from before the dial: the server's keepalive starts with the
	// connection, before the test sees the subscription.
	began := time.Now()
	w := dialRawWS(t, e, "/sub/quiet")
	e.waitSubs("quiet", 1)
	w.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := io.Copy(io.Discard, w.br)
	if err != nil {
		t.Fatalf("the silent peer's connection did not end with EOF: %v", err)
	}
	if d := time.Since(began); d < 200*time.Millisecond {
		t.Fatalf("dropped after %v, before two ping intervals and the write timeout", d)
	}
	e.waitSubs("quiet", 0)
	_, body := e.do("GET", "/metrics", nil)
	if want := `pushctl_disconnects_total{reason="client_closed",transport="websocket"} 1`; !strings.Contains(string(body), want) {
		t.Fatalf("metrics lack %s:\n%s", want, body)
	}
}

// TestShutdownEndsIdleConnections: Serve's shutdown tells every idle
// connection why it ends (WebSocket close 1001, SSE error event) and
// returns once they are closed.
func TestShutdownEndsIdleConnections(t *testing.T) {
	b := broker.NewMemory(broker.MemoryOptions{})
	t.Cleanup(func() { b.Close() })
	s := server.New(b, server.Options{})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, l) }()
	e := &env{t: t, b: b, srv: &httptest.Server{URL: "http://" + l.Addr().String()}, s: s}
	ws := dialWS(t, e, "/sub/bye")
	_, sse := rawSSE(t, e, "/sub/bye")
	e.waitSubs("bye", 2)
	cancel()
	ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, _, err = ws.ReadMessage()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.CloseGoingAway || ce.Text != "shutting_down" {
		t.Fatalf("WebSocket ended with %v, want close 1001 shutting_down", err)
	}
	rest, _ := io.ReadAll(sse)
	if !strings.Contains(string(rest), "event: pushctl-error") || !strings.Contains(string(rest), "shutting_down") {
		t.Fatalf("SSE ended with %q, want a shutting_down error event", rest)
	}
	select {
	case err := <-served:
		if !errors.Is(err, http.ErrServerClosed) {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after shutdown")
	}
}
