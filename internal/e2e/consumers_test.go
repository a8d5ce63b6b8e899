package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pushctl/pushctl/internal/redistest"
)

// Durable consumers with real processes: pushctl serve, pushctl sub
// --durable, kill -9 of either.

// lines publishes m<from>..m<to>, one message per line, and waits for pub.
func publishRange(t *testing.T, url, channel string, from, to int) {
	t.Helper()
	var b strings.Builder
	for i := from; i <= to; i++ {
		fmt.Fprintf(&b, "m%d\n", i)
	}
	if out, errs, code := run(t, b.String(), "pub", channel, "--lines", "-s", url); code != 0 {
		t.Fatalf("pub exited %d: %s %s", code, out, errs)
	}
}

// consumerInfo asks pushctl consumers NAME --json.
func consumerInfo(t *testing.T, url, name string) map[string]any {
	t.Helper()
	out, errs, code := run(t, "", "consumers", name, "--json", "-s", url)
	if code != 0 {
		t.Fatalf("consumers %s exited %d: %s", name, code, errs)
	}
	var info map[string]any
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("consumers %s: %v in %q", name, err, out)
	}
	return info
}

// eventually checks cond every 20ms until it holds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, timeout)
		}
		<-tick.C
	}
}

// lineCollector gathers a process's stdout lines as they come.
type lineCollector struct {
	mu    sync.Mutex
	lines []string
	done  chan struct{}
}

func collectLines(p *proc) *lineCollector {
	c := &lineCollector{done: make(chan struct{})}
	go func() {
		defer close(c.done)
		for {
			l, err := p.stdout.ReadString('\n')
			if err != nil {
				return // a partial last line was not wholly printed: not handled
			}
			c.mu.Lock()
			c.lines = append(c.lines, strings.TrimSuffix(l, "\n"))
			c.mu.Unlock()
		}
	}()
	return c
}

func (c *lineCollector) snapshot() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.lines...)
}

func (c *lineCollector) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.lines)
}

// tally counts each m<i> among lines: missing ones, and duplicates.
func tally(t *testing.T, total int, lines []string) (missing []int, dups int) {
	t.Helper()
	seen := make([]int, total+1)
	for _, l := range lines {
		var i int
		if _, err := fmt.Sscanf(l, "m%d", &i); err != nil || i < 1 || i > total {
			t.Fatalf("unexpected line %q", l)
		}
		seen[i]++
	}
	for i := 1; i <= total; i++ {
		switch {
		case seen[i] == 0:
			missing = append(missing, i)
		case seen[i] > 1:
			dups += seen[i] - 1
		}
	}
	return missing, dups
}

