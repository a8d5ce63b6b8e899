package e2e

// Browser tests: a real headless Chromium (Debian's, installed by
// scripts/install-deps.sh) running pushctl.js and the web console against
// a real pushctl serve.

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

const chromium = "/usr/bin/chromium"

// browser starts a headless Chromium and returns a tab's context.
func browser(t *testing.T) context.Context {
	t.Helper()
	if _, err := os.Stat(chromium); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is missing: scripts/install-deps.sh --test installs it", chromium)
		}
		t.Skipf("%s is missing: run scripts/install-deps.sh --test", chromium)
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromium),
		chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	}
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelC := chromedp.NewContext(actx)
	ctx, cancelT := context.WithTimeout(ctx, 2*time.Minute)
	t.Cleanup(func() { cancelT(); cancelC(); cancelA() })
	if err := chromedp.Do(ctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	return ctx
}

// eval evaluates expr in the page, awaiting a promise, and decodes its value.
func eval[T any](t *testing.T, ctx context.Context, expr string) T {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatalf("in the page: %s: %v", firstLine(expr), err)
	}
	return v
}

// js evaluates expr in the page for its effect.
func js(t *testing.T, ctx context.Context, expr string) {
	t.Helper()
	eval[chromedp.Void](t, ctx, expr)
}

// navigate opens url in the tab.
func navigate(t *testing.T, ctx context.Context, url string) {
	t.Helper()
	if err := chromedp.Do(ctx, chromedp.Navigate(url)); err != nil {
		t.Fatalf("open %s: %v", url, err)
	}
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + " …"
	}
	return s
}

// until waits in the page until cond (a JS expression) is true.
func until(t *testing.T, ctx context.Context, cond string, timeout time.Duration) {
	t.Helper()
	js(t, ctx, fmt.Sprintf(`new Promise((resolve, reject) => {
		const t0 = Date.now();
		(function check() {
			let ok = false;
			try { ok = !!(%s); } catch (e) {}
			if (ok) return resolve(true);
			if (Date.now() - t0 > %d) return reject(new Error("timed out waiting for: " + %q + "; states: " + JSON.stringify(window.states || []) + "; got " + (window.got || []).length));
			setTimeout(check, 20);
		})();
	})`, cond, timeout.Milliseconds(), cond))
}

// page opens a page of the broker and loads pushctl.js into it, with
// window.got collecting messages and window.states the state changes.
func page(t *testing.T, ctx context.Context, url, setup string) {
	t.Helper()
	navigate(t, ctx, url+"/healthz")
	js(t, ctx, setup+`;
		window.got = []; window.states = []; window.gaps = [];
		new Promise((resolve, reject) => {
			const s = document.createElement("script");
			s.src = "/pushctl.js"; s.onload = resolve; s.onerror = () => reject(new Error("pushctl.js did not load"));
			document.head.append(s);
		})`)
}

const collect = `
	p.on("state", (s) => window.states.push(s.state + ":" + s.transport + (s.reason ? ":" + s.reason : "")));
	p.on("gap", (g) => window.gaps.push(g));
	const ch = p.subscribe(%q);
	ch.bindAll((event, data, m) => window.got.push(m.channel + "|" + event + "|" + (typeof data === "string" ? data : JSON.stringify(data))));
`

