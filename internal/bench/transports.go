package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/redis/go-redis/v9"

	"github.com/pushctl/pushctl/internal/wire"
)

// dataField returns the string value of "data" in one JSON message line
// (the bench's payloads need no unescaping).
func dataField(line []byte) []byte {
	i := bytes.Index(line, []byte(`"data":"`))
	if i < 0 {
		return nil
	}
	v := line[i+8:]
	if j := bytes.IndexByte(v, '"'); j >= 0 {
		return v[:j]
	}
	return nil
}

// runNDJSON reads a pushctl NDJSON stream.
func runNDJSON(ctx context.Context, hc *http.Client, url string, s *subscriber, connected chan<- error) error {
	return runStream(ctx, hc, url, "application/x-ndjson", s, connected, dataField)
}

// runPoll long-polls pushctl, each request resuming from the last reply's
// cursor.
func runPoll(ctx context.Context, hc *http.Client, base string, s *subscriber, connected chan<- error) error {
	cursor := ""
	first := true
	for {
		u := base + "?poll=30s"
		if first {
			u = base + "?poll=0s"
		}
		if cursor != "" {
			u += "&since=" + url.QueryEscape(cursor)
		}
		req, err := http.NewRequestWithContext(ctx, "GET", u, nil)
		if err != nil {
			return err
		}
		resp, err := hc.Do(req)
		if err == nil && resp.StatusCode != 200 {
			resp.Body.Close()
			err = fmt.Errorf("HTTP %d", resp.StatusCode)
		}
		var reply wire.PollReply
		if err == nil {
			err = json.NewDecoder(resp.Body).Decode(&reply)
			resp.Body.Close()
		}
		if first {
			// The first poll (poll=0s) answers at once with the cursor to
			// resume from: connected.
			first = false
			connected <- err
		}
		if err != nil {
			return err
		}
		now := time.Now()
		for _, e := range reply.Events {
			env, err := wire.DecodeEnvelope(e)
			if err != nil {
				return fmt.Errorf("long-poll reply: %w", err)
			}
			if env.Type != wire.TypeMessage && env.Type != "" {
				continue // a gap
			}
			data, err := env.Bytes()
			if err != nil {
				return fmt.Errorf("long-poll reply: %w", err)
			}
			s.observe(data, now)
		}
		if reply.Cursor != "" {
			cursor = reply.Cursor
		}
	}
}

// publishNDJSON publishes through one streaming NDJSON request, reading
// the acks as they come.
func publishNDJSON(ctx context.Context, hc *http.Client, c Config, take func() (int64, bool), published *atomic.Int64) error {
	pr, pw := io.Pipe()
	req, err := http.NewRequestWithContext(ctx, "POST", strings.TrimSuffix(c.Server, "/")+"/pub?channel="+url.QueryEscape(c.Channel), pr)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-ndjson")
	go func() {
		bw := bufio.NewWriterSize(pw, 64<<10)
		for {
			n, ok := take()
			if !ok {
				break
			}
			bw.WriteString(`{"data":"`)
			bw.Write(payload(c.Size, c.run, time.Now(), int(n), false))
			bw.WriteString("\"}\n")
			if c.Rate > 0 {
				bw.Flush()
			}
		}
		bw.Flush()
		pw.Close()
	}()
	resp, err := hc.Do(req)
	if err != nil {
		pr.CloseWithError(err)
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		pr.CloseWithError(fmt.Errorf("HTTP %d", resp.StatusCode))
		return fmt.Errorf("NDJSON publish: HTTP %d", resp.StatusCode)
	}
	br := bufio.NewReader(resp.Body)
	for {
		line, err := br.ReadSlice('\n')
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if bytes.Contains(line, []byte(`"error"`)) {
			return fmt.Errorf("NDJSON publish: %s", bytes.TrimSpace(line))
		}
		published.Add(1)
	}
}

// publishWS publishes with WebSocket publish frames on one connection,
// pipelined, counting the acks.
func publishWS(ctx context.Context, c Config, take func() (int64, bool), published *atomic.Int64) error {
	u := "ws" + strings.TrimPrefix(strings.TrimSuffix(c.Server, "/"), "http") + "/ws"
	conn, _, err := (&websocket.Dialer{HandshakeTimeout: 30 * time.Second}).DialContext(ctx, u, nil)
	if err != nil {
		return err
	}
	defer conn.Close()
	// Frames go out through one buffer, many to a write when the broker
	// keeps up (as a streaming client would send them): one system call
	// per frame made the bench, not the broker, the limit. gorilla only
	// reads. The pong to a ping goes out with the next frame: the reading
	// goroutine never writes, since while a write is stuck the acks it
	// reads are what lets the broker read on.
	bw := bufio.NewWriterSize(conn.NetConn(), 64<<10)
	var pong atomic.Pointer[[]byte]
	var out []byte
	send := func(payload []byte, flush bool) error {
		out = out[:0]
		if p := pong.Swap(nil); p != nil {
			out = appendMaskedFrame(out, websocket.PongMessage, *p)
		}
		out = appendMaskedFrame(out, websocket.TextMessage, payload)
		if _, err := bw.Write(out); err != nil {
			return err
		}
		if flush {
			return bw.Flush()
		}
		return nil
	}
	conn.SetPingHandler(func(data string) error {
		p := []byte(data)
		pong.Store(&p)
		return nil
	})
	go func() {
		ch, _ := json.Marshal(c.Channel)
		var frame []byte
		for {
			m, ok := take()
			if !ok {
				break
			}
			frame = append(frame[:0], `{"type":"publish","channel":`...)
			frame = append(frame, ch...)
			frame = append(frame, `,"data":"`...)
			frame = append(frame, payload(c.Size, c.run, time.Now(), int(m), false)...)
			frame = append(frame, `"}`...)
			if send(frame, c.Rate > 0) != nil {
				return
			}
		}
		// Replies come in order: this one's comes after every ack.
		send([]byte(`{"type":"ping","ref":"bench-end"}`), true)
	}()
	for {
		conn.SetReadDeadline(time.Now().Add(60 * time.Second))
		_, data, err := conn.ReadMessage()
		if err != nil {
			return err
		}
		switch {
		case bytes.Contains(data, []byte(`"type":"ack"`)):
			published.Add(1)
		case bytes.Contains(data, []byte(`"ref":"bench-end"`)):
			return nil
		case bytes.Contains(data, []byte(`"type":"error"`)):
			return fmt.Errorf("WebSocket publish: %s", data)
		}
	}
}

