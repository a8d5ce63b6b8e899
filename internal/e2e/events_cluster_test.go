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
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/pushctl/pushctl/internal/redistest"
)

// count counts a channel's events named name.
func count(evs []lifecycleEvent, name string) int {
	n := 0
	for _, ev := range evs {
		if ev.Name == name {
			n++
		}
	}
	return n
}

// bySeq is evs ordered by sequence (several nodes send webhooks, each
// in order; the sequence orders them all), checked to be 1, 2, 3… once
// each.
func bySeq(t *testing.T, what string, evs []lifecycleEvent) []lifecycleEvent {
	t.Helper()
	evs = slices.Clone(evs)
	slices.SortFunc(evs, func(a, b lifecycleEvent) int { return int(a.Seq) - int(b.Seq) })
	for i, ev := range evs {
		if ev.Seq != uint64(i+1) || ev.Epoch != evs[0].Epoch {
			t.Fatalf("%s: event %d has seq %d (want each of 1…%d once): %+v", what, i, ev.Seq, len(evs), evs)
		}
	}
	return evs
}

// TestLifecycleEventsAcrossNodes: three nodes on Redis send webhooks to
// one receiver. Subscribers of one channel on all three make one
// channel_occupied and, once all left, one channel_vacated. A node killed
// with SIGKILL while it holds a member, a subscription and a connection:
// the survivors tell member_removed, unsubscribed and connection_closed
// once each (reason node_lost), and the channel is vacated once when the
// last subscriber, on another node, leaves. The receiver is down from the
// kill for about 15 s: it gets all of that afterwards, nothing dropped.
func TestLifecycleEventsAcrossNodes(t *testing.T) {
	rc := newReceiver(t)
	rs := redistest.Start(t, redistest.Options{})
	args := []string{"--broker", rs.URL(), "--webhook-delay", "0", "--presence-grace", "0", "--node-timeout", "2s"}
	env, tok := eventsTokens(t)
	_, a := eventsNode(t, rc, env, args...)
	bp, b := eventsNode(t, rc, env, args...)
	_, c := eventsNode(t, rc, env, args...)
	alice := tok("--subscribe", ">", "--subject", "alice", "--member", "alice")
	bob := tok("--subscribe", ">", "--subject", "bob")

	// One occupied, one vacated, for subscribers on three nodes.
	var conns []func()
	for i, node := range []string{a, b, c} {
		ws := dialWS(t, node, "/sub/room.c", bob)
		conns = append(conns, func() { ws.Close() })
		if evs := rc.channel("room.c"); count(evs, "subscribed") < i+1 {
			rc.waitCount("room.c", i+2, 20*time.Second) // occupied + the subscribes so far
		}
	}
	for _, cl := range conns {
		cl()
	}
	evs := rc.waitFor("room.c", "channel_vacated", "", 30*time.Second)
	evs = rc.waitCount("room.c", 8, 20*time.Second)
	evs = bySeq(t, "room.c", evs)
	if count(evs, "channel_occupied") != 1 || count(evs, "channel_vacated") != 1 || count(evs, "subscribed") != 3 || count(evs, "unsubscribed") != 3 ||
		evs[0].Name != "channel_occupied" || evs[7].Name != "channel_vacated" {
		t.Fatalf("room.c across three nodes: %v", names(evs))
	}

	// Alice on node B: a member of room.k, subscribed; bob subscribed on A.
	ka := dialWS(t, a, "/sub/room.k", bob)
	rc.waitFor("room.k", "subscribed", "bob", 20*time.Second)
	ws := dialWS(t, b, "/ws", alice)
	if got := wsReply(t, ws, map[string]any{"type": "subscribe", "ref": ref(), "channel": "room.k"}); got != "ok" {
		t.Fatalf("alice subscribing: %s", got)
	}
	if got := wsReply(t, ws, map[string]any{"type": "join", "ref": ref(), "channel": "room.k"}); got != "ok" {
		t.Fatalf("alice joining: %s", got)
	}
	rc.waitFor("room.k", "member_added", "alice", 20*time.Second)
	before := len(rc.channel(""))
	// The receiver is down from before the kill until the survivors have
	// failed to deliver for a while (their back-off reaches seconds): it
	// gets everything afterwards.
	rc.setDown(true)
	bp.cmd.Process.Signal(syscall.SIGKILL)
	bp.wait(10 * time.Second)
	failed := func() float64 {
		return metricValue(t, a, "pushctl_webhook_attempts_failed_total") + metricValue(t, c, "pushctl_webhook_attempts_failed_total")
	}
	waitFailed := func(n float64) {
		deadline := time.After(60 * time.Second)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for failed() < n {
			select {
			case <-tick.C:
			case <-deadline:
				t.Fatalf("webhook failures: %v, want %v", failed(), n)
			}
		}
	}
	waitFailed(6)
	// The last subscriber leaves while the receiver is still down.
	ka.Close()
	waitFailed(failed() + 2)
	rc.setDown(false)
	rc.waitFor("room.k", "member_removed", "alice", 30*time.Second)
	rc.waitFor("room.k", "unsubscribed", "alice", 30*time.Second)
	rc.waitFor("room.k", "channel_vacated", "", 30*time.Second)
	evs = bySeq(t, "room.k", rc.waitCount("room.k", 7, 20*time.Second))
	want := map[string]int{"channel_occupied": 1, "subscribed": 2, "member_added": 1, "member_removed": 1, "unsubscribed": 2, "channel_vacated": 1}
	for name, n := range want {
		if count(evs, name) != n {
			t.Fatalf("room.k: %d %s, want %d: %v", count(evs, name), name, n, names(evs))
		}
	}
	if last := evs[len(evs)-1]; last.Name != "channel_vacated" {
		t.Fatalf("room.k: the last event is %s: %v", last.Name, names(evs))
	}
	for _, ev := range evs {
		if ev.Name == "unsubscribed" && ev.UserID == "alice" && (ev.Reason != "node_lost" || ev.ReapedBy == "" || ev.ReapedBy == ev.Node) {
			t.Fatalf("alice's unsubscribe, told by a survivor: %+v", ev)
		}
	}
	if d := metricValue(t, a, "pushctl_webhook_events_dropped_total") + metricValue(t, c, "pushctl_webhook_events_dropped_total"); d != 0 {
		t.Fatalf("webhook events dropped while the receiver was down: %v", d)
	}
	// Alice's connection on B is closed once, by a survivor.
	rc.waitFor("", "connection_closed", "alice", 30*time.Second)
	var closedB []lifecycleEvent
	for _, ev := range rc.channel("")[before:] {
		if ev.Name == "connection_closed" && ev.Reason == "node_lost" {
			closedB = append(closedB, ev)
		}
	}
	if len(closedB) != 1 || closedB[0].UserID != "alice" || closedB[0].Transport != "websocket" {
		t.Fatalf("connections of the killed node closed: %+v", closedB)
	}
	if closedB[0].ReapedBy == "" || closedB[0].ReapedBy == closedB[0].Node {
		t.Fatalf("closed by whom: %+v", closedB[0])
	}
}

