// Package bench is pushctl's load generator: it measures delivery rate and
// publish-to-delivery latency of pushctl, or of any broker with the same
// /pub and /sub URL shape (nchan), over WebSocket and SSE.
package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/pushctl/pushctl/internal/zmq"
)

// Config describes one run.
type Config struct {
	Server string // base URL, http://host:port
	// SubscribeTo spreads subscribers round-robin over these base URLs
	// (other nodes of a cluster); empty: Server.
	SubscribeTo []string
	Channel     string
	Subscribers int
	Transport   string // ws, sse, ndjson or poll (long-poll)
	// PublishOver is how publishers send: http (a request each), ndjson
	// (one streaming request each), ws (publish frames) or zmq.
	PublishOver string
	Publishers  int
	Messages    int // total messages published
	Size        int // payload bytes
	Rate        int // messages per second over all publishers; 0: as fast as acked
	// Flavor adapts URLs: "pushctl" asks for raw data frames; "nchan" uses
	// the plain /pub and /sub paths of bench/nchan.conf; "centrifugo"
	// publishes with POST /api/publish and subscribes over
	// /connection/websocket (its JSON protocol, without tokens: the
	// server's client.insecure and http_api.insecure).
	Flavor string
	// Settle is how long to wait for deliveries after the last publish
	// before counting the rest as lost.
	Settle time.Duration
	// PublishZMQ, if set, publishes over ZeroMQ to this endpoint (a
	// broker's --zmq-in) from one PUB socket instead of over HTTP.
	PublishZMQ string
	// Progress, if set, receives status lines.
	Progress io.Writer
	// CostPIDs are processes (a Redis server) whose CPU time while
	// publishing and delivering is reported per publish.
	CostPIDs []int
	// RedisStats, a redis:// URL, has Redis's commands while publishing
	// and delivering reported per publish (INFO commandstats).
	RedisStats string
	// Live, if set, is called about every 200 ms while publishing and
	// settling with what was published and delivered so far.
	Live func(published, delivered uint64, elapsed time.Duration)

	// run tells this run's messages from any other's: a broker that
	// keeps messages (nchan does, by default) replays an earlier run's to
	// new subscribers of the same channel.
	run string
}

// Result is what a run measured.
type Result struct {
	Flavor           string        `json:"flavor"`
	Server           string        `json:"server"`
	Channel          string        `json:"channel"`
	Transport        string        `json:"transport"`
	PublishOver      string        `json:"publish_over"`
	Subscribers      int           `json:"subscribers"`
	Publishers       int           `json:"publishers"`
	Size             int           `json:"size"`
	Published        int           `json:"published"`
	PublishErrors    int           `json:"publish_errors"`
	FirstError       string        `json:"first_publish_error,omitempty"`
	Expected         uint64        `json:"expected_deliveries"`
	Delivered        uint64        `json:"delivered"`
	Lost             uint64        `json:"lost"`
	Duplicated       uint64        `json:"duplicated"`
	OtherRuns        uint64        `json:"other_runs"` // messages of other runs received, ignored
	Duration         time.Duration `json:"duration_ns"`
	DeliveriesPerSec float64       `json:"deliveries_per_sec"`
	PublishesPerSec  float64       `json:"publishes_per_sec"`
	P50              time.Duration `json:"p50_ns"`
	P90              time.Duration `json:"p90_ns"`
	P99              time.Duration `json:"p99_ns"`
	P999             time.Duration `json:"p999_ns"`
	Max              time.Duration `json:"max_ns"`
	// CPUPerPublish is the CPU time of CostPIDs per publish.
	CPUPerPublish time.Duration `json:"cost_cpu_per_publish_ns,omitempty"`
	// CommandsPerPublish is RedisStats's commands per publish.
	CommandsPerPublish float64 `json:"redis_commands_per_publish,omitempty"`
}

type subscriber struct {
	hist       Histogram
	received   atomic.Uint64 // distinct messages
	duplicated atomic.Uint64
	otherRuns  atomic.Uint64 // messages of other runs
	run        string
	warm       atomic.Bool
	last       atomic.Int64 // unix nanos of the last delivery
	seen       []uint64     // bit per message number, owned by the reader
}

// payload is "<run>|<unix nanos>|<message number>|" padded with 'x' to
// size (JSON-safe, so every transport carries it as is); warm-up messages
// start with W.
func payload(size int, run string, now time.Time, n int, warm bool) []byte {
	b := make([]byte, 0, max(size, 40))
	if warm {
		b = append(b, 'W')
	}
	b = append(b, run...)
	b = append(b, '|')
	b = strconv.AppendInt(b, now.UnixNano(), 10)
	b = append(b, '|')
	b = strconv.AppendInt(b, int64(n), 10)
	b = append(b, '|')
	for len(b) < size {
		b = append(b, 'x')
	}
	return b
}

