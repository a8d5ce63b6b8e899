package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

type ack struct {
	ID  string `json:"id"`
	Seq uint64 `json:"seq"`
}

type envelope struct {
	Type, Channel, ID, Data string
	Seq                     uint64
}

// stored returns every retained message of channel, in order.
func stored(t *testing.T, url, channel string) []envelope {
	t.Helper()
	resp, err := http.Get(url + "/channels/" + channel)
	if err != nil {
		t.Fatal(err)
	}
	var info struct{ Messages int }
	json.NewDecoder(resp.Body).Decode(&info)
	resp.Body.Close()
	if info.Messages == 0 {
		return nil
	}
	out, errOut, code := run(t, "", "sub", channel, "--since", "all", "--count", strconv.Itoa(info.Messages), "--timeout", "60s", "--format", "json", "-s", url)
	if code != 0 {
		t.Fatalf("reading back: exit %d %s", code, errOut)
	}
	var msgs []envelope
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var e envelope
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Fatalf("bad line %q", l)
		}
		msgs = append(msgs, e)
	}
	return msgs
}

// TestCrashSafety streams 100,000 publishes into a durable broker, kills
// it with SIGKILL at a random point, restarts it on the same directory and
// checks every acknowledged message: present, in order, same id, once.
func TestCrashSafety(t *testing.T) {
	const total = 100000
	var input strings.Builder
	for i := 1; i <= total; i++ {
		fmt.Fprintf(&input, "m%d\n", i)
	}
	for _, seed := range []int64{1, 2, 3} {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			rng := rand.New(rand.NewSource(seed))
			killAfter := 1000 + rng.Intn(total-11000)
			dir := t.TempDir()
			b1, url := serve(t, "--data-dir", dir, "--history", "200000")
			pub := start(t, strings.NewReader(input.String()), nil, "pub", "crash", "--lines", "--json", "-s", url)
			var acks []ack
			for len(acks) < killAfter {
				var a ack
				if err := json.Unmarshal([]byte(pub.readLine(60*time.Second)), &a); err != nil {
					t.Fatal(err)
				}
				acks = append(acks, a)
			}
			b1.cmd.Process.Signal(syscall.SIGKILL)
			b1.wait(10 * time.Second)
			// Acks already on their way are acknowledged too.
			for _, l := range pub.rest(60 * time.Second) {
				var a ack
				if json.Unmarshal([]byte(l), &a) == nil && a.ID != "" {
					acks = append(acks, a)
				}
			}
			if code := pub.wait(30 * time.Second); code == 0 && len(acks) < total {
				t.Fatalf("pub exited 0 with %d of %d acknowledged", len(acks), total)
			}
			_, url2 := serve(t, "--data-dir", dir, "--history", "200000")
			msgs := stored(t, url2, "crash")
			if len(msgs) < len(acks) {
				t.Fatalf("%d acknowledged, only %d stored", len(acks), len(msgs))
			}
			for i, m := range msgs {
				if m.Seq != uint64(i+1) || m.Data != fmt.Sprint("m", i+1) {
					t.Fatalf("stored message %d is %+v", i+1, m)
				}
			}
			for i, a := range acks {
				if a.Seq != uint64(i+1) || msgs[i].ID != a.ID {
					t.Fatalf("ack %d (%+v) does not match stored %+v", i+1, a, msgs[i])
				}
			}
			t.Logf("killed after %d acks: %d acknowledged, %d stored", killAfter, len(acks), len(msgs))
		})
	}
}

// proxy is a loopback TCP proxy that can cut every connection it carries.
type proxy struct {
	l        net.Listener
	target   string
	mu       sync.Mutex
	conns    map[net.Conn]bool
	refusing bool
}

func newProxy(t *testing.T, target string) *proxy {
	p := &proxy{target: target, conns: map[net.Conn]bool{}}
	p.l = acceptLoop(t, p.pipe)
	t.Cleanup(p.cut)
	return p
}

func (p *proxy) pipe(c net.Conn) {
	p.mu.Lock()
	refusing := p.refusing
	p.mu.Unlock()
	if refusing {
		c.Close()
		return
	}
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	p.conns[c], p.conns[up] = true, true
	p.mu.Unlock()
	go func() { io.Copy(up, c); up.Close() }()
	io.Copy(c, up)
	c.Close()
}

func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
		delete(p.conns, c)
	}
}

func (p *proxy) url() string { return "http://" + p.l.Addr().String() }