// TestPusherWebhooksAcrossNodes: an app's Pusher clients on three nodes
// of one channel make one channel_occupied and one channel_vacated
// webhook for the cluster (each node used to send its own).
func TestPusherWebhooksAcrossNodes(t *testing.T) {
	const secret = "pusher-events-secret-0123456789"
	var mu sync.Mutex
	var got []string
	more := make(chan struct{}, 1)
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		m := hmac.New(sha256.New, []byte(secret))
		m.Write(body)
		var b struct {
			Events []struct {
				Name    string `json:"name"`
				Channel string `json:"channel"`
			} `json:"events"`
		}
		json.Unmarshal(body, &b)
		mu.Lock()
		if r.Header.Get("X-Pusher-Signature") != hex.EncodeToString(m.Sum(nil)) {
			got = append(got, "bad signature")
		}
		for _, ev := range b.Events {
			got = append(got, ev.Name+" "+ev.Channel)
		}
		mu.Unlock()
		select {
		case more <- struct{}{}:
		default:
		}
	}))
	t.Cleanup(hook.Close)
	wait := func(what string, n int) []string {
		t.Helper()
		deadline := time.After(30 * time.Second)
		for {
			mu.Lock()
			c := 0
			for _, g := range got {
				if g == what {
					c++
				}
			}
			all := slices.Clone(got)
			mu.Unlock()
			if c >= n {
				return all
			}
			select {
			case <-more:
			case <-deadline:
				t.Fatalf("no %d× %q within 30s: %v", n, what, all)
			}
		}
	}
	rs := redistest.Start(t, redistest.Options{})
	app := "4244:clusterkey:" + secret + "?webhook=" + url.QueryEscape(hook.URL)
	var nodes []string
	for i := 0; i < 3; i++ {
		_, u := serve(t, "--broker", rs.URL(), "--pusher-app", app)
		nodes = append(nodes, u)
	}
	var clients []*websocket.Conn
	for _, n := range nodes {
		pc := dialWS(t, n, "/app/clusterkey?protocol=7", "")
		pc.WriteJSON(map[string]any{"event": "pusher:subscribe", "data": map[string]string{"channel": "news"}})
		waitPusher(t, pc, "pusher_internal:subscription_succeeded")
		clients = append(clients, pc)
	}
	wait("channel_occupied news", 1)
	for _, pc := range clients {
		pc.Close()
	}
	wait("channel_vacated news", 1)
	// Occupied again, from the last node: it comes after anything that
	// node had queued.
	pc := dialWS(t, nodes[2], "/app/clusterkey?protocol=7", "")
	pc.WriteJSON(map[string]any{"event": "pusher:subscribe", "data": map[string]string{"channel": "news"}})
	all := wait("channel_occupied news", 2)
	want := []string{"channel_occupied news", "channel_vacated news", "channel_occupied news"}
	if !slices.Equal(all, want) {
		t.Fatalf("Pusher webhooks from three nodes: %v, want %v", all, want)
	}
}