// TestDurableExecRedeliversThenDeadLetters: --exec fails on two messages;
// they are delivered max_deliveries times, then published to the
// dead-letter channel and counted; every other message is handled exactly
// once.
func TestDurableExecRedeliversThenDeadLetters(t *testing.T) {
	_, url := serve(t)
	dir := t.TempDir()
	handled := filepath.Join(dir, "handled")
	if _, errs, code := run(t, "", "consumers", "w", "--create", "jobs", "--max-deliveries", "3", "-s", url); code != 0 {
		t.Fatalf("consumers --create: %s", errs)
	}
	// The handler records every attempt, and fails on m7 and m13.
	script := `d=$(cat); echo "$d" >> ` + handled + `; [ "$d" != m7 ] && [ "$d" != m13 ]`
	sub := start(t, nil, nil, "sub", "jobs", "--durable", "w", "--max-inflight", "4", "--exec", script, "-s", url)
	const total = 50
	publishRange(t, url, "jobs", 1, total)
	// Both failing messages reach the dead-letter channel.
	out, errs, code := run(t, "", "sub", "_dead.w", "--since", "all", "--count", "2", "--timeout", "60s", "-o", "json", "-s", url)
	if code != 0 {
		t.Fatalf("dead letters: exit %d: %s\nsub stderr:\n%s", code, errs, sub.Stderr())
	}
	dead := map[string]int{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var env struct {
			Data struct {
				Consumer   string `json:"consumer"`
				Deliveries int    `json:"deliveries"`
				Message    struct {
					Channel, Data string
				} `json:"message"`
			} `json:"data"`
		}
		if err := json.Unmarshal([]byte(l), &env); err != nil {
			t.Fatalf("dead letter %q: %v", l, err)
		}
		if env.Data.Consumer != "w" || env.Data.Message.Channel != "jobs" {
			t.Errorf("dead letter %s", l)
		}
		dead[env.Data.Message.Data] = env.Data.Deliveries
	}
	if dead["m7"] != 3 || dead["m13"] != 3 || len(dead) != 2 {
		t.Fatalf("dead letters %v, want m7 and m13 after 3 deliveries", dead)
	}
	eventually(t, 30*time.Second, "every message acknowledged", func() bool {
		info := consumerInfo(t, url, "w")
		return info["acked"] == float64(total-2) && info["pending"] == float64(0)
	})
	data, err := os.ReadFile(handled)
	if err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		count[l]++
	}
	for i := 1; i <= total; i++ {
		want := 1
		if i == 7 || i == 13 {
			want = 3
		}
		if got := count[fmt.Sprint("m", i)]; got != want {
			t.Errorf("m%d handled %d times, want %d", i, got, want)
		}
	}
	info := consumerInfo(t, url, "w")
	if info["dead_lettered"] != float64(2) || info["redelivered"] != float64(4) {
		t.Errorf("consumer counters %v", info)
	}
	if !strings.Contains(sub.Stderr(), "out of deliveries: sent to the dead-letter channel _dead.w") {
		t.Errorf("sub did not say it gave up:\n%s", sub.Stderr())
	}
	sub.signal(syscall.SIGTERM)
	if code := sub.wait(10 * time.Second); code != 0 {
		t.Errorf("sub exited %d on SIGTERM", code)
	}
}

// durableTotal is the size of the kill -9 streams: 20,000 messages (a few
// seconds, under the race detector too).
func durableTotal() int { return 20000 }

// TestDurableSurvivesServeKill9: serve --data-dir is killed with SIGKILL
// while a durable sub is printing a stream and restarted on the same
// address; the sub carries on, and every message is printed at least once.
func TestDurableSurvivesServeKill9(t *testing.T) {
	total := durableTotal()
	dir := t.TempDir()
	b1, url := serve(t, "--data-dir", dir)
	addr := strings.TrimPrefix(url, "http://")
	if _, errs, code := run(t, "", "consumers", "w", "--create", "stream", "--ack-wait", "2s", "-s", url); code != 0 {
		t.Fatalf("consumers --create: %s", errs)
	}
	sub := start(t, nil, nil, "sub", "stream", "--durable", "w", "--max-inflight", "64", "-s", url)
	got := collectLines(sub)
	publishRange(t, url, "stream", 1, total/2)
	eventually(t, 60*time.Second, "a third printed", func() bool { return got.count() >= total/3 })
	b1.cmd.Process.Signal(syscall.SIGKILL)
	b1.wait(10 * time.Second)
	printedAtKill := got.count()
	_, url2 := serve(t, "--data-dir", dir, "--listen", addr)
	publishRange(t, url2, "stream", total/2+1, total)
	eventually(t, 90*time.Second, "every message printed", func() bool {
		missing, _ := tally(t, total, got.snapshot())
		return len(missing) == 0
	})
	_, dups := tally(t, total, got.snapshot())
	t.Logf("serve killed after %d of %d printed; %d printed twice", printedAtKill, total, dups)
	if dups > 64 {
		// An acknowledgement is saved before its reply: only what the sub
		// held at the kill (--max-inflight) may come twice.
		t.Errorf("%d printed twice; at most 64 (--max-inflight) were held at the kill", dups)
	}
	if !strings.Contains(sub.Stderr(), "failed") || !strings.Contains(sub.Stderr(), "retrying") {
		t.Errorf("sub did not say it lost and found the broker:\n%s", sub.Stderr())
	}
	eventually(t, 30*time.Second, "nothing pending", func() bool {
		return consumerInfo(t, url2, "w")["pending"] == float64(0)
	})
}