// TestChaosNothingLostNothingRepeated cuts the connections of a `sub` and
// an SSE client 90 times and restarts the broker 10 times (SIGKILL) while
// messages flow; both must see every message exactly once, in order.
func TestChaosNothingLostNothingRepeated(t *testing.T) {
	const rounds, perRound = 100, 30
	dir := t.TempDir()
	b, url := serve(t, "--data-dir", dir, "--history", "100000")
	addr := strings.TrimPrefix(url, "http://")
	px := newProxy(t, addr)
	total := rounds * perRound
	sub := start(t, nil, nil, "sub", "chaos", "--count", strconv.Itoa(total), "--timeout", "300s", "--format", "json", "-s", px.url())

	// The SSE client behaves like a browser's EventSource: it reconnects
	// with Last-Event-ID.
	sseGot := sseLines(t, "/sub/chaos?data=raw", px.url())

	waitSubscribers(t, url, "chaos", 2)
	c := &http.Client{Timeout: 10 * time.Second}
	n := 0
	for r := 0; r < rounds; r++ {
		for i := 0; i < perRound; i++ {
			n++
			resp, err := c.Post(url+"/pub/chaos", "text/plain", strings.NewReader(fmt.Sprint(n)))
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("publish %d: %v %v", n, err, resp)
			}
			resp.Body.Close()
		}
		if r%10 == 9 {
			b.cmd.Process.Signal(syscall.SIGKILL)
			b.wait(10 * time.Second)
			b, _ = serve(t, "--data-dir", dir, "--history", "100000", "--listen", addr)
		} else {
			px.cut()
		}
	}
	for i := 1; i <= total; i++ {
		var m envelope
		if err := json.Unmarshal([]byte(sub.readLine(120*time.Second)), &m); err != nil || m.Data != fmt.Sprint(i) {
			t.Fatalf("sub: message %d is %+v (%v)", i, m, err)
		}
	}
	if code := sub.wait(30 * time.Second); code != 0 {
		t.Fatalf("sub exit %d: %s", code, sub.Stderr())
	}
	expectSeq(t, "SSE", sseGot, 1, total)
	if strings.Contains(sub.Stderr(), "messages lost") {
		t.Fatalf("sub reported a loss: %s", sub.Stderr())
	}
}

func TestFailOnGap(t *testing.T) {
	_, url := serve(t, "--history", "3")
	out, _, _ := run(t, "", "pub", "g", "--json", "-s", url, "first")
	var first ack
	json.Unmarshal([]byte(out), &first)
	for i := 0; i < 5; i++ {
		run(t, "", "pub", "g", "-s", url, "x")
	}
	_, errOut, code := run(t, "", "sub", "g", "--since", first.ID, "--count", "3", "--timeout", "10s", "-s", url)
	if code != 0 || !strings.Contains(errOut, "warning: messages lost on g") {
		t.Fatalf("gap warning: exit %d %s", code, errOut)
	}
	_, errOut, code = run(t, "", "sub", "g", "--since", first.ID, "--fail-on-gap", "--count", "3", "--timeout", "10s", "-s", url)
	if code != 1 || !strings.Contains(errOut, "messages lost on g") {
		t.Fatalf("--fail-on-gap: exit %d %s", code, errOut)
	}
}

// setRefusing makes the proxy close new connections at once, or stop doing so.
func (p *proxy) setRefusing(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.refusing = on
}

// TestPatternResumeCoversNewChannels: a channel matching a pattern appears
// while the subscriber is disconnected; after reconnecting it still gets
// that channel's messages, and nothing twice.
func TestPatternResumeCoversNewChannels(t *testing.T) {
	_, url := serve(t)
	px := newProxy(t, strings.TrimPrefix(url, "http://"))
	sub := start(t, nil, nil, "sub", "orders.>", "--count", "3", "--timeout", "60s", "--template", "{{.Channel}} {{.Data}}", "-s", px.url())
	run(t, "", "pub", "orders.eu", "--wait-subscribers", "1", "-s", url, "one")
	if l := sub.readLine(10 * time.Second); l != "orders.eu one" {
		t.Fatalf("got %q", l)
	}
	px.setRefusing(true)
	px.cut()
	sub.waitStderr("reconnecting", 10*time.Second)
	run(t, "", "pub", "orders.us", "-s", url, "two")   // a channel it has never seen
	run(t, "", "pub", "orders.eu", "-s", url, "three") // one it knows
	px.setRefusing(false)
	got := map[string]bool{}
	for i := 0; i < 2; i++ {
		got[sub.readLine(30*time.Second)] = true
	}
	if !got["orders.us two"] || !got["orders.eu three"] {
		t.Fatalf("after reconnecting got %v", got)
	}
	if code := sub.wait(10 * time.Second); code != 0 {
		t.Fatalf("sub exit %d: %s", code, sub.Stderr())
	}
}