// TestBrowserGetsPublishedMessages: a page gets what `pushctl pub` sends,
// with the right channel, and handlers bound to event names fire.
func TestBrowserGetsPublishedMessages(t *testing.T) {
	ctx := browser(t)
	_, url := serve(t)
	page(t, ctx, url, "")
	js(t, ctx, `window.bound = [];
		window.p = pushctl.connect(location.origin);`+fmt.Sprintf(collect, "web.news")+`
		ch.bind("new_message", (data, m) => window.bound.push(data.text + "@" + m.channel));`)
	until(t, ctx, `p.state === "connected" && p.channel("web.news").subscribed`, 20*time.Second)
	if _, errs, code := run(t, "", "pub", "--server", url, "web.news", "--event", "new_message", `{"text":"hi"}`); code != 0 {
		t.Fatalf("pub: %s", errs)
	}
	run(t, "", "pub", "--server", url, "web.news", "plain text")
	run(t, "", "pub", "--server", url, "web.other", "not subscribed")
	until(t, ctx, `window.got.length >= 2`, 20*time.Second)
	got := eval[[]string](t, ctx, `window.got`)
	bound := eval[[]string](t, ctx, `window.bound`)
	transport := eval[string](t, ctx, `p.transport`)
	if strings.Join(got, "\n") != "web.news|new_message|{\"text\":\"hi\"}\nweb.news|message|plain text" {
		t.Fatalf("page got %q", got)
	}
	if len(bound) != 1 || bound[0] != "hi@web.news" {
		t.Fatalf("bound handler got %q", bound)
	}
	if transport != "websocket" {
		t.Fatalf("transport %q, want websocket", transport)
	}
	// Publishing from the page, acked.
	ack := eval[map[string]any](t, ctx, `p.channel("web.news").publish("from_page", {n: 1})`)
	if ack["channel"] != "web.news" || ack["subscribers"] != float64(1) {
		t.Fatalf("ack %v", ack)
	}
	until(t, ctx, `window.got.length >= 3`, 20*time.Second) // its own publish comes back

	// echo: false — the client's own publishes do not come back to it.
	js(t, ctx, `window.qgot = [];
		window.q = pushctl.connect(location.origin, {echo: false});
		q.subscribe("web.news").bindAll((e, data) => window.qgot.push(typeof data === "string" ? data : JSON.stringify(data)));`)
	until(t, ctx, `q.state === "connected" && q.channel("web.news").subscribed`, 20*time.Second)
	js(t, ctx, `q.publish("web.news", "mine", "mine")`)
	run(t, "", "pub", "--server", url, "web.news", "theirs")
	until(t, ctx, `window.qgot.length >= 1`, 20*time.Second)
	if qgot := eval[[]string](t, ctx, `window.qgot`); len(qgot) != 1 || qgot[0] != "theirs" {
		t.Fatalf("with echo off the page got %q", qgot)
	}
}