// observe records one delivered payload: its latency, and whether its
// number was seen before (a duplicate). A payload of another run counts
// for nothing but otherRuns.
func (s *subscriber) observe(data []byte, now time.Time) {
	warm := len(data) > 0 && data[0] == 'W'
	if warm {
		data = data[1:]
	}
	if len(data) <= len(s.run) || string(data[:len(s.run)]) != s.run || data[len(s.run)] != '|' {
		s.otherRuns.Add(1)
		return
	}
	data = data[len(s.run)+1:]
	if warm {
		s.warm.Store(true)
		return
	}
	i := bytes.IndexByte(data, '|')
	if i <= 0 {
		return
	}
	ns, err := strconv.ParseInt(string(data[:i]), 10, 64)
	if err != nil {
		return
	}
	rest := data[i+1:]
	j := bytes.IndexByte(rest, '|')
	if j <= 0 {
		return
	}
	n, err := strconv.Atoi(string(rest[:j]))
	if err != nil || n < 0 || n/64 >= len(s.seen) {
		return
	}
	if s.seen[n/64]&(1<<(n%64)) != 0 {
		s.duplicated.Add(1)
		return
	}
	s.seen[n/64] |= 1 << (n % 64)
	s.hist.Record(now.Sub(time.Unix(0, ns)))
	s.received.Add(1)
	s.last.Store(now.UnixNano())
}

// subURL is where subscriber i connects.
func (c *Config) subURL(i int) string {
	base := strings.TrimSuffix(c.Server, "/")
	if len(c.SubscribeTo) > 0 {
		base = strings.TrimSuffix(c.SubscribeTo[i%len(c.SubscribeTo)], "/")
	}
	if c.Flavor == "centrifugo" {
		return base + "/connection/websocket"
	}
	u := base + "/sub/" + c.Channel
	if c.Flavor == "pushctl" && (c.Transport == "ws" || c.Transport == "sse") {
		u += "?data=raw"
	}
	return u
}

// Check says what of c cannot be run.
func (c *Config) Check() error {
	switch c.Transport {
	case "ws", "sse":
		if c.Flavor == "centrifugo" && c.Transport != "ws" {
			return fmt.Errorf("centrifugo subscribers use ws")
		}
	case "ndjson", "poll":
		if c.Flavor != "pushctl" {
			return fmt.Errorf("transport %s is pushctl's; %s subscribers use ws or sse", c.Transport, c.Flavor)
		}
	default:
		return fmt.Errorf("transport %q: want ws, sse, ndjson or poll", c.Transport)
	}
	switch c.PublishOver {
	case "", "http":
	case "ndjson", "ws", "zmq":
		if c.Flavor != "pushctl" {
			return fmt.Errorf("publishing over %s is pushctl's; %s publishers use http", c.PublishOver, c.Flavor)
		}
		if c.PublishOver == "zmq" && c.PublishZMQ == "" {
			return errors.New("publishing over zmq needs the broker's --zmq-in endpoint (--publish-zmq)")
		}
	default:
		return fmt.Errorf("publish over %q: want http, ndjson, ws or zmq", c.PublishOver)
	}
	return nil
}

func (c *Config) logf(format string, args ...any) {
	if c.Progress != nil {
		fmt.Fprintf(c.Progress, format+"\n", args...)
	}
}