// TestLifecycleEventsBurstOnRedis: 3,000 WebSocket subscribers of their
// own channels come and go at once on a node on Redis; every one of the
// 18,000 events reaches the webhook, none is dropped. (The first version
// published a stripe's events one round trip at a time and dropped the
// connections' beyond its queue.)
func TestLifecycleEventsBurstOnRedis(t *testing.T) {
	const n = 3000
	rc := newReceiver(t)
	rs := redistest.Start(t, redistest.Options{})
	_, u := eventsNode(t, rc, nil, "--broker", rs.URL(), "--webhook-delay", "0", "--max-conns-per-ip", "0")
	conns := make([]*websocket.Conn, n)
	for i := range conns {
		c, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(u, "http")+"/sub/burst."+strconv.Itoa(i), nil)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		conns[i] = c
	}
	for _, c := range conns {
		c.Close()
	}
	deadline := time.After(120 * time.Second)
	for {
		rc.mu.Lock()
		got := len(rc.evs)
		rc.mu.Unlock()
		if got >= 6*n {
			break
		}
		select {
		case <-rc.more:
		case <-deadline:
			t.Fatalf("%d events of %d within 120s; dropped %v", got, 6*n, metricValue(t, u, "pushctl_events_dropped_total"))
		}
	}
	if d := metricValue(t, u, "pushctl_events_dropped_total") + metricValue(t, u, "pushctl_webhook_events_dropped_total"); d != 0 {
		t.Fatalf("dropped %v", d)
	}
}

