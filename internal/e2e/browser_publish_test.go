package e2e

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// ackCutter is a loopback proxy for a page and its broker. Once armed,
// each WebSocket it carries forwards the client's next frame and then,
// at the first bytes the broker sends back (the ack), closes instead of
// passing them on: a connection lost after the broker stored a publish
// and before its ack arrived.
type ackCutter struct {
	l      net.Listener
	armed  atomic.Bool
	mu     sync.Mutex
	cut    int
	target string
}

func newAckCutter(t *testing.T, target string) *ackCutter {
	p := &ackCutter{target: target}
	p.l = acceptLoop(t, p.pipe)
	return p
}

func (p *ackCutter) pipe(c net.Conn) {
	defer c.Close()
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	defer up.Close()
	var ws, eating atomic.Bool
	go func() {
		buf := make([]byte, 64<<10)
		first := true
		for {
			n, err := c.Read(buf)
			if n > 0 {
				if first && bytes.Contains(bytes.ToLower(buf[:n]), []byte("upgrade: websocket")) {
					ws.Store(true)
				}
				armedNow := ws.Load() && !first && p.armed.Load()
				first = false
				if _, werr := up.Write(buf[:n]); werr != nil {
					return
				}
				if armedNow {
					eating.Store(true)
				}
			}
			if err != nil {
				up.Close()
				return
			}
		}
	}()
	buf := make([]byte, 64<<10)
	for {
		n, err := up.Read(buf)
		if n > 0 && eating.Load() {
			p.mu.Lock()
			p.cut++
			p.mu.Unlock()
			return
		}
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// A page publishes over WebSocket; the broker stores the message and the
// connection is lost before the ack arrives. pushctl.js sends the publish
// again over HTTP with its idempotency key: the promise resolves with the
// stored message's ack, marked duplicate, and the channel holds it once.
func TestBrowserPublishLostAckIsSentAgainOnce(t *testing.T) {
	ctx := browser(t)
	_, url := serve(t)
	proxy := newAckCutter(t, url[len("http://"):])
	page(t, ctx, "http://"+proxy.l.Addr().String(), "")
	js(t, ctx, `window.p = pushctl.connect(location.origin);`)
	until(t, ctx, `p.state === "connected" && p.transport === "websocket"`, 20*time.Second)
	proxy.armed.Store(true)
	// A second publish made right after: it comes after the first, whether
	// it went on the lost connection too or after it.
	acks := eval[[]map[string]any](t, ctx, `Promise.all([p.publish("browser.once", "note", "written once"), p.publish("browser.once", "note", "then this")])`)
	proxy.mu.Lock()
	cut := proxy.cut
	proxy.mu.Unlock()
	if ack := acks[0]; cut != 1 || ack["duplicate"] != true || ack["seq"] != float64(1) || ack["channel"] != "browser.once" {
		t.Fatalf("ack %v after %d cut connections; want the first ack marked duplicate after 1", ack, cut)
	}
	if acks[1]["seq"] != float64(2) {
		t.Fatalf("the second publish: %v", acks[1])
	}
	resp, err := http.Get(url + "/channels/browser.once")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var info struct {
		LastSeq  int `json:"last_seq"`
		Messages int `json:"messages"`
	}
	body, _ := io.ReadAll(resp.Body)
	if json.Unmarshal(body, &info); info.LastSeq != 2 || info.Messages != 2 {
		t.Fatalf("the channel holds %s; want two messages", body)
	}
	// Closing the client settles what it has not had acknowledged.
	js(t, ctx, `window.q = pushctl.connect(location.origin)`)
	until(t, ctx, `q.state === "connected" && q.transport === "websocket"`, 20*time.Second)
	proxy.armed.Store(true)
	code := eval[string](t, ctx, `(async () => {
		const pending = q.publish("browser.once", "note", "closed before its ack");
		await new Promise((r) => setTimeout(r, 0));
		q.close();
		try { await pending; return "resolved"; } catch (e) { return e.code; }
	})()`)
	if code != "closed" && code != "resolved" {
		t.Fatalf("a publish pending when the client closed: %q", code)
	}
}