// Run performs the benchmark.
func Run(ctx context.Context, c Config) (*Result, error) {
	if c.Subscribers < 1 || c.Publishers < 1 || c.Messages < 1 || c.Size < 40 {
		return nil, errors.New("need at least 1 subscriber, 1 publisher, 1 message and a size of 40 bytes")
	}
	if c.PublishZMQ != "" && c.PublishOver == "" {
		c.PublishOver = "zmq"
	}
	if c.PublishOver == "" {
		c.PublishOver = "http"
	}
	if err := c.Check(); err != nil {
		return nil, err
	}
	if c.Settle <= 0 {
		c.Settle = 5 * time.Second
	}
	c.run = newRunID()
	if c.Channel == "" {
		c.Channel = "bench" + c.run // letters and digits: valid on any broker
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	subs := make([]*subscriber, c.Subscribers)
	var wg sync.WaitGroup
	errc := make(chan error, c.Subscribers)
	sem := make(chan struct{}, 64) // dial at most this many at once
	httpc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: c.Publishers * 2, DisableCompression: true}}
	c.logf("connecting %d %s subscribers to %s", c.Subscribers, c.Transport, c.subURL(0))
	for i := range subs {
		subs[i] = &subscriber{seen: make([]uint64, c.Messages/64+1), run: c.run}
		sem <- struct{}{}
		connected := make(chan error, 1)
		wg.Add(1)
		go func(s *subscriber, url string) {
			defer wg.Done()
			var err error
			switch c.Transport {
			case "sse":
				err = runSSE(ctx, httpc, url, s, connected)
			case "ndjson":
				err = runNDJSON(ctx, httpc, url, s, connected)
			case "poll":
				err = runPoll(ctx, httpc, url, s, connected)
			default:
				if c.Flavor == "centrifugo" {
					err = runCentrifugo(ctx, url, c.Channel, s, connected)
				} else {
					err = runWS(ctx, url, s, connected)
				}
			}
			if err != nil && ctx.Err() == nil {
				errc <- err
			}
		}(subs[i], c.subURL(i))
		err := <-connected
		<-sem
		if err != nil {
			return nil, fmt.Errorf("subscriber %d: %w", i+1, err)
		}
	}
	// Warm up: publish until every subscriber has seen a warm-up message,
	// so all are live before measuring.
	c.logf("warming up")
	warmer, err := c.newPublisher(ctx)
	if err != nil {
		return nil, err
	}
	defer warmer.close()
	warmDeadline := time.Now().Add(30 * time.Second)
	for {
		all := true
		for _, s := range subs {
			if !s.warm.Load() {
				all = false
				break
			}
		}
		if all {
			break
		}
		if time.Now().After(warmDeadline) {
			return nil, errors.New("subscribers did not all receive the warm-up message within 30s")
		}
		if err := warmer.publish(payload(c.Size, c.run, time.Now(), 0, true)); err != nil {
			return nil, fmt.Errorf("warm-up publish: %w", err)
		}
		select {
		case err := <-errc:
			return nil, err
		case <-time.After(50 * time.Millisecond):
		}
	}
	warmer.close()
	c.logf("publishing %d messages of %d bytes from %d publishers", c.Messages, c.Size, c.Publishers)
	cost0, err := c.cost(ctx)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	var published, pubErrs atomic.Int64
	var firstErr atomic.Value // string: the first publish error, for the report
	pubFailed := func(err error) {
		pubErrs.Add(1)
		firstErr.CompareAndSwap(nil, err.Error())
		c.logf("publisher: %v", err)
	}
	var next atomic.Int64
	var pwg sync.WaitGroup
	var interval time.Duration
	if c.Rate > 0 {
		interval = time.Second / time.Duration(c.Rate)
	}
	liveDone := make(chan struct{})
	defer close(liveDone)
	if c.Live != nil {
		go func() {
			t := time.NewTicker(200 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-liveDone:
					return
				case now := <-t.C:
					var total uint64
					for _, s := range subs {
						total += s.received.Load()
					}
					c.Live(uint64(published.Load()), total, now.Sub(start))
				}
			}
		}()
	}
	if c.PublishOver == "zmq" {
		if err := publishZMQ(ctx, c, start, interval, &published); err != nil {
			return nil, err
		}
	}
	// due paces message n (from 1) when a rate is set.
	due := func(n int64) {
		if interval > 0 {
			if d := time.Until(start.Add(time.Duration(n-1) * interval)); d > 0 {
				time.Sleep(d) // pacing the load, not waiting for an event
			}
		}
	}
	for p := 0; c.PublishOver != "zmq" && p < c.Publishers; p++ {
		pwg.Add(1)
		go func() {
			defer pwg.Done()
			take := func() (int64, bool) {
				n := next.Add(1)
				if n > int64(c.Messages) || ctx.Err() != nil {
					return 0, false
				}
				due(n)
				return n, true
			}
			var err error
			switch c.PublishOver {
			case "ndjson":
				err = publishNDJSON(ctx, httpc, c, take, &published)
			case "ws":
				err = publishWS(ctx, c, take, &published)
			default:
				hp, err := c.newPublisher(ctx)
				if err != nil {
					pubFailed(err)
					return
				}
				defer hp.close()
				for {
					n, ok := take()
					if !ok {
						return
					}
					if err := hp.publish(payload(c.Size, c.run, time.Now(), int(n), false)); err != nil {
						pubFailed(err)
						continue
					}
					published.Add(1)
				}
			}
			if err != nil {
				pubFailed(err)
			}
		}()
	}
	pwg.Wait()
	pubDone := time.Now()
	expected := uint64(published.Load()) * uint64(c.Subscribers)
	// Wait for deliveries, until none arrive for Settle.
	var lastTotal uint64
	lastProgress := time.Now()
	for {
		var total uint64
		for _, s := range subs {
			total += s.received.Load()
		}
		if total >= expected {
			break
		}
		if total != lastTotal {
			lastTotal, lastProgress = total, time.Now()
		} else if time.Since(lastProgress) > c.Settle {
			break
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	cost1, err := c.cost(ctx)
	if err != nil {
		return nil, err
	}
	cancel()
	wg.Wait()
	var h Histogram
	var delivered uint64
	end := pubDone
	for _, s := range subs {
		h.Merge(&s.hist)
		delivered += s.received.Load()
		if l := time.Unix(0, s.last.Load()); l.After(end) {
			end = l
		}
	}
	var dups, others uint64
	for _, s := range subs {
		dups += s.duplicated.Load()
		others += s.otherRuns.Load()
	}
	if c.PublishOver == "zmq" {
		c.Publishers = 1
	}
	r := &Result{
		Flavor: c.Flavor, Server: c.Server, Channel: c.Channel, Transport: c.Transport, PublishOver: c.PublishOver, Duplicated: dups, OtherRuns: others,
		Subscribers: c.Subscribers, Publishers: c.Publishers, Size: c.Size,
		Published: int(published.Load()), PublishErrors: int(pubErrs.Load()),
		Expected: expected, Delivered: delivered, Duration: end.Sub(start),
		P50: h.Percentile(50), P90: h.Percentile(90), P99: h.Percentile(99), P999: h.Percentile(99.9), Max: h.Max(),
	}
	if e, ok := firstErr.Load().(string); ok {
		r.FirstError = e
	}
	if n := r.Published; n > 0 {
		if len(c.CostPIDs) > 0 {
			r.CPUPerPublish = (cost1.cpu - cost0.cpu) / time.Duration(n)
		}
		if c.RedisStats != "" {
			r.CommandsPerPublish = float64(cost1.commands-cost0.commands) / float64(n)
		}
	}
	if delivered < expected {
		r.Lost = expected - delivered
	}
	if secs := r.Duration.Seconds(); secs > 0 {
		r.DeliveriesPerSec = float64(delivered) / secs
	}
	if secs := pubDone.Sub(start).Seconds(); secs > 0 {
		r.PublishesPerSec = float64(r.Published) / secs
	}
	return r, nil
}

func runWS(ctx context.Context, url string, s *subscriber, connected chan<- error) error {
	d := websocket.Dialer{HandshakeTimeout: 30 * time.Second, ReadBufferSize: 4096, WriteBufferSize: 1024}
	conn, _, err := d.DialContext(ctx, "ws"+strings.TrimPrefix(url, "http"), nil)
	connected <- err
	if err != nil {
		return err
	}
	go func() { <-ctx.Done(); conn.Close() }()
	for {
		_, data, err := conn.ReadMessage()
		if err != nil {
			return err
		}
		s.observe(data, time.Now())
	}
}

func runSSE(ctx context.Context, hc *http.Client, url string, s *subscriber, connected chan<- error) error {
	return runStream(ctx, hc, url, "text/event-stream", s, connected, func(line []byte) []byte {
		if bytes.HasPrefix(line, []byte("data: ")) {
			return bytes.TrimRight(line[6:], "\r\n")
		}
		return nil
	})
}

// runStream reads a streaming GET of url (asking for accept) line by line
// and observes what data picks out of each line (nil: nothing).
func runStream(ctx context.Context, hc *http.Client, url, accept string, s *subscriber, connected chan<- error, data func(line []byte) []byte) error {
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		connected <- err
		return err
	}
	req.Header.Set("Accept", accept)
	resp, err := hc.Do(req)
	if err == nil && resp.StatusCode != 200 {
		resp.Body.Close()
		err = fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	connected <- err
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	br := bufio.NewReaderSize(resp.Body, 16<<10)
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return err
		}
		if d := data(line); d != nil {
			s.observe(d, time.Now())
		}
	}
}