// TestWebhooksSurviveTheLeaseHolder: three nodes on Redis; one holds the
// webhook URL's lease and sends the cluster's events from the event
// channels. The receiver takes a first channel's events, then answers
// 503 while events happen on the two other nodes; the holder, with
// events queued and being retried, is killed with SIGKILL. Another node
// takes the lease and resumes from the stored positions: once the
// receiver is back it has every event of every channel, in order by
// seq, none missing; what came twice (the body in flight at the kill,
// at most) is counted.
func TestWebhooksSurviveTheLeaseHolder(t *testing.T) {
	rc := newReceiver(t)
	rs := redistest.Start(t, redistest.Options{})
	args := []string{"--broker", rs.URL(), "--webhook-delay", "0", "--node-timeout", "2s", "--webhook-retry", "10m"}
	var procs []*proc
	var urls []string
	for range 3 {
		p, u := eventsNode(t, rc, nil, args...)
		procs, urls = append(procs, p), append(urls, u)
	}
	holder := func(except int) int {
		t.Helper()
		deadline := time.After(30 * time.Second)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			for i, u := range urls {
				if i != except && metricValue(t, u, "pushctl_webhook_leases_held") == 1 {
					return i
				}
			}
			select {
			case <-tick.C:
			case <-deadline:
				t.Fatal("no node holds the webhook lease")
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
	for i, u := range urls {
		if i != lead {
			others = append(others, u)
		}
	}
	// The receiver takes room.a's events: the holder stores its position.
	ws := dialWS(t, others[0], "/sub/room.a", "")
	rc.waitFor("room.a", "subscribed", "", 20*time.Second)
	ws.Close()
	rc.waitFor("room.a", "channel_vacated", "", 20*time.Second)
	// Down: events on the other two nodes are queued on the holder.
	rc.setDown(true)
	const rooms = 6
	subscribe := func(node, ch string) *websocket.Conn {
		t.Helper()
		ws := dialWS(t, node, "/ws", "")
		if got := wsReply(t, ws, map[string]any{"type": "subscribe", "ref": ref(), "channel": ch}); got != "ok" {
			t.Fatalf("subscribing to %s: %s", ch, got)
		}
		return ws
	}
	for i := range rooms {
		// Both counted by the cluster before either leaves: one
		// occupied, one vacated.
		ws := subscribe(others[i%2], "room."+strconv.Itoa(i))
		ws2 := subscribe(others[(i+1)%2], "room."+strconv.Itoa(i))
		ws.Close()
		ws2.Close()
	}
	subscribe(others[1], "room.a").Close()
	waitMetric(urls[lead], "pushctl_webhook_attempts_failed_total", 3)
	killed := time.Now()
	procs[lead].cmd.Process.Signal(syscall.SIGKILL)
	procs[lead].wait(10 * time.Second)
	next := holder(lead)
	t.Logf("lease taken over %s after the kill (--node-timeout 2s)", time.Since(killed).Round(time.Millisecond))
	// The new holder resumed and is retrying while the receiver is down.
	waitMetric(urls[next], "pushctl_webhook_attempts_failed_total", 1)
	rc.setDown(false)
	back := time.Now()

	check := func(ch string, want int) int {
		t.Helper()
		var evs []lifecycleEvent
		deadline := time.After(60 * time.Second)
		for {
			evs = rc.channel(ch)
			last := uint64(0)
			for _, ev := range evs {
				last = max(last, ev.Seq)
			}
			if last >= uint64(want) {
				break
			}
			select {
			case <-rc.more:
			case <-deadline:
				t.Fatalf("%s: %d events within 60s, want seq 1…%d: %v", ch, len(evs), want, names(evs))
			}
		}
		// In order: each event the first time it came is the next seq.
		seen := map[uint64]bool{}
		dups := 0
		for _, ev := range evs {
			if seen[ev.Seq] {
				dups++
				continue
			}
			if ev.Seq != uint64(len(seen)+1) || ev.Epoch != evs[0].Epoch {
				t.Fatalf("%s: seq %d came after %d others: %v", ch, ev.Seq, len(seen), evs)
			}
			seen[ev.Seq] = true
		}
		if len(seen) != want {
			t.Fatalf("%s: seqs %v, want 1…%d", ch, seen, want)
		}
		return dups
	}
	// room.a: occupied, subscribed, unsubscribed, vacated, twice.
	dups := check("room.a", 8)
	for i := range rooms {
		// Occupied, two subscribed, two unsubscribed, vacated.
		dups += check("room."+strconv.Itoa(i), 6)
	}
	// The connections: 14, opened and closed.
	dups += check("", 28)
	// A body sent again is one answered 2xx whose position the holder
	// had not stored when it died; here the body in flight at the kill
	// was answered 503, and the holder stores a body's positions before
	// it posts the next: nothing may come twice.
	if dups != 0 {
		t.Fatalf("%d events came twice", dups)
	}
	t.Logf("every event received %s after the receiver came back", time.Since(back).Round(time.Millisecond))
	for _, u := range others {
		if d := metricValue(t, u, "pushctl_webhook_events_dropped_total") + metricValue(t, u, "pushctl_webhook_gaps_total"); d != 0 {
			t.Fatalf("%s: dropped or gaps: %v", u, d)
		}
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if len(rc.bad) > 0 {
		t.Fatalf("bad bodies: %v", rc.bad)
	}
}

// TestNamespaceWebhookOnRedis: on Redis a namespace's webhook is sent by
// the holder of its lease from its channels' event channels: its
// channels' events, in order, and no other channel's or connection's.
func TestNamespaceWebhookOnRedis(t *testing.T) {
	rc := newReceiver(t)
	rs := redistest.Start(t, redistest.Options{})
	_, url := serve(t, "--broker", rs.URL(), "--webhook-secret", webhookSecret, "--webhook-delay", "0",
		"--namespace", "name=orders,match=orders.>,publish-events=true,webhook="+rc.srv.URL+"/orders", "--events")
	news := dialWS(t, url, "/sub/news", "")
	c := dialWS(t, url, "/sub/orders.eu", "")
	rc.waitFor("orders.eu", "subscribed", "", 20*time.Second)
	if _, errOut, code := run(t, "", "pub", "-s", url, "orders.eu", "hello"); code != 0 {
		t.Fatalf("pub: %s", errOut)
	}
	rc.waitFor("orders.eu", "published", "", 20*time.Second)
	c.Close()
	news.Close()
	evs := rc.waitFor("orders.eu", "channel_vacated", "", 20*time.Second)
	if got := strings.Join(names(evs), " "); got != "channel_occupied subscribed published unsubscribed channel_vacated" {
		t.Fatalf("orders.eu: %s", got)
	}
	inOrder(t, "orders.eu", evs, 0)
	rc.mu.Lock()
	defer rc.mu.Unlock()
	for _, ev := range rc.evs {
		if ev.Channel != "orders.eu" {
			t.Fatalf("the orders webhook got %+v", ev)
		}
	}
}

// TestLifecycleEventsPairedAfterKill: a node on Redis is killed with
// SIGKILL in the middle of a burst of WebSocket subscribers opening and
// closing; the survivor tells its ends. Every connection_opened of the
// killed node is then closed exactly once, every subscribed
// unsubscribed exactly once, and no end is told of what was never
// opened: recording a connection or subscription for the survivors and
// appending its event are one step in Redis. (They were two: an event
// published but not recorded when the node died was never ended.)
func TestLifecycleEventsPairedAfterKill(t *testing.T) {
	rc := newReceiver(t)
	rs := redistest.Start(t, redistest.Options{})
	args := []string{"--broker", rs.URL(), "--webhook-delay", "0", "--node-timeout", "2s", "--webhook-retry", "10m", "--max-conns-per-ip", "0"}
	_, a := eventsNode(t, rc, nil, args...)
	// A holds the webhook's lease before B starts: the webhooks do not
	// change hands (which may send a body twice).
	deadline := time.After(30 * time.Second)
	for metricValue(t, a, "pushctl_webhook_leases_held") != 1 {
		select {
		case <-rc.more:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			t.Fatal("A does not hold the webhook lease")
		}
	}
	bp, b := eventsNode(t, rc, nil, args...)
	var bNode string
	opened := func() int {
		rc.mu.Lock()
		defer rc.mu.Unlock()
		n := 0
		for _, ev := range rc.evs {
			if ev.Name == "connection_opened" && ev.Transport == "websocket" && (bNode == "" || ev.Node == bNode) {
				bNode = ev.Node
				n++
			}
		}
		return n
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { // connections come and go until B dies
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			c, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(b, "http")+"/sub/burst."+strconv.Itoa(i%50), nil)
			if err != nil {
				return // B is dead
			}
			if i%2 == 0 {
				c.Close() // every other one stays until B dies
			} else {
				defer c.Close()
			}
		}
	}()
	deadline = time.After(60 * time.Second)
	for opened() < 400 {
		select {
		case <-rc.more:
		case <-deadline:
			t.Fatalf("%d connections opened within 60s", opened())
		}
	}
	bp.cmd.Process.Signal(syscall.SIGKILL)
	bp.wait(10 * time.Second)
	close(stop)
	<-done

	// Each of B's connections and subscriptions ended once.
	type tally struct{ open, closed int }
	check := func() (bad []string) {
		rc.mu.Lock()
		defer rc.mu.Unlock()
		conns := map[string]*tally{}
		subs := map[string]*tally{}
		for _, ev := range rc.evs {
			if ev.Node != bNode {
				continue
			}
			var tl *tally
			switch ev.Name {
			case "connection_opened", "connection_closed":
				if conns[ev.ConnectionID] == nil {
					conns[ev.ConnectionID] = &tally{}
				}
				tl = conns[ev.ConnectionID]
			case "subscribed", "unsubscribed":
				if subs[ev.Channel] == nil {
					subs[ev.Channel] = &tally{}
				}
				tl = subs[ev.Channel]
			default:
				continue
			}
			if ev.Name == "connection_opened" || ev.Name == "subscribed" {
				tl.open++
			} else {
				tl.closed++
			}
		}
		for id, tl := range conns {
			if tl.open != 1 || tl.closed != 1 {
				bad = append(bad, fmt.Sprintf("connection %s opened %d closed %d", id, tl.open, tl.closed))
			}
		}
		for ch, tl := range subs {
			if tl.open != tl.closed {
				bad = append(bad, fmt.Sprintf("%s subscribed %d unsubscribed %d", ch, tl.open, tl.closed))
			}
		}
		slices.Sort(bad)
		return bad
	}
	deadline = time.After(60 * time.Second)
	for {
		bad := check()
		if len(bad) == 0 {
			break
		}
		select {
		case <-rc.more:
		case <-time.After(time.Second):
		case <-deadline:
			t.Fatalf("60s after the kill, %d unpaired: %v", len(bad), bad)
		}
	}
	// Nothing more comes: a last channel's events after everything.
	ws := dialWS(t, a, "/sub/last", "")
	rc.waitFor("last", "subscribed", "", 20*time.Second)
	ws.Close()
	if bad := check(); len(bad) > 0 {
		t.Fatalf("unpaired after all: %v", bad)
	}
	t.Logf("%d connections of the killed node, each opened and closed once", opened())
}

// wsJoinOK joins channel's presence as id on a new WebSocket of node and
// waits for the answer; an error when node refuses or is gone (for use
// off the test's goroutine).
func wsJoinOK(node, channel, id string) (*websocket.Conn, error) {
	c, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(node, "http")+"/ws", nil)
	if err != nil {
		return nil, err
	}
	r := ref()
	if err := c.WriteJSON(map[string]any{"type": "join", "ref": r, "channel": channel, "id": id}); err != nil {
		c.Close()
		return nil, err
	}
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	for {
		var f struct {
			Type string `json:"type"`
			Ref  string `json:"ref"`
			Code string `json:"code"`
		}
		if err := c.ReadJSON(&f); err != nil {
			c.Close()
			return nil, err
		}
		if f.Ref != r {
			continue
		}
		c.SetReadDeadline(time.Time{})
		if f.Type == "error" {
			c.Close()
			return nil, fmt.Errorf("join %s as %s: %s", channel, id, f.Code)
		}
		return c, nil
	}
}

// TestMemberEventsOnceAfterKill: presence members of two channels join
// and leave on the three nodes of a cluster on Redis; one node is killed
// with SIGKILL in the middle of a stream of joins and leaves on it. Once
// every member is gone, each channel's events are 1, 2, 3… once each,
// and each member's are member_added, member_removed, member_added… in
// that order, ending with member_removed: never two added or two removed
// in a row, none without the other. Every member whose join was answered
// has its member_added; the members held only by the killed node are
// removed by a survivor (reason node_lost). Deciding a member's event and
// appending it are one script in the event channel's slot (they were two
// steps: a node killed in between lost the event).
func TestMemberEventsOnceAfterKill(t *testing.T) {
	rc := newReceiver(t)
	rs := redistest.Start(t, redistest.Options{})
	args := []string{"--broker", rs.URL(), "--webhook-delay", "0", "--presence-grace", "0", "--node-timeout", "2s",
		"--webhook-retry", "10m", "--max-conns-per-ip", "0"}
	_, a := eventsNode(t, rc, nil, args...)
	// A holds the webhook's lease before the others start: the webhooks
	// do not change hands (which may send a body twice).
	deadline := time.After(30 * time.Second)
	for metricValue(t, a, "pushctl_webhook_leases_held") != 1 {
		select {
		case <-rc.more:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			t.Fatal("A does not hold the webhook lease")
		}
	}
	bp, b := eventsNode(t, rc, nil, args...)
	_, c := eventsNode(t, rc, nil, args...)
	chans := []string{"room.m0", "room.m1"}
	var mu sync.Mutex
	var conns []*websocket.Conn // closed once B is dead
	answered := map[string]bool{}
	join := func(node, ch, id string) {
		t.Helper()
		ws, err := wsJoinOK(node, ch, id)
		if err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		conns = append(conns, ws)
		answered[ch+" "+id] = true
		mu.Unlock()
	}
	// Held by B only (removed by a survivor), by B and A (not removed by
	// the kill), by C only.
	for _, ch := range chans {
		join(b, ch, "onlyB")
		join(b, ch, "bothAB")
		join(a, ch, "bothAB")
		join(c, ch, "onlyC")
	}
	var bNode string
	for _, ev := range rc.waitFor(chans[0], "member_added", "onlyB", 20*time.Second) {
		if ev.UserID == "onlyB" {
			bNode = ev.Node
		}
	}
	addedOnB := func() int {
		rc.mu.Lock()
		defer rc.mu.Unlock()
		n := 0
		for _, ev := range rc.evs {
			if ev.Name == "member_added" && ev.Node == bNode {
				n++
			}
		}
		return n
	}
	stop, done := make(chan struct{}), make(chan struct{})
	go func() { // members come and go on B until it dies
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			ch, id := chans[i%2], "churn"+strconv.Itoa(i%25)
			ws, err := wsJoinOK(b, ch, id)
			if err != nil {
				return // B is dead
			}
			mu.Lock()
			answered[ch+" "+id] = true
			if i%3 == 0 && i < 30 {
				conns = append(conns, ws) // stays until B dies
			} else {
				ws.Close()
			}
			mu.Unlock()
		}
	}()
	deadline = time.After(60 * time.Second)
	for addedOnB() < 60 {
		select {
		case <-rc.more:
		case <-deadline:
			t.Fatalf("%d members added on B within 60s", addedOnB())
		}
	}
	bp.cmd.Process.Signal(syscall.SIGKILL)
	bp.wait(10 * time.Second)
	close(stop)
	<-done
	for _, ch := range chans {
		rc.waitFor(ch, "member_removed", "onlyB", 30*time.Second)
	}
	mu.Lock()
	for _, ws := range conns {
		ws.Close()
	}
	mu.Unlock()

	check := func() (bad []string) {
		mu.Lock()
		defer mu.Unlock()
		for _, ch := range chans {
			evs := rc.channel(ch)
			slices.SortFunc(evs, func(x, y lifecycleEvent) int { return int(x.Seq) - int(y.Seq) })
			last := map[string]string{}
			for i, ev := range evs {
				if ev.Seq != uint64(i+1) || ev.Epoch != evs[0].Epoch {
					bad = append(bad, fmt.Sprintf("%s: event %d has seq %d (%s %s)", ch, i, ev.Seq, ev.Name, ev.UserID))
					break
				}
				switch prev := last[ev.UserID]; {
				case ev.Name == "member_added" && prev == "member_added",
					ev.Name == "member_removed" && prev != "member_added":
					bad = append(bad, fmt.Sprintf("%s: %s of %s (seq %d) after %q", ch, ev.Name, ev.UserID, ev.Seq, prev))
				}
				last[ev.UserID] = ev.Name
				if ev.Name == "member_removed" && ev.UserID == "onlyB" && (ev.Reason != "node_lost" || ev.ReapedBy == "" || ev.ReapedBy == ev.Node) {
					bad = append(bad, fmt.Sprintf("%s: onlyB removed by %+v", ch, ev))
				}
			}
			for id, name := range last {
				if name != "member_removed" {
					bad = append(bad, fmt.Sprintf("%s: %s not removed", ch, id))
				}
			}
			for k := range answered {
				if ch2, id, _ := strings.Cut(k, " "); ch2 == ch && last[id] == "" {
					bad = append(bad, fmt.Sprintf("%s: %s joined (answered) and never added", ch, id))
				}
			}
		}
		slices.Sort(bad)
		return bad
	}
	waitGood := func(what string) {
		t.Helper()
		deadline := time.After(60 * time.Second)
		for {
			bad := check()
			if len(bad) == 0 {
				return
			}
			select {
			case <-rc.more:
			case <-time.After(time.Second):
			case <-deadline:
				t.Fatalf("%s: %d problems: %v", what, len(bad), bad)
			}
		}
	}
	waitGood("60s after the kill")
	// Nothing more comes: a last member on each channel after everything.
	for _, ch := range chans {
		ws, err := wsJoinOK(c, ch, "last")
		if err != nil {
			t.Fatal(err)
		}
		ws.Close()
		rc.waitFor(ch, "member_removed", "last", 20*time.Second)
	}
	if bad := check(); len(bad) > 0 {
		t.Fatalf("after all: %v", bad)
	}
	n := 0
	for _, ch := range chans {
		n += count(rc.channel(ch), "member_added")
	}
	t.Logf("%d member_added (%d decided on the killed node), each paired with one member_removed", n, addedOnB())
}
