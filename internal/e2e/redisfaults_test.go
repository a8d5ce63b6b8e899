package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/redis/go-redis/v9"

	"github.com/pushctl/pushctl/internal/redistest"
)

// A node on Redis while Redis's connections are killed (CLIENT KILL TYPE
// normal, six times 0.4 s apart) and then while Redis is stopped with
// SIGSTOP for 6 s, with publishers streaming the whole time over every
// way in: HTTP publishes one by one, `pushctl pub --lines`, WebSocket
// publish frames, NDJSON batches (POST /pub) and a ZeroMQ publisher. In
// each channel's history: every acknowledged message exactly once, at the
// position its acknowledgement gave, in publish order; nothing twice; no
// message that was answered "nothing was published" (broker_unavailable).
// /healthz reports the stall.
func TestRedisFaultsStoreOnce(t *testing.T) {
	rs := redistest.Start(t, redistest.Options{})
	rdb := redis.NewClient(&redis.Options{Addr: rs.Addr()})
	defer rdb.Close()
	redisFaults(t, rs.URL(), rdb, []*redistest.Server{rs})
}

func TestRedisFaultsStoreOnceOnRedisCluster(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{c.Servers[0].Addr()}})
	defer rdb.Close()
	redisFaults(t, c.URL(), rdb, c.Servers)
}

// replies records what a publisher was told about each message it sent
// (by its data): "seq N" acknowledged at N, "refused" (broker_unavailable:
// nothing was published), or anything else (the outcome is unknown).
type replies struct {
	mu     sync.Mutex
	got    map[string]string
	n      int           // acknowledged
	warmed chan struct{} // closed at the 300th acknowledgement
}

func newReplies() *replies { return &replies{got: map[string]string{}, warmed: make(chan struct{})} }

func (r *replies) set(data, reply string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got[data] = reply
	if strings.HasPrefix(reply, "seq ") {
		if r.n++; r.n == 300 {
			close(r.warmed)
		}
	}
}

func (r *replies) acked() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n
}

// ackReply turns an HTTP or WebSocket reply into a replies entry.
func ackReply(seq uint64, code string) string {
	switch code {
	case "":
		return "seq " + strconv.FormatUint(seq, 10)
	case "broker_unavailable":
		return "refused"
	}
	return code
}

// publishOne publishes d to ch on node with one HTTP publish and records
// the reply.
func (r *replies) publishOne(hc *http.Client, node, ch, d string) {
	resp, err := hc.Post(node+"/pub/"+ch, "text/plain", strings.NewReader(d))
	if err != nil {
		r.set(d, "error "+err.Error())
		return
	}
	var body struct {
		Seq   uint64
		Error struct{ Code string }
	}
	json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	r.set(d, ackReply(body.Seq, body.Error.Code))
}

// publishBatch publishes from, from+1 … from+n-1 to ch on node as one
// NDJSON batch (POST /pub) and records each line's reply.
func (r *replies) publishBatch(t *testing.T, hc *http.Client, node, ch string, from, n int) {
	var buf bytes.Buffer
	for j := from; j < from+n; j++ {
		fmt.Fprintf(&buf, "{\"channel\":%q,\"data\":\"%d\"}\n", ch, j)
	}
	resp, err := hc.Post(node+"/pub", "application/x-ndjson", &buf)
	if err != nil {
		for j := from; j < from+n; j++ {
			r.set(strconv.Itoa(j), "error "+err.Error())
		}
		return
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		var ack struct {
			Line  int
			Seq   uint64
			Error struct{ Code string }
		}
		if err := json.Unmarshal(sc.Bytes(), &ack); err != nil || ack.Line < 1 {
			t.Errorf("batch reply line %q", sc.Text())
			continue
		}
		r.set(strconv.Itoa(from+ack.Line-1), ackReply(ack.Seq, ack.Error.Code))
	}
}