// appendMaskedFrame appends one final client frame; the bench's mask key
// need not be unpredictable (it talks to the broker it measures, on
// loopback, not through proxies).
func appendMaskedFrame(b []byte, op byte, payload []byte) []byte {
	return wire.AppendMaskedWSFrame(b, op, payload, [4]byte{0x5a, 0x17, 0xc3, 0x8e})
}

// runCentrifugo subscribes to channel over Centrifugo's WebSocket JSON
// protocol: a connect command, a subscribe command, then publications as
// pushes, several per frame separated by newlines; an empty command is a
// ping, answered with one.
func runCentrifugo(ctx context.Context, url, channel string, s *subscriber, connected chan<- error) error {
	d := websocket.Dialer{HandshakeTimeout: 30 * time.Second, ReadBufferSize: 4096, WriteBufferSize: 1024}
	conn, _, err := d.DialContext(ctx, "ws"+strings.TrimPrefix(url, "http"), nil)
	if err != nil {
		connected <- err
		return err
	}
	go func() { <-ctx.Done(); conn.Close() }()
	sub, _ := json.Marshal(map[string]any{"id": 2, "subscribe": map[string]string{"channel": channel}})
	err = conn.WriteMessage(websocket.TextMessage, append([]byte(`{"id":1,"connect":{}}`+"\n"), sub...))
	subscribed := false
	for err == nil {
		var data []byte
		if _, data, err = conn.ReadMessage(); err != nil {
			break
		}
		now := time.Now()
		for _, line := range bytes.Split(data, []byte("\n")) {
			switch {
			case len(line) == 0:
			case string(line) == "{}":
				err = conn.WriteMessage(websocket.TextMessage, []byte("{}"))
			case !subscribed && bytes.HasPrefix(line, []byte(`{"id":2`)):
				if bytes.Contains(line, []byte(`"error"`)) {
					err = fmt.Errorf("centrifugo subscribe: %s", line)
					break
				}
				subscribed = true
				connected <- nil
			case bytes.HasPrefix(line, []byte(`{"id":1`)) && bytes.Contains(line, []byte(`"error"`)):
				err = fmt.Errorf("centrifugo connect: %s", line)
			case subscribed:
				if v := dataField(line); v != nil {
					s.observe(v, now)
				}
			}
		}
	}
	if !subscribed {
		connected <- err
	}
	return err
}

// costs are what CostPIDs and RedisStats measure at one moment.
type costs struct {
	cpu      time.Duration
	commands int64
}

// cost reads the CPU time of CostPIDs (utime+stime of /proc/PID/stat)
// and the commands RedisStats's Redis ran (INFO commandstats; INFO
// itself left out).
func (c *Config) cost(ctx context.Context) (costs, error) {
	var out costs
	for _, pid := range c.CostPIDs {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return out, fmt.Errorf("CPU time of pid %d: %w", pid, err)
		}
		// Fields after the command's closing parenthesis: state is 3,
		// utime 14 and stime 15 (proc(5)).
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(f) < 13 {
			return out, fmt.Errorf("CPU time of pid %d: short /proc stat", pid)
		}
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		out.cpu += time.Duration(ut+st) * time.Second / clockTicks
	}
	if c.RedisStats != "" {
		opts, err := redis.ParseURL(c.RedisStats)
		if err != nil {
			return out, fmt.Errorf("--redis-stats: %w", err)
		}
		rdb := redis.NewClient(opts)
		defer rdb.Close()
		info, err := rdb.Info(ctx, "commandstats").Result()
		if err != nil {
			return out, fmt.Errorf("--redis-stats: %w", err)
		}
		for _, line := range strings.Split(info, "\n") {
			name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
			if !ok || !strings.HasPrefix(name, "cmdstat_") || name == "cmdstat_info" {
				continue
			}
			calls, _, _ := strings.Cut(strings.TrimPrefix(rest, "calls="), ",")
			n, _ := strconv.ParseInt(calls, 10, 64)
			out.commands += n
		}
	}
	return out, nil
}

// clockTicks is USER_HZ, the unit of /proc's CPU times: 100 on Linux.
const clockTicks = 100