// TestDurableSurvivesSubKill9: the consuming pushctl sub is killed with
// SIGKILL in the middle of a stream; a new one with the same --durable
// name prints the rest, and what the first had taken but not acknowledged
// comes again after the ack wait: every message at least once.
func TestDurableSurvivesSubKill9(t *testing.T) {
	total := durableTotal()
	_, url := serve(t, "--data-dir", t.TempDir())
	if _, errs, code := run(t, "", "consumers", "w", "--create", "stream", "--ack-wait", "1s", "-s", url); code != 0 {
		t.Fatalf("consumers --create: %s", errs)
	}
	publishRange(t, url, "stream", 1, total)
	sub1 := start(t, nil, nil, "sub", "stream", "--durable", "w", "--max-inflight", "64", "-s", url)
	got1 := collectLines(sub1)
	eventually(t, 60*time.Second, "a third printed", func() bool { return got1.count() >= total/3 })
	sub1.cmd.Process.Signal(syscall.SIGKILL)
	sub1.wait(10 * time.Second)
	<-got1.done
	sub2 := start(t, nil, nil, "sub", "stream", "--durable", "w", "--max-inflight", "64", "-s", url)
	got2 := collectLines(sub2)
	eventually(t, 60*time.Second, "every message printed", func() bool {
		missing, _ := tally(t, total, append(got1.snapshot(), got2.snapshot()...))
		return len(missing) == 0
	})
	_, dups := tally(t, total, append(got1.snapshot(), got2.snapshot()...))
	t.Logf("sub killed after printing %d of %d; %d printed twice (printed, acknowledgement not sent)", got1.count(), total, dups)
	if dups > 64 {
		t.Errorf("%d printed twice; the killed sub held at most 64 (--max-inflight)", dups)
	}
	eventually(t, 30*time.Second, "nothing pending", func() bool {
		return consumerInfo(t, url, "w")["pending"] == float64(0)
	})
}

// TestDurableWorkQueue: three pushctl sub --durable workers share the
// work; one is killed with SIGKILL and the messages it held reach the
// others after the ack wait; nothing is lost.
func TestDurableWorkQueue(t *testing.T) {
	_, url := serve(t)
	dir := t.TempDir()
	if _, errs, code := run(t, "", "consumers", "workers", "--create", "jobs", "--ack-wait", "2s", "-s", url); code != 0 {
		t.Fatalf("consumers --create: %s", errs)
	}
	const total = 300
	script := `d=$(cat); sleep 0.02; echo "$d" >> "$OUT"`
	var workers []*proc
	for i := 0; i < 3; i++ {
		env := []string{"OUT=" + filepath.Join(dir, fmt.Sprint("w", i))}
		workers = append(workers, start(t, nil, env, "sub", "jobs", "--durable", "workers", "--max-inflight", "2", "--exec", script, "-s", url))
	}
	eventually(t, 30*time.Second, "three workers fetching", func() bool {
		return consumerInfo(t, url, "workers")["fetchers"] == float64(3)
	})
	publishRange(t, url, "jobs", 1, total)
	read := func(i int) []string {
		data, _ := os.ReadFile(filepath.Join(dir, fmt.Sprint("w", i)))
		s := strings.TrimSpace(string(data))
		if s == "" {
			return nil
		}
		return strings.Split(s, "\n")
	}
	eventually(t, 60*time.Second, "worker 0 handled 20", func() bool { return len(read(0)) >= 20 })
	workers[0].cmd.Process.Signal(syscall.SIGKILL)
	workers[0].wait(10 * time.Second)
	killedAt := len(read(0))
	all := func() []string { return append(append(read(0), read(1)...), read(2)...) }
	eventually(t, 60*time.Second, "every message handled and acknowledged", func() bool {
		missing, _ := tally(t, total, all())
		return len(missing) == 0 && consumerInfo(t, url, "workers")["pending"] == float64(0)
	})
	_, dups := tally(t, total, all())
	n1, n2 := len(read(1)), len(read(2))
	t.Logf("worker 0 killed after %d; workers 1 and 2 handled %d and %d; %d handled twice", killedAt, n1, n2, dups)
	if n1 < 20 || n2 < 20 {
		t.Errorf("the work was not shared: %d, %d, %d", killedAt, n1, n2)
	}
	if dups > 2 {
		// The killed worker held at most 2 (--max-inflight): those it had
		// finished without its acknowledgement reaching the broker.
		t.Errorf("%d messages handled twice; the killed worker held at most 2", dups)
	}
	info := consumerInfo(t, url, "workers")
	t.Logf("redelivered after the ack wait: %v", info["redelivered"])
	if info["redelivered"] != info["expired"] || info["acked"] != float64(total) {
		t.Errorf("counters %v: want every message acknowledged, and what expired delivered again", info)
	}
}