// TestBrowserFallsBack: without WebSocket the page uses SSE, without both
// it long-polls; every message arrives once, in order, either way.
func TestBrowserFallsBack(t *testing.T) {
	_, url := serve(t)
	for _, tc := range []struct{ remove, want string }{
		{"delete window.WebSocket", "sse"},
		{"delete window.WebSocket; delete window.EventSource", "longpoll"},
	} {
		t.Run(tc.want, func(t *testing.T) {
			ctx := browser(t)
			ch := "fb." + tc.want
			page(t, ctx, url, tc.remove)
			js(t, ctx, `window.p = pushctl.connect(location.origin, {pollTimeout: "2s"});`+fmt.Sprintf(collect, ch))
			until(t, ctx, `p.state === "connected" && p.channel(`+strconv.Quote(ch)+`).subscribed`, 20*time.Second)
			transport := eval[string](t, ctx, `p.transport`)
			if transport != tc.want {
				t.Fatalf("transport %q, want %q", transport, tc.want)
			}
			var lines strings.Builder
			for i := 1; i <= 200; i++ {
				fmt.Fprintf(&lines, "m%d\n", i)
			}
			if _, errs, code := run(t, lines.String(), "pub", "--server", url, ch, "--lines"); code != 0 {
				t.Fatalf("pub: %s", errs)
			}
			until(t, ctx, `window.got.length >= 200`, 30*time.Second)
			got := eval[[]string](t, ctx, `window.got`)
			for i, g := range got {
				if want := fmt.Sprintf("%s|message|m%d", ch, i+1); g != want {
					t.Fatalf("message %d: %q, want %q (of %d)", i+1, g, want, len(got))
				}
			}
			if len(got) != 200 {
				t.Fatalf("%d messages, want 200", len(got))
			}
		})
	}
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestBrowserResumesAcrossBrokerRestart: the broker (with --data-dir)
// restarts while a page listens; messages published while the page is
// reconnecting are replayed, none is lost or delivered twice.
func TestBrowserResumesAcrossBrokerRestart(t *testing.T) {
	for _, transport := range []string{"websocket", "sse", "longpoll"} {
		t.Run(transport, func(t *testing.T) {
			ctx := browser(t)
			dir := t.TempDir()
			addr := freePort(t)
			b, url := serve(t, "--data-dir", dir, "--listen", addr)
			page(t, ctx, url, "")
			js(t, ctx, `window.p = pushctl.connect(location.origin, {transports: [`+strconv.Quote(transport)+`], pollTimeout: "2s", minBackoff: 200});`+fmt.Sprintf(collect, "rs.>"))
			until(t, ctx, `p.state === "connected" && p.channel("rs.>").subscribed`, 20*time.Second)
			publish := func(from, to int) {
				var lines strings.Builder
				for i := from; i <= to; i++ {
					fmt.Fprintf(&lines, "%d\n", i)
				}
				if _, errs, code := run(t, lines.String(), "pub", "--server", url, "rs.a", "--lines"); code != 0 {
					t.Fatalf("pub: %s", errs)
				}
			}
			publish(1, 50)
			until(t, ctx, `window.got.length >= 50`, 20*time.Second)
			b.signal(syscall.SIGTERM)
			b.wait(20 * time.Second)
			until(t, ctx, `p.state !== "connected"`, 20*time.Second)
			serve(t, "--data-dir", dir, "--listen", addr)
			publish(51, 100) // before the page is back
			if _, errs, code := run(t, "", "pub", "--server", url, "rs.b", "new channel"); code != 0 {
				t.Fatalf("pub: %s", errs)
			}
			until(t, ctx, `window.got.length >= 101`, 30*time.Second)
			got := eval[[]string](t, ctx, `window.got`)
			for i := 0; i < 100; i++ {
				if want := fmt.Sprintf("rs.a|message|%d", i+1); got[i] != want {
					t.Fatalf("message %d: %q, want %q", i+1, got[i], want)
				}
			}
			if len(got) != 101 || got[100] != "rs.b|message|new channel" {
				t.Fatalf("after the restart: %d messages, last %q", len(got), got[len(got)-1])
			}
			gaps := eval[int](t, ctx, `window.gaps.length`)
			if gaps != 0 {
				t.Fatalf("%d gaps with a durable broker", gaps)
			}
		})
	}
}

// TestBrowserExpiredToken: the page learns that its token expired (a
// reason, not a bare 1006), its token function is called again, and it
// goes on from where it was.
func TestBrowserExpiredToken(t *testing.T) {
	ctx := browser(t)
	secret := "browser-secret-browser-secret-0123456789"
	env := []string{"PUSHCTL_TOKEN_SECRET=" + secret}
	_, url := serveEnv(t, env)
	mint := func(args ...string) string {
		out, errs, code := runEnv(t, env, append([]string{"token", "create"}, args...)...)
		if code != 0 {
			t.Fatalf("token create: %s", errs)
		}
		return strings.TrimSpace(out)
	}
	short := mint("--subscribe", "tok.>", "--ttl", "3s")
	long := mint("--subscribe", "tok.>", "--ttl", "1h")
	pubTok := mint("--publish", "tok.>", "--ttl", "1h")
	page(t, ctx, url, "")
	js(t, ctx, fmt.Sprintf(`window.tokens = [%q, %q]; window.calls = 0;
		window.p = pushctl.connect(location.origin, {token: async () => { window.calls++; return tokens.length > 1 ? tokens.shift() : tokens[0]; }});`, short, long)+fmt.Sprintf(collect, "tok.x"))
	until(t, ctx, `p.state === "connected" && p.channel("tok.x").subscribed`, 20*time.Second)
	run(t, "", "pub", "--server", url, "--token", pubTok, "tok.x", "before")
	until(t, ctx, `window.got.length >= 1`, 20*time.Second)
	until(t, ctx, `window.states.some((s) => s.endsWith(":token_expired"))`, 20*time.Second)
	run(t, "", "pub", "--server", url, "--token", pubTok, "tok.x", "after")
	until(t, ctx, `window.got.length >= 2`, 20*time.Second)
	got := eval[[]string](t, ctx, `window.got`)
	calls := eval[int](t, ctx, `window.calls`)
	if strings.Join(got, ",") != "tok.x|message|before,tok.x|message|after" || calls < 2 {
		t.Fatalf("got %q with %d token calls", got, calls)
	}
}

// TestConsole: the web console lists a channel, shows a published message
// with its JSON pretty-printed, and publishes one that `pushctl sub` gets.
// PUSHCTL_UPDATE_SCREENSHOT=1 writes its screenshot to docs/console.png.
func TestConsole(t *testing.T) {
	ctx := browser(t)
	_, url := serve(t)
	run(t, "", "pub", "--server", url, "orders.eu", `{"order":41,"items":["tea"]}`)
	navigate(t, ctx, url+"/")
	until(t, ctx, `[...document.querySelectorAll("#channels button.chan")].some((b) => b.textContent === "orders.eu")`, 20*time.Second)
	js(t, ctx, `document.getElementById("tail-channels").value = "orders.>";
		document.querySelector("#tail-form button").click()`)
	until(t, ctx, `document.getElementById("state").dataset.state === "connected"`, 20*time.Second)
	until(t, ctx, `document.getElementById("tail-note").textContent.includes("orders.>")`, 20*time.Second)
	// --wait-subscribers: published once the console's subscription is there.
	out, errs, code := run(t, "", "pub", "--server", url, "orders.eu", "--wait-subscribers", "1", "--timeout", "20s", `{"order":42,"items":["tea","scones"]}`)
	if code != 0 {
		t.Fatalf("pub: %s %s", out, errs)
	}
	run(t, "", "pub", "--server", url, "orders.us", "--event", "shipped", `order 7 left the warehouse`)
	until(t, ctx, `document.querySelectorAll("#messages li").length >= 2`, 20*time.Second)
	js(t, ctx, `document.querySelector("#messages li:last-child button").click()`)
	detail := eval[string](t, ctx, `document.getElementById("detail-body").textContent`)
	if !strings.Contains(detail, "\"order\": 42") || !strings.Contains(detail, "\"scones\"") {
		t.Fatalf("detail view shows %q", detail)
	}

	sub := start(t, nil, nil, "sub", "--server", url, "console.back", "--count", "1", "--timeout", "30s")
	if !waitSubscribed(url, "console.back") {
		t.Fatalf("pushctl sub did not subscribe within 20s; its stderr:\n%s", sub.Stderr())
	}
	js(t, ctx, `document.getElementById("pub-channel").value = "console.back";
		document.getElementById("pub-event").value = "note";
		document.getElementById("pub-data").value = "from the console";
		document.querySelector("#pub-form button").click()`)
	if line := sub.readLine(30 * time.Second); line != "from the console" {
		t.Fatalf("sub got %q", line)
	}
	if code := sub.wait(10 * time.Second); code != 0 {
		t.Fatalf("sub exited %d", code)
	}
	until(t, ctx, `document.getElementById("pub-result").textContent.startsWith("Published")`, 10*time.Second)
	// The channel list refreshes by itself (every 2s) and counts the console's pattern subscription.
	until(t, ctx, `[...document.querySelectorAll("#channels tbody tr")].some((r) => r.textContent.startsWith("orders.us1"))`, 10*time.Second)

	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)) // quality 100 is a PNG
	if err != nil {
		t.Fatal(err)
	}
	shot := filepath.Join(t.TempDir(), "console.png")
	if os.Getenv("PUSHCTL_UPDATE_SCREENSHOT") != "" {
		shot = "../../docs/console.png"
	}
	if err := os.WriteFile(shot, png, 0o644); err != nil {
		t.Fatal(err)
	}
}