func redisFaults(t *testing.T, url string, rdb redis.UniversalClient, servers []*redistest.Server) {
	p, a := serve(t, "--broker", url, "--history", "1000000", "--zmq-in", "tcp://127.0.0.1:*")
	zin := ""
	for _, l := range strings.Split(p.Stderr(), "\n") {
		if v, ok := strings.CutPrefix(l, "pushctl: ZeroMQ in on "); ok {
			zin = v
		}
	}
	if zin == "" {
		t.Fatalf("ZeroMQ in endpoint not reported:\n%s", p.Stderr())
	}
	stop := make(chan struct{})
	stopped := func() bool {
		select {
		case <-stop:
			return true
		default:
			return false
		}
	}
	const after = 200 // acknowledged by each publisher after the faults
	all := map[string]*replies{}
	var wg sync.WaitGroup
	run := func(ch string, f func(r *replies)) {
		r := newReplies()
		all[ch] = r
		wg.Add(1)
		go func() {
			defer wg.Done()
			f(r)
		}()
	}
	// keepGoing: until the faults are over and `after` more were
	// acknowledged, or a minute after the faults.
	var deadline time.Time
	var dmu sync.Mutex
	keepGoing := func(r *replies, base *int) bool {
		if !stopped() {
			return true
		}
		dmu.Lock()
		late := time.Now().After(deadline)
		dmu.Unlock()
		if *base < 0 {
			*base = r.acked()
		}
		return r.acked()-*base < after && !late
	}

	hc := &http.Client{Timeout: 60 * time.Second}
	run("http.one", func(r *replies) {
		base := -1
		for i := 0; keepGoing(r, &base); i++ {
			r.publishOne(hc, a, "http.one", strconv.Itoa(i))
		}
	})
	run("http.batch", func(r *replies) {
		base := -1
		for i := 0; keepGoing(r, &base); i += 100 {
			r.publishBatch(t, hc, a, "http.batch", i, 100)
		}
	})
	run("ws.frames", func(r *replies) {
		ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(a, "http")+"/ws", nil)
		if err != nil {
			t.Error(err)
			return
		}
		defer ws.Close()
		base := -1
		for i := 0; keepGoing(r, &base); i++ {
			d := strconv.Itoa(i)
			if err := ws.WriteJSON(map[string]string{"type": "publish", "ref": d, "channel": "ws.frames", "data": d}); err != nil {
				t.Errorf("WebSocket: %v", err)
				return
			}
			ws.SetReadDeadline(time.Now().Add(60 * time.Second))
			var f struct {
				Type, Ref, Code string
				Seq             uint64
			}
			if err := ws.ReadJSON(&f); err != nil || f.Ref != d {
				t.Errorf("WebSocket reply to %s: %+v %v", d, f, err)
				return
			}
			r.set(d, ackReply(f.Seq, f.Code))
		}
	})
	run("cli.lines", func(r *replies) {
		// pushctl pub --lines reads numbers from a pipe fed until the
		// faults are over and enough were acknowledged.
		pr, pw := io.Pipe()
		pub := start(t, pr, nil, "pub", "cli.lines", "--lines", "--json", "--timeout", "120s", "-s", a)
		acks := make(chan struct{}, 1<<16)
		var answered atomic.Int64 // lines acknowledged or refused
		go func() {
			for {
				l, err := pub.stdout.ReadString('\n')
				if err != nil {
					close(acks)
					return
				}
				var ack struct {
					Line  int
					Seq   uint64
					Error *struct{ Code string }
				}
				if json.Unmarshal([]byte(l), &ack) == nil && ack.Line > 0 {
					code := ""
					if ack.Error != nil {
						code = ack.Error.Code // refused (Redis stalled, say)
					}
					r.set(strconv.Itoa(ack.Line-1), ackReply(ack.Seq, code))
					answered.Add(1)
				}
				select {
				case acks <- struct{}{}:
				default:
				}
			}
		}()
		base := -1
		w := bufio.NewWriter(pw)
		for i := 0; keepGoing(r, &base); i++ {
			d := strconv.Itoa(i)
			r.mu.Lock()
			if _, ok := r.got[d]; !ok {
				r.got[d] = "sent"
			}
			r.mu.Unlock()
			fmt.Fprintln(w, d)
			if i%100 == 99 {
				w.Flush()
				// At most a few thousand lines ahead of the replies.
				// (Ahead of the acks alone it waited for good once pub
				// had all its lines refused: pub waited for more lines.)
				for i-int(answered.Load()) > 4000 {
					if _, ok := <-acks; !ok {
						break
					}
				}
			}
		}
		w.Flush()
		pw.Close()
		code := pub.wait(2 * time.Minute)
		for range acks {
		}
		t.Logf("pushctl pub --lines: exit %d %s", code, strings.TrimSpace(pub.Stderr()))
	})
	// Publishing is under way before the faults begin.
	warm := time.After(60 * time.Second)
	for ch, r := range all {
		select {
		case <-r.warmed:
		case <-warm:
			t.Fatalf("%s: publishing did not get going", ch)
		}
	}
	tick := time.NewTicker(400 * time.Millisecond)
	for i := 0; i < 6; i++ {
		<-tick.C
		for _, s := range servers {
			c := redis.NewClient(&redis.Options{Addr: s.Addr()})
			if err := c.ClientKillByFilter(context.Background(), "TYPE", "normal").Err(); err != nil {
				t.Errorf("CLIENT KILL: %v", err)
			}
			c.Close()
		}
	}
	tick.Stop()
	zmqMsgs := make([]string, 3000)
	for i := range zmqMsgs {
		zmqMsgs[i] = "zmq.in|" + strconv.Itoa(i)
	}
	zpub := startPy(t, "zpub.py", append([]string{zin, "connect"}, zmqMsgs...)...)
	zpub.readyPort()
	for _, s := range servers {
		s.Pause()
	}
	stallEnd := time.After(6 * time.Second) // the fault: Redis does not answer for 6 s
	// /healthz says so while Redis is stopped.
	degraded := ""
	for degraded == "" {
		resp, err := hc.Get(a + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusServiceUnavailable && strings.Contains(string(body), "degraded") {
			degraded = string(body)
			break
		}
		select {
		case <-stallEnd:
			t.Errorf("/healthz during the whole stall: %d %s", resp.StatusCode, body)
			degraded = "(not seen)"
			stallEnd = nil
		case <-time.After(50 * time.Millisecond): // polling /healthz
		}
	}
	t.Logf("/healthz while Redis is stopped: %s", strings.TrimSpace(degraded))
	if stallEnd != nil {
		<-stallEnd
	}
	for _, s := range servers {
		s.Resume()
	}
	dmu.Lock()
	deadline = time.Now().Add(time.Minute)
	dmu.Unlock()
	close(stop)
	wg.Wait()
	zpub.line(60 * time.Second) // "sent"

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for ch, r := range all {
		checkHistory(t, ctx, rdb, ch, r)
	}
	// ZeroMQ has no acknowledgements (and drops over its high-water mark
	// while the node waits): nothing twice, in order.
	checkHistory(t, ctx, rdb, "zmq.in", newReplies())
}