// TestDurableOnRedisSharedByNodes: durable consumers on Redis are shared
// by every node (they used to be refused with consumers_unavailable,
// which TestDurableRefusedOnRedis checked): a consumer created through
// one node is listed, inspected and deleted through any other, with the
// same counters.
func TestDurableOnRedisSharedByNodes(t *testing.T) {
	rs := redistest.Start(t, redistest.Options{})
	_, a := serve(t, "--broker", rs.URL())
	_, b := serve(t, "--broker", rs.URL())
	if _, errs, code := run(t, "", "consumers", "w", "--create", "jobs", "-s", a); code != 0 {
		t.Fatalf("consumers --create on Redis: exit %d: %s", code, errs)
	}
	publishRange(t, a, "jobs", 1, 3)
	eventually(t, 20*time.Second, "three kept, seen from the other node", func() bool {
		return consumerInfo(t, b, "w")["pending"] == float64(3)
	})
	out, errs, code := run(t, "", "sub", "jobs", "--durable", "w", "--count", "3", "--timeout", "20s", "-s", b)
	if code != 0 || out != "m1\nm2\nm3\n" {
		t.Fatalf("sub --durable on the other node: exit %d: %q %s", code, out, errs)
	}
	eventually(t, 20*time.Second, "acknowledged, seen from the first node", func() bool {
		i := consumerInfo(t, a, "w")
		return i["pending"] == float64(0) && i["acked"] == float64(3)
	})
	// The same figures in every node's /metrics.
	for _, u := range []string{a, b} {
		if v := metricValue(t, u, `pushctl_consumer_acked_total{consumer="w"}`); v != 3 {
			t.Errorf("%s/metrics: pushctl_consumer_acked_total %v, want 3", u, v)
		}
	}
	if out, errs, code := run(t, "", "consumers", "-s", b); code != 0 || !strings.Contains(out, "w") {
		t.Fatalf("consumers list on B: %d %s %s", code, out, errs)
	}
	if _, errs, code := run(t, "", "consumers", "w", "--delete", "-s", b); code != 0 {
		t.Fatalf("delete on B: %s", errs)
	}
	if _, errs, code := run(t, "", "consumers", "w", "-s", a); code == 0 || !strings.Contains(errs, "consumer_not_found") {
		t.Fatalf("deleted on B, still on A: %d %s", code, errs)
	}
}

// threeRedisNodes starts three serve nodes on one Redis (a short node
// timeout: a dead node's consumer leases pass on within 2s), or on the
// Redis Cluster at url.
func threeRedisNodes(t *testing.T, url ...string) ([]*proc, []string) {
	if len(url) == 0 {
		url = append(url, redistest.Start(t, redistest.Options{}).URL())
	}
	var ps []*proc
	var urls []string
	for i := 0; i < 3; i++ {
		p, u := serve(t, "--broker", url[0], "--node-timeout", "2s", "--history", "10000")
		ps = append(ps, p)
		urls = append(urls, u)
	}
	return ps, urls
}

