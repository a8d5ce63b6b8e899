//go:build cgo && !nozmq

package e2e

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/pushctl/pushctl/internal/redistest"
)

// pusherHook is a Pusher app's webhook endpoint: it checks each body's
// X-Pusher-Key and X-Pusher-Signature (hex HMAC-SHA256 of the body with
// the app's secret), as the Pusher SDKs' Webhook does, keeps the events
// in the order they came, and can be down (503) for a while.
type pusherHook struct {
	t           *testing.T
	key, secret string
	srv         *httptest.Server
	mu          sync.Mutex
	evs         []string // "name channel[ user]"
	bad         []string
	down        bool
	more        chan struct{}
}

func newPusherHook(t *testing.T, key, secret string) *pusherHook {
	h := &pusherHook{t: t, key: key, secret: secret, more: make(chan struct{}, 1)}
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		h.mu.Lock()
		defer h.mu.Unlock()
		if h.down {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		m := hmac.New(sha256.New, []byte(h.secret))
		m.Write(body)
		if r.Header.Get("X-Pusher-Key") != h.key || !hmac.Equal([]byte(r.Header.Get("X-Pusher-Signature")), []byte(hex.EncodeToString(m.Sum(nil)))) {
			h.bad = append(h.bad, fmt.Sprintf("key %q signature %q: %s", r.Header.Get("X-Pusher-Key"), r.Header.Get("X-Pusher-Signature"), body))
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		var b struct {
			TimeMs int64 `json:"time_ms"`
			Events []struct {
				Name    string `json:"name"`
				Channel string `json:"channel"`
				UserID  string `json:"user_id"`
			} `json:"events"`
		}
		if err := json.Unmarshal(body, &b); err != nil || b.TimeMs == 0 || len(b.Events) == 0 {
			h.bad = append(h.bad, fmt.Sprintf("body %v: %s", err, body))
		}
		for _, ev := range b.Events {
			s := ev.Name + " " + ev.Channel
			if ev.UserID != "" {
				s += " " + ev.UserID
			}
			h.evs = append(h.evs, s)
		}
		select {
		case h.more <- struct{}{}:
		default:
		}
	}))
	t.Cleanup(h.srv.Close)
	return h
}

func (h *pusherHook) setDown(down bool) {
	h.mu.Lock()
	h.down = down
	h.mu.Unlock()
}

// channel is the events of one Pusher channel so far, in the order
// they came.
func (h *pusherHook) channel(ch string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for _, ev := range h.evs {
		if f := strings.Fields(ev); f[1] == ch {
			out = append(out, ev)
		}
	}
	return out
}

// waitFor waits until the channel has an event ev ("name channel[
// user]") and returns the channel's events.
func (h *pusherHook) waitFor(ch, ev string, timeout time.Duration) []string {
	h.t.Helper()
	deadline := time.After(timeout)
	for {
		evs := h.channel(ch)
		for _, e := range evs {
			if e == ev {
				return evs
			}
		}
		select {
		case <-h.more:
		case <-deadline:
			h.t.Fatalf("no %q within %s; %s's events: %q", ev, timeout, ch, evs)
		}
	}
}

// pusherClient is a Pusher protocol 7 client on a WebSocket, as
// pusher-js speaks it.
type pusherClient struct {
	t        *testing.T
	c        *websocket.Conn
	socketID string
}

func dialPusher(t *testing.T, node, key string) *pusherClient {
	t.Helper()
	c := dialWS(t, node, "/app/"+key+"?protocol=7", "")
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	var established struct {
		Event string `json:"event"`
		Data  string `json:"data"`
	}
	if err := c.ReadJSON(&established); err != nil || established.Event != "pusher:connection_established" {
		t.Fatalf("Pusher connection: %v %+v", err, established)
	}
	var conn struct {
		SocketID string `json:"socket_id"`
	}
	json.Unmarshal([]byte(established.Data), &conn)
	return &pusherClient{t: t, c: c, socketID: conn.SocketID}
}

// subscribe subscribes to a public channel, or to a presence channel as
// user (signed as the application's auth endpoint signs it).
func (pc *pusherClient) subscribe(key, secret, channel, user string) {
	pc.t.Helper()
	data := map[string]string{"channel": channel}
	if user != "" {
		channelData := `{"user_id":"` + user + `"}`
		m := hmac.New(sha256.New, []byte(secret))
		m.Write([]byte(pc.socketID + ":" + channel + ":" + channelData))
		data["auth"] = key + ":" + hex.EncodeToString(m.Sum(nil))
		data["channel_data"] = channelData
	}
	pc.c.WriteJSON(map[string]any{"event": "pusher:subscribe", "data": data})
	waitPusher(pc.t, pc.c, "pusher_internal:subscription_succeeded")
}

