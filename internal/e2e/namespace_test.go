//go:build cgo && !nozmq

package e2e

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/pushctl/pushctl/internal/redistest"
)

// Three namespaces from a config file, each with its own history, client
// publishing and presence, on every broker kind.
const namespacesYAML = `
namespace:
  - name: room
    match: room.*
    history: 5
  - name: feed
    match: feed.>
    history: 0
    client-publish: false
    presence: false
  - name: audit
    match: [audit.>]
    history: 1000
    client-publish: false
`

func TestNamespacesOnEveryBroker(t *testing.T) {
	for _, kind := range []string{"memory", "data-dir", "redis"} {
		t.Run(kind, func(t *testing.T) {
			cfg := filepath.Join(t.TempDir(), "serve.yaml")
			yml := namespacesYAML
			if kind == "data-dir" {
				yml += "  - name: volatile\n    match: volatile.>\n    durable: false\n"
			}
			if err := os.WriteFile(cfg, []byte(yml), 0o600); err != nil {
				t.Fatal(err)
			}
			args := []string{"--config", cfg}
			switch kind {
			case "data-dir":
				args = append(args, "--data-dir", t.TempDir())
			case "redis":
				args = append(args, "--broker", redistest.Start(t, redistest.Options{}).URL())
			}
			p, url := serve(t, args...)
			for i := 1; i <= 8; i++ {
				for _, ch := range []string{"room.a", "feed.a", "audit.a", "other"} {
					if status, b := post(t, url+"/pub/"+ch, "", "m"+strconv.Itoa(i)); status != 200 {
						t.Fatalf("HTTP publish to %s: %d %s", ch, status, b)
					}
				}
			}
			retained := func(url string) map[string]int {
				out := map[string]int{}
				for _, ch := range []string{"room.a", "feed.a", "audit.a", "other"} {
					resp, err := http.Get(url + "/channels/" + ch)
					if err != nil {
						t.Fatal(err)
					}
					var info struct {
						Messages int `json:"messages"`
						Rules    struct {
							Namespace string `json:"namespace"`
						} `json:"rules"`
					}
					json.NewDecoder(resp.Body).Decode(&info)
					resp.Body.Close()
					out[ch] = info.Messages
					if want := map[string]string{"room.a": "room", "feed.a": "feed", "audit.a": "audit", "other": ""}[ch]; info.Rules.Namespace != want {
						t.Errorf("%s is in namespace %q, want %q", ch, info.Rules.Namespace, want)
					}
				}
				return out
			}
			want := map[string]int{"room.a": 5, "feed.a": 0, "audit.a": 8, "other": 8}
			if got := retained(url); !mapsEqual(got, want) {
				t.Errorf("retained %v, want %v", got, want)
			}
			// Clients publish over WebSocket where the namespace lets them.
			ws := wsDial(t, url, "/ws", "")
			for ch, code := range map[string]string{"room.a": "ok", "other": "ok", "feed.a": "forbidden", "audit.a": "forbidden"} {
				if got := wsReply(t, ws, map[string]any{"type": "publish", "ref": ref(), "channel": ch, "data": "from a client"}); got != code {
					t.Errorf("client publish to %s: %s, want %s", ch, got, code)
				}
			}
			// Presence only where it is on.
			for ch, code := range map[string]string{"room.a": "ok", "feed.a": "forbidden"} {
				if got := wsReply(t, ws, map[string]any{"type": "join", "ref": ref(), "channel": ch, "id": "u1"}); got != code {
					t.Errorf("join %s: %s, want %s", ch, got, code)
				}
			}
			if kind == "data-dir" {
				// The rules hold across a restart of the store, and a
				// memory-only channel does not survive it.
				if status, b := post(t, url+"/pub/volatile.a", "", "gone at restart"); status != 200 {
					t.Fatalf("publish to volatile.a: %d %s", status, b)
				}
				ws.Close()
				p.signal(syscall.SIGTERM)
				p.wait(20 * time.Second)
				_, url2 := serve(t, args...)
				want["room.a"], want["other"] = 5, 9
				if got := retained(url2); !mapsEqual(got, want) {
					t.Errorf("after a restart, retained %v, want %v", got, want)
				}
				if resp, err := http.Get(url2 + "/channels/volatile.a"); err != nil || resp.StatusCode != 404 {
					t.Errorf("a durable: false channel after a restart: %v %v", err, resp.Status)
				}
			}
		})
	}
}

func mapsEqual(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