// IdleResult reports the memory cost of idle connections.
type IdleResult struct {
	Transport      string  `json:"transport"`
	Connections    int     `json:"connections"`
	RSSBeforeBytes int64   `json:"rss_before_bytes"`
	RSSAfterBytes  int64   `json:"rss_after_bytes"`
	BytesPerConn   float64 `json:"bytes_per_connection"`
}

// Idle opens n idle subscriptions (one channel each, over c.Transport: ws
// or sse) and reports the growth of the resident memory of pids.
func Idle(ctx context.Context, c Config, n int, pids []int) (*IdleResult, error) {
	before, err := rss(pids)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var conns []io.Closer
	defer func() {
		for _, cn := range conns {
			cn.Close()
		}
	}()
	d := websocket.Dialer{HandshakeTimeout: 30 * time.Second, ReadBufferSize: 1024, WriteBufferSize: 1024,
		NetDialContext: (&net.Dialer{}).DialContext}
	base := strings.TrimSuffix(c.Server, "/")
	if c.Channel == "" {
		c.Channel = "idle" + newRunID() + "n"
	}
	for i := 0; i < n; i++ {
		url := fmt.Sprintf("%s/sub/%s%d", base, c.Channel, i)
		var conn io.Closer
		if c.Transport == "sse" {
			conn, err = idleSSE(ctx, url)
		} else {
			conn, _, err = d.DialContext(ctx, "ws"+strings.TrimPrefix(url, "http"), nil)
		}
		if err != nil {
			return nil, fmt.Errorf("connection %d: %w", i+1, err)
		}
		conns = append(conns, conn)
		if (i+1)%1000 == 0 {
			c.logf("%d idle connections", i+1)
		}
	}
	// Let the server finish setting them up: its RSS stops growing.
	after, err := settleRSS(ctx, pids)
	if err != nil {
		return nil, err
	}
	return &IdleResult{Transport: c.Transport, Connections: n, RSSBeforeBytes: before, RSSAfterBytes: after,
		BytesPerConn: float64(after-before) / float64(n)}, nil
}

