package e2e

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
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
				if ws.Load() && !first && p.armed.Load() {
					// Before the frame goes up: the broker's answer can
					// be read back before Write returns.
					eating.Store(true)
				}
				first = false
				if _, werr := up.Write(buf[:n]); werr != nil {
					return
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

// A page reads a durable consumer with pushctl.js: each delivery is acked
// when the handler returns and comes again when it throws; after stop()
// the page gets nothing more and the consumer's next message waits for
// another reader.
func TestBrowserConsumesADurableConsumer(t *testing.T) {
	ctx := browser(t)
	_, url := serve(t)
	page(t, ctx, url, "")
	js(t, ctx, `window.handled = []; window.errors = [];
		window.p = pushctl.connect(location.origin);
		window.c = p.consume("mailer", {channel: "jobs.mail", max: 2}, (data, d) => {
			window.handled.push(data + "#" + d.deliveries);
			if (data === "bad" && d.deliveries === 1) throw Object.assign(new Error("not now"), {delay: "0s"});
		});
		c.on("error", (e) => window.errors.push(e.code));`)
	until(t, ctx, `p.state === "connected" && c.consuming`, 20*time.Second)
	for _, m := range []string{"one", "bad", "two"} {
		if _, errs, code := run(t, "", "pub", "--server", url, "jobs.mail", m); code != 0 {
			t.Fatalf("pub: %s", errs)
		}
	}
	until(t, ctx, `window.handled.length >= 4`, 20*time.Second)
	got := eval[[]string](t, ctx, `window.handled.slice().sort()`)
	if strings.Join(got, " ") != "bad#1 bad#2 one#1 two#1" {
		t.Fatalf("the page handled %q", got)
	}
	waitConsumer := func(cond func(map[string]any) bool) map[string]any {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			resp, err := http.Get(url + "/consumers/mailer")
			if err != nil {
				t.Fatal(err)
			}
			var info map[string]any
			json.NewDecoder(resp.Body).Decode(&info)
			resp.Body.Close()
			if cond(info) {
				return info
			}
			if time.Now().After(deadline) {
				t.Fatalf("consumer: %v", info)
			}
			<-time.After(20 * time.Millisecond) // polling the broker's state, not waiting for an event
		}
	}
	waitConsumer(func(i map[string]any) bool {
		return i["acked"] == float64(3) && i["nacked"] == float64(1) && i["pending"] == float64(0)
	})
	js(t, ctx, `c.stop()`) // resolves once the broker stopped pushing
	run(t, "", "pub", "--server", url, "jobs.mail", "after stop")
	resp, err := http.Post(url+"/consumers/mailer/fetch?max=1&wait=10s", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `"after stop"`) {
		t.Fatalf("fetch after stop: %s", body)
	}
	if n := eval[int](t, ctx, `window.handled.length`); n != 4 {
		t.Fatalf("the page handled %d deliveries after stop", n-4)
	}
	if errs := eval[[]string](t, ctx, `window.errors`); len(errs) != 0 {
		t.Fatalf("consumer errors %v", errs)
	}
}
