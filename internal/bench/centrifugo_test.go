package bench

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// fakeCentrifugo speaks as much of Centrifugo's HTTP API and JSON
// WebSocket protocol as the bench uses: POST /api/publish, and on
// /connection/websocket connect and subscribe replies, publications as
// pushes (two per frame when they queue up) and pings that must be
// answered. (Centrifugo itself is not a dependency of the test suite;
// scripts/bench-cluster.sh --redis --centrifugo runs the real one.)
type fakeCentrifugo struct {
	mu    sync.Mutex
	subs  map[*websocket.Conn]chan []byte
	pongs int
}

func (f *fakeCentrifugo) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/api/publish":
		var req struct {
			Channel string
			Data    json.RawMessage
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Channel == "" || len(req.Data) == 0 {
			http.Error(w, "bad publish", 400)
			return
		}
		push, _ := json.Marshal(map[string]any{"push": map[string]any{"channel": req.Channel, "pub": map[string]any{"data": req.Data, "offset": 1}}})
		f.mu.Lock()
		for _, ch := range f.subs {
			ch <- push
		}
		f.mu.Unlock()
		io.WriteString(w, "{}")
	case "/connection/websocket":
		c, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		_, msg, err := c.ReadMessage()
		lines := strings.Split(string(msg), "\n")
		if err != nil || len(lines) != 2 || !strings.Contains(lines[0], `"connect"`) || !strings.Contains(lines[1], `"subscribe"`) {
			return
		}
		c.WriteMessage(websocket.TextMessage, []byte(`{}`)) // a ping first
		if _, pong, err := c.ReadMessage(); err != nil || string(pong) != "{}" {
			return
		}
		f.mu.Lock()
		f.pongs++
		f.mu.Unlock()
		c.WriteMessage(websocket.TextMessage, []byte(`{"id":1,"connect":{"client":"x"}}`+"\n"+`{"id":2,"subscribe":{}}`))
		ch := make(chan []byte, 1<<16)
		f.mu.Lock()
		f.subs[c] = ch
		f.mu.Unlock()
		go func() { // read until the client goes
			for {
				if _, _, err := c.ReadMessage(); err != nil {
					f.mu.Lock()
					delete(f.subs, c)
					f.mu.Unlock()
					close(ch)
					return
				}
			}
		}()
		for p := range ch {
			frame := append([]byte(nil), p...) // p is every subscriber's
			select {
			case q, ok := <-ch:
				if ok {
					frame = append(append(frame, '\n'), q...)
				}
			default:
			}
			if c.WriteMessage(websocket.TextMessage, frame) != nil {
				return
			}
		}
	default:
		http.NotFound(w, r)
	}
}

func TestCentrifugoFlavor(t *testing.T) {
	f := &fakeCentrifugo{subs: map[*websocket.Conn]chan []byte{}}
	srv := httptest.NewServer(f)
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r, err := Run(ctx, Config{Server: srv.URL, Flavor: "centrifugo", Transport: "ws", Subscribers: 3, Publishers: 2,
		Messages: 200, Size: 100})
	if err != nil {
		t.Fatal(err)
	}
	if r.Published != 200 || r.Delivered != 600 || r.Lost != 0 || r.Duplicated != 0 || r.PublishErrors != 0 {
		t.Fatalf("result %+v", r)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.pongs != 3 {
		t.Fatalf("%d subscribers answered the ping, want 3", f.pongs)
	}
	if err := (&Config{Flavor: "centrifugo", Transport: "sse"}).Check(); err == nil {
		t.Fatal("centrifugo with SSE subscribers accepted")
	}
}