// waitSubscribed waits (on the broker, up to 20s) until channel has a
// subscriber.
func waitSubscribed(url, channel string) bool {
	resp, err := http.Get(url + "/channels/" + channel + "?wait_subscribers=1&timeout=20s")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == 200
}

// TestBrowserPatternAfterChannel: a page that subscribes to a channel and
// then to a pattern matching it gets the pattern's other channels, on
// every transport. (The broker refuses a pattern cursor without a time;
// pushctl.js sent one for a pattern it had not started yet.)
func TestBrowserPatternAfterChannel(t *testing.T) {
	ctx := browser(t)
	_, url := serve(t)
	page(t, ctx, url, "")
	for _, tr := range []string{"websocket", "sse", "longpoll"} {
		a, pat, b := "pa."+tr+".a", "pa."+tr+".>", "pa."+tr+".b"
		js(t, ctx, fmt.Sprintf(`window.got = [];
			window.p = pushctl.connect(location.origin, {transports: [%q]});
			p.subscribe(%q).bindAll((e, data, m) => window.got.push(m.channel + "|" + data)); true`, tr, a))
		until(t, ctx, fmt.Sprintf(`p.state === "connected" && p.channel(%q).subscribed`, a), 20*time.Second)
		run(t, "", "pub", "--server", url, a, "one")
		until(t, ctx, `window.got.length >= 1`, 20*time.Second)
		js(t, ctx, fmt.Sprintf(`p.subscribe(%q).bindAll((e, data, m) => window.got.push(m.channel + "|" + data)); true`, pat))
		// (A long-poll says it is subscribed only when its next poll
		// answers: the publish waits for the subscriber instead.)
		if _, errs, code := run(t, "", "pub", "--server", url, "--wait-subscribers", "1", "--timeout", "20s", b, "two"); code != 0 {
			t.Fatalf("%s: pub: %s", tr, errs)
		}
		until(t, ctx, `window.got.includes("`+b+`|two")`, 20*time.Second)
		js(t, ctx, `p.close(); true`)
	}
}
