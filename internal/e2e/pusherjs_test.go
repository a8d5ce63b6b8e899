package e2e

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pushersdk "github.com/pusher/pusher-http-go/v5"
)

// pusher-js (npm, pinned in testdata/pusher-js/package-lock.json and
// installed by scripts/install-deps.sh --test) against a real pushctl
// serve, in Node and in headless Chromium.

const (
	pjsApp    = "77"
	pjsKey    = "pjs-key"
	pjsSecret = "pjs-secret-0123456789"
)

var pusherJSDir, _ = filepath.Abs("../../testdata/pusher-js")

// needPusherJS skips (or, in CI, fails) when pusher-js is not installed.
func needPusherJS(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(pusherJSDir, "node_modules", "pusher-js", "package.json")); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("pusher-js is missing: scripts/install-deps.sh --test installs it (%v)", err)
		}
		t.Skip("pusher-js is missing: run scripts/install-deps.sh --test")
	}
}

// pusherJSWorld starts pushctl with a Pusher app and an auth endpoint
// (the Go server SDK signs subscriptions, as an app's backend would) that
// also serves the browser page. It returns pushctl's URL and the auth
// server's.
func pusherJSWorld(t *testing.T) (string, string) {
	t.Helper()
	_, broker := serve(t, "--pusher-app", pjsApp+":"+pjsKey+":"+pjsSecret, "--presence-grace", "100ms")
	sdk := &pushersdk.Client{AppID: pjsApp, Key: pjsKey, Secret: pjsSecret}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /auth", func(w http.ResponseWriter, r *http.Request) {
		if err := r.ParseForm(); err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		params := []byte(url.Values{"socket_id": {r.PostForm.Get("socket_id")}, "channel_name": {r.PostForm.Get("channel_name")}}.Encode())
		user := r.PostForm.Get("user")
		var resp []byte
		var err error
		if strings.HasPrefix(r.PostForm.Get("channel_name"), "presence-") {
			resp, err = sdk.AuthorizePresenceChannel(params, pushersdk.MemberData{UserID: user, UserInfo: map[string]string{"name": "user" + user}})
		} else {
			resp, err = sdk.AuthorizePrivateChannel(params)
		}
		if err != nil {
			http.Error(w, err.Error(), 403)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(resp)
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		w.Write([]byte(`<!doctype html><title>pusher-js</title><script src="/pusher.js"></script><script src="/scenario.js"></script>`))
	})
	mux.HandleFunc("GET /pusher.js", func(w http.ResponseWriter, r *http.Request) {
		http.ServeFile(w, r, filepath.Join(pusherJSDir, "node_modules", "pusher-js", "dist", "web", "pusher.min.js"))
	})
	mux.HandleFunc("GET /scenario.js", func(w http.ResponseWriter, r *http.Request) {
		http.ServeFile(w, r, filepath.Join(pusherJSDir, "scenario.js"))
	})
	auth := httptest.NewServer(mux)
	t.Cleanup(auth.Close)
	return broker, auth.URL
}

// The scenario's log, the same in Node and in the browser.
const pusherJSWant = `a connected true
a subscribed, members 1, me 1
b subscribed, members 1:user1,2:user2
a saw member_added 2 user2
a got client-typing from b
a got headline hello
b echoed its own client event: false
a saw member_removed 2
a saw 2 again, members 2`

// TestPusherJSInNode: two pusher-js clients in Node connect, subscribe to
// public, private and presence channels through an auth endpoint, see
// each other come and go, exchange client events, get a pushctl publish,
// and reconnect.
func TestPusherJSInNode(t *testing.T) {
	needPusherJS(t)
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("node is missing: scripts/install-deps.sh --test installs it")
	}
	broker, auth := pusherJSWorld(t)
	u, _ := url.Parse(broker)
	host, port, _ := net.SplitHostPort(u.Host)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "run.js", pjsKey, host, port, auth+"/auth", broker)
	cmd.Dir = pusherJSDir
	out, err := cmd.CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != pusherJSWant {
		t.Fatalf("pusher-js in Node (%v):\n%s\nwant:\n%s", err, out, pusherJSWant)
	}
}

// TestPusherJSInBrowser: the same scenario with pusher-js's web build in
// headless Chromium.
func TestPusherJSInBrowser(t *testing.T) {
	needPusherJS(t)
	ctx := browser(t)
	broker, auth := pusherJSWorld(t)
	u, _ := url.Parse(broker)
	host, port, _ := net.SplitHostPort(u.Host)
	navigate(t, ctx, auth+"/")
	until(t, ctx, `typeof Pusher === "function" && typeof scenario === "function"`, 20*time.Second)
	js(t, ctx, `window.result = null; window.failure = null;
		scenario(Pusher, {key: `+jsString(pjsKey)+`, host: `+jsString(host)+`, port: `+port+`, authEndpoint: "/auth",
			publish: async (ch, ev, data) => {
				const r = await fetch(`+jsString(broker)+` + "/pub/" + ch, {method: "POST", headers: {"X-Pushctl-Event": ev}, body: data});
				if (!r.ok) throw new Error("publish " + r.status);
			}}).then((log) => { window.result = log.join("\n"); }, (e) => { window.failure = String(e); });`)
	until(t, ctx, `window.result !== null || window.failure !== null`, 60*time.Second)
	if f := eval[any](t, ctx, `window.failure`); f != nil {
		t.Fatalf("pusher-js in Chromium: %v", f)
	}
	if got := eval[string](t, ctx, `window.result`); got != pusherJSWant {
		t.Fatalf("pusher-js in Chromium:\n%s\nwant:\n%s", got, pusherJSWant)
	}
}

func jsString(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}