// fetchersOn sums the fetches waiting on consumer name over the nodes
// (each node counts its own).
func fetchersOn(t *testing.T, urls []string, name string) int {
	n := 0
	for _, u := range urls {
		if f, ok := consumerInfo(t, u, name)["fetchers"].(float64); ok {
			n += int(f)
		}
	}
	return n
}

// TestDurableWorkQueueOnRedis: the work queue of TestDurableWorkQueue on
// three serve nodes sharing Redis, each worker attached to another node
// (all three URLs, in another order): one worker killed with SIGKILL, the
// messages it held reach the others after the ack wait; nothing is lost.
func TestDurableWorkQueueOnRedis(t *testing.T) {
	_, urls := threeRedisNodes(t)
	durableWorkQueueOnRedis(t, urls)
}

// The same on a three-shard Redis Cluster.
func TestDurableWorkQueueOnRedisCluster(t *testing.T) {
	_, urls := threeRedisNodes(t, redistest.StartCluster(t, 3).URL())
	durableWorkQueueOnRedis(t, urls)
}

func durableWorkQueueOnRedis(t *testing.T, urls []string) {
	dir := t.TempDir()
	if _, errs, code := run(t, "", "consumers", "workers", "--create", "jobs", "--ack-wait", "2s", "-s", urls[1]); code != 0 {
		t.Fatalf("consumers --create: %s", errs)
	}
	const total = 300
	script := `d=$(cat); sleep 0.02; echo "$d" >> "$OUT"`
	var workers []*proc
	for i := 0; i < 3; i++ {
		env := []string{"OUT=" + filepath.Join(dir, fmt.Sprint("w", i))}
		servers := strings.Join([]string{urls[i], urls[(i+1)%3], urls[(i+2)%3]}, ",")
		workers = append(workers, start(t, nil, env, "sub", "jobs", "--durable", "workers", "--max-inflight", "2", "--exec", script, "-s", servers))
	}
	eventually(t, 30*time.Second, "three workers fetching, one per node", func() bool { return fetchersOn(t, urls, "workers") >= 3 })
	publishRange(t, urls[2], "jobs", 1, total)
	read := func(i int) []string {
		data, _ := os.ReadFile(filepath.Join(dir, fmt.Sprint("w", i)))
		s := strings.TrimSpace(string(data))
		if s == "" {
			return nil
		}
		return strings.Split(s, "\n")
	}
	eventually(t, 60*time.Second, "worker 0 handled 20", func() bool { return len(read(0)) >= 20 })
	workers[0].cmd.Process.Signal(syscall.SIGKILL)
	workers[0].wait(10 * time.Second)
	killedAt := len(read(0))
	all := func() []string { return append(append(read(0), read(1)...), read(2)...) }
	eventually(t, 60*time.Second, "every message handled and acknowledged", func() bool {
		missing, _ := tally(t, total, all())
		return len(missing) == 0 && consumerInfo(t, urls[0], "workers")["pending"] == float64(0)
	})
	_, dups := tally(t, total, all())
	n1, n2 := len(read(1)), len(read(2))
	t.Logf("worker 0 killed after %d; workers 1 and 2 handled %d and %d; %d handled twice", killedAt, n1, n2, dups)
	if n1 < 20 || n2 < 20 {
		t.Errorf("the work was not shared: %d, %d, %d", killedAt, n1, n2)
	}
	if dups > 2 {
		t.Errorf("%d messages handled twice; the killed worker held at most 2", dups)
	}
	info := consumerInfo(t, urls[1], "workers")
	t.Logf("redelivered after the ack wait: %v", info["redelivered"])
	if info["redelivered"] != info["expired"] || info["acked"] != float64(total) {
		t.Errorf("counters %v: want every message acknowledged, and what expired delivered again", info)
	}
}