// checkHistory compares a channel's stream in Redis with the replies.
func checkHistory(t *testing.T, ctx context.Context, rdb redis.UniversalClient, ch string, r *replies) {
	t.Helper()
	entries, err := rdb.XRange(ctx, "pushctl:{"+ch+"}:s", "-", "+").Result()
	if err != nil {
		t.Fatalf("%s: XRANGE: %v", ch, err)
	}
	at := map[string][]uint64{}
	last, disorder := -1, ""
	for _, e := range entries {
		seq, _ := strconv.ParseUint(strings.TrimSuffix(e.ID, "-1"), 10, 64)
		d := fmt.Sprint(e.Values["d"])
		at[d] = append(at[d], seq)
		n, _ := strconv.Atoi(d)
		if n <= last && disorder == "" {
			disorder = fmt.Sprintf("%q at seq %d after %d", d, seq, last)
		}
		last = max(last, n)
	}
	var wrong, twice []string
	for d, seqs := range at {
		if len(seqs) > 1 {
			twice = append(twice, fmt.Sprintf("%s at %v", d, seqs))
		}
	}
	count := map[string]int{}
	for d, reply := range r.got {
		seqs := at[d]
		switch {
		case strings.HasPrefix(reply, "seq "):
			count["acknowledged"]++
			if len(seqs) != 1 || "seq "+strconv.FormatUint(seqs[0], 10) != reply {
				wrong = append(wrong, fmt.Sprintf("%s acknowledged at %s is stored at %v", d, reply, seqs))
			}
		case reply == "refused":
			count["refused"]++
			if len(seqs) > 0 {
				wrong = append(wrong, fmt.Sprintf("%s was refused (nothing was published) but is stored at %v", d, seqs))
			}
		default:
			count[reply]++
		}
	}
	t.Logf("%s: %d stored; replies %v", ch, len(entries), count)
	if len(wrong) > 0 {
		t.Errorf("%s: %d replies disagree with the history, e.g.\n%s", ch, len(wrong), strings.Join(wrong[:min(5, len(wrong))], "\n"))
	}
	if len(twice) > 0 {
		t.Errorf("%s: %d messages stored twice or more, e.g. %v", ch, len(twice), twice[:min(5, len(twice))])
	}
	if disorder != "" {
		t.Errorf("%s: stored out of publish order: %s", ch, disorder)
	}
}