// TestPusherWebhooksSurviveTheLeaseHolder: a Pusher app with a webhook
// on three nodes on Redis. Its webhooks are sent from the event
// channels by the one node holding the URL's lease (no client is on
// it). The receiver answers 503 while public and presence channels are
// occupied, joined, left and vacated on the two other nodes; the holder,
// with those events queued and retried, is killed with SIGKILL; another
// node takes the lease and, once the receiver is back, sends every
// channel_occupied, member_added, member_removed and channel_vacated
// exactly once, each channel's in order, in Pusher's body format with
// valid signatures, and nothing else (no subscribed/unsubscribed, which
// Pusher does not have). Each node used to send the events it decided
// from its memory, giving up after five attempts: they were lost.
func TestPusherWebhooksSurviveTheLeaseHolder(t *testing.T) {
	const key, secret = "relaykey", "pusher-relay-secret-0123456789"
	h := newPusherHook(t, key, secret)
	rs := redistest.Start(t, redistest.Options{})
	app := "4245:" + key + ":" + secret + "?prefix=app1.&webhook=" + url.QueryEscape(h.srv.URL+"/pusher")
	args := []string{"--broker", rs.URL(), "--pusher-app", app, "--node-timeout", "2s", "--webhook-retry", "10m", "--presence-grace", "0"}
	var procs []*proc
	var nodes []string
	for range 3 {
		p, u := serve(t, args...)
		procs, nodes = append(procs, p), append(nodes, u)
	}
	holder := func(except int) int {
		t.Helper()
		deadline := time.After(30 * time.Second)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			for i, u := range nodes {
				if i != except && metricValue(t, u, "pushctl_webhook_leases_held") == 1 {
					return i
				}
			}
			select {
			case <-tick.C:
			case <-deadline:
				t.Fatal("no node holds the Pusher webhook's lease")
			}
		}
	}
	waitMetric := func(u, name string, n float64) {
		t.Helper()
		deadline := time.After(60 * time.Second)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for metricValue(t, u, name) < n {
			select {
			case <-tick.C:
			case <-deadline:
				t.Fatalf("%s: %s %v, want %v", u, name, metricValue(t, u, name), n)
			}
		}
	}
	lead := holder(-1)
	var others []string
	for i, u := range nodes {
		if i != lead {
			others = append(others, u)
		}
	}

	// Taken while the receiver is up: the holder stores its position.
	pc := dialPusher(t, others[0], key)
	pc.subscribe(key, secret, "news", "")
	h.waitFor("news", "channel_occupied news", 30*time.Second)
	pc.c.Close()
	h.waitFor("news", "channel_vacated news", 30*time.Second)

	// Down: two members of each presence channel on the two nodes, and
	// two subscribers of each public one, come and go.
	h.setDown(true)
	const rooms = 3
	for i := range rooms {
		room := "presence-room-" + strconv.Itoa(i)
		a := dialPusher(t, others[i%2], key)
		a.subscribe(key, secret, room, "ann"+strconv.Itoa(i))
		b := dialPusher(t, others[(i+1)%2], key)
		b.subscribe(key, secret, room, "bob"+strconv.Itoa(i))
		pub := "public-" + strconv.Itoa(i)
		c := dialPusher(t, others[(i+1)%2], key)
		c.subscribe(key, secret, pub, "")
		d := dialPusher(t, others[i%2], key)
		d.subscribe(key, secret, pub, "")
		a.c.Close()
		b.c.Close()
		c.c.Close()
		d.c.Close()
	}
	waitMetric(nodes[lead], "pushctl_webhook_attempts_failed_total", 3)
	killed := time.Now()
	procs[lead].cmd.Process.Signal(syscall.SIGKILL)
	procs[lead].wait(10 * time.Second)
	next := holder(lead)
	t.Logf("lease taken over %s after the kill (--node-timeout 2s)", time.Since(killed).Round(time.Millisecond))
	waitMetric(nodes[next], "pushctl_webhook_attempts_failed_total", 1)
	h.setDown(false)
	back := time.Now()

	for i := range rooms {
		room := "presence-room-" + strconv.Itoa(i)
		h.waitFor(room, "channel_vacated "+room, 60*time.Second)
		h.waitFor("public-"+strconv.Itoa(i), "channel_vacated public-"+strconv.Itoa(i), 60*time.Second)
	}
	t.Logf("every channel vacated %s after the receiver came back", time.Since(back).Round(time.Millisecond))
	// A last channel after everything: whatever would come twice (sent
	// again by the new holder) has come by the time its event does.
	pc = dialPusher(t, others[1], key)
	pc.subscribe(key, secret, "last", "")
	h.waitFor("last", "channel_occupied last", 60*time.Second)

	check := func(ch string, want ...string) {
		t.Helper()
		got := h.channel(ch)
		if strings.Join(got, "|") != strings.Join(want, "|") {
			t.Errorf("%s: %q, want %q", ch, got, want)
		}
	}
	check("news", "channel_occupied news", "channel_vacated news")
	for i := range rooms {
		room, n := "presence-room-"+strconv.Itoa(i), strconv.Itoa(i)
		got := h.channel(room)
		// The two members' events are decided by different nodes, and a
		// member leaves after its subscription ends (the last one's
		// member_removed may follow channel_vacated): the certain order
		// is occupied first, and each member added before removed.
		counts := map[string]int{}
		pos := map[string]int{}
		for j, ev := range got {
			counts[ev]++
			pos[ev] = j
		}
		if len(got) == 0 || got[0] != "channel_occupied "+room || counts["channel_occupied "+room] != 1 || counts["channel_vacated "+room] != 1 {
			t.Errorf("%s: %q, want channel_occupied first and channel_vacated, once each", room, got)
		}
		for _, u := range []string{"ann" + n, "bob" + n} {
			added, removed := "member_added "+room+" "+u, "member_removed "+room+" "+u
			if counts[added] != 1 || counts[removed] != 1 || pos[added] > pos[removed] {
				t.Errorf("%s: %q, want %s's member_added then member_removed, once each", room, got, u)
			}
		}
		if len(got) != 6 {
			t.Errorf("%s: %d events %q, want 6", room, len(got), got)
		}
		check("public-"+n, "channel_occupied public-"+n, "channel_vacated public-"+n)
	}
	for _, u := range others {
		if d := metricValue(t, u, "pushctl_webhook_events_dropped_total") + metricValue(t, u, "pushctl_webhook_gaps_total"); d != 0 {
			t.Errorf("%s: dropped or gaps: %v", u, d)
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.bad) > 0 {
		t.Fatalf("bad bodies: %q", h.bad)
	}
}