// idleSSE opens an SSE stream on a bare connection and reads its response
// head; the bench holds no goroutine for it.
func idleSSE(ctx context.Context, url string) (net.Conn, error) {
	host := strings.TrimPrefix(url, "http://")
	path := host[strings.IndexByte(host, '/'):]
	host = host[:strings.IndexByte(host, '/')]
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", host)
	if err != nil {
		return nil, err
	}
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n\r\n", path, host)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err == nil && resp.StatusCode != 200 {
		err = fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	if err != nil {
		conn.Close()
		return nil, err
	}
	conn.SetDeadline(time.Time{})
	return conn, nil
}

func settleRSS(ctx context.Context, pids []int) (int64, error) {
	prev := int64(-1)
	for i := 0; i < 50; i++ {
		cur, err := rss(pids)
		if err != nil {
			return 0, err
		}
		if cur == prev {
			return cur, nil
		}
		prev = cur
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return prev, nil
}

// rss sums VmRSS of the processes.
func rss(pids []int) (int64, error) {
	var total int64
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			return 0, fmt.Errorf("reading memory of pid %d: %w", pid, err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
				kb, _ := strconv.ParseInt(f[1], 10, 64)
				total += kb << 10
			}
		}
	}
	return total, nil
}

// publishZMQ sends the messages from one ZeroMQ PUB socket, waiting for
// the broker's subscription first and never dropping (backpressure).
func publishZMQ(ctx context.Context, c Config, start time.Time, interval time.Duration, published *atomic.Int64) error {
	ep, err := zmq.ParseEndpoint(c.PublishZMQ, false)
	if err != nil {
		return err
	}
	n := 0
	err = zmq.RunPub(ctx, zmq.PubConfig{
		Endpoint: ep, Block: true, WaitSubscribers: 1, WaitTimeout: 10 * time.Second,
		SocketOptions: zmq.SocketOptions{HWM: 100000, Linger: 5 * time.Second},
	}, nil, func(ctx context.Context) ([]zmq.Out, error) {
		if n >= c.Messages {
			return nil, io.EOF
		}
		batch := make([]zmq.Out, 0, 64)
		for len(batch) < cap(batch) && n < c.Messages {
			if interval > 0 {
				if d := time.Until(start.Add(time.Duration(n) * interval)); d > 0 {
					time.Sleep(d) // pacing the load
				}
			}
			n++
			batch = append(batch, zmq.Out{Channel: c.Channel, Payload: payload(c.Size, c.run, time.Now(), n, false), Seq: uint64(n)})
		}
		published.Add(int64(len(batch)))
		return batch, nil
	})
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

// newRunID returns 6 random hex digits naming a run.
func newRunID() string {
	return fmt.Sprintf("%06x", rand.Uint32()&0xffffff)
}