// TestDurableOnRedisNodeKilled: the serve node a durable sub is attached
// to, which is also the node feeding the consumer (its lease holder), is
// killed with SIGKILL in the middle of a stream; the sub fails over to the
// next node, which has the consumer's position and pending deliveries,
// and another node takes the feeding over from the stored cursor: every
// message is printed at least once, and only what the sub held at the
// kill (--max-inflight) twice.
func TestDurableOnRedisNodeKilled(t *testing.T) {
	ps, urls := threeRedisNodes(t)
	const total, inflight = 3000, 16
	if _, errs, code := run(t, "", "consumers", "w", "--create", "stream", "--ack-wait", "2s", "-s", urls[1]); code != 0 {
		t.Fatalf("consumers --create: %s", errs)
	}
	nodeRe := regexp.MustCompile(`\(node ([0-9a-f]+)\)`)
	var feeder string
	eventually(t, 20*time.Second, "a node feeding the consumer", func() bool {
		feeder, _ = consumerInfo(t, urls[0], "w")["feeder"].(string)
		return feeder != ""
	})
	f := -1
	for i, p := range ps {
		if m := nodeRe.FindStringSubmatch(p.Stderr()); m != nil && m[1] == feeder {
			f = i
		}
	}
	if f < 0 {
		t.Fatalf("feeder %q is none of the nodes", feeder)
	}
	next, pub := (f+1)%3, (f+2)%3
	sub := start(t, nil, nil, "sub", "stream", "--durable", "w", "--max-inflight", fmt.Sprint(inflight), "-s", urls[f]+","+urls[next])
	got := collectLines(sub)
	publishRange(t, urls[pub], "stream", 1, total/2)
	eventually(t, 60*time.Second, "a third printed", func() bool { return got.count() >= total/3 })
	ps[f].cmd.Process.Signal(syscall.SIGKILL)
	ps[f].wait(10 * time.Second)
	printedAtKill := got.count()
	publishRange(t, urls[pub], "stream", total/2+1, total)
	eventually(t, 90*time.Second, "every message printed", func() bool {
		missing, _ := tally(t, total, got.snapshot())
		return len(missing) == 0
	})
	_, dups := tally(t, total, got.snapshot())
	t.Logf("node killed after %d of %d printed; %d printed twice", printedAtKill, total, dups)
	if dups > inflight {
		t.Errorf("%d printed twice; at most %d (--max-inflight) were held at the kill", dups, inflight)
	}
	eventually(t, 30*time.Second, "nothing pending", func() bool {
		return consumerInfo(t, urls[next], "w")["pending"] == float64(0)
	})
	if now, _ := consumerInfo(t, urls[next], "w")["feeder"].(string); now == feeder || now == "" {
		t.Errorf("feeder after the kill: %q (was %q)", now, feeder)
	}
}

// A namespace's consumer bound, set on serve's command line, holds on the
// HTTP API: a consumer asking for more is refused naming the namespace,
// one asking for nothing gets the bound.
func TestNamespaceBoundsConsumersOverHTTP(t *testing.T) {
	_, url := serve(t, "--namespace", "name=jobs,match=jobs.>,consumer-max-pending=2")
	req := func(path string) (int, string) {
		r, _ := http.NewRequest("PUT", url+path, nil)
		resp, err := http.DefaultClient.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if status, body := req("/consumers/greedy?channel=jobs.mail&max_pending=5"); status != 400 || !strings.Contains(body, "invalid_parameter") || !strings.Contains(body, "namespace jobs") {
		t.Fatalf("over the bound: %d %s", status, body)
	}
	if status, body := req("/consumers/modest?channel=jobs.mail"); status != 200 || !strings.Contains(body, `"max_pending":2,`) {
		t.Fatalf("without a bound of its own: %d %s", status, body)
	}
}
