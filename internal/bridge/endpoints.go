package bridge

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/gorilla/websocket"
	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/client"
	"github.com/pushctl/pushctl/internal/wire"
	"github.com/pushctl/pushctl/internal/zmq"
)

// EndpointOptions are the per-side settings given on the command line.
type EndpointOptions struct {
	// Channels filter a ZeroMQ source (names or patterns).
	Channels []string
	// ZMQ socket settings, and legacy single-frame output on a ZeroMQ sink.
	ZMQ       zmq.SocketOptions
	ZMQSep    byte
	ZMQLegacy bool
	// Headers are added to HTTP and WebSocket requests.
	Headers http.Header
	// Token authenticates to pushctl:// endpoints; CAFile adds trusted
	// certificates for every https/wss endpoint.
	Token  string
	CAFile string
	// ConnectTimeout bounds establishing one connection (default 5s).
	ConnectTimeout time.Duration
}

func (o EndpointOptions) httpClient(timeout time.Duration) (*http.Client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DialContext = (&net.Dialer{Timeout: o.connectTimeout(), KeepAlive: 30 * time.Second}).DialContext
	tr.TLSHandshakeTimeout = o.connectTimeout()
	cfg, err := client.TLSConfig(o.CAFile)
	if err != nil {
		return nil, err
	}
	if cfg != nil {
		tr.TLSClientConfig = cfg
	}
	return &http.Client{Transport: tr, Timeout: timeout}, nil
}

func (o EndpointOptions) dialer() *websocket.Dialer {
	d := *websocket.DefaultDialer
	d.TLSClientConfig, _ = client.TLSConfig(o.CAFile)
	d.NetDialContext = (&net.Dialer{Timeout: o.connectTimeout()}).DialContext
	d.HandshakeTimeout = o.connectTimeout()
	return &d
}

func (o EndpointOptions) connectTimeout() time.Duration {
	if o.ConnectTimeout > 0 {
		return o.ConnectTimeout
	}
	return client.DefaultConnectTimeout
}

// ParseSource returns the source named by raw:
//
//	zmq:tcp://HOST:PORT    ZeroMQ SUB, connects (zmq:@… binds)
//	ws://… wss://…         frames from any WebSocket server
//	sse://… http(s)://…    any text/event-stream, resuming with Last-Event-ID
//	pushctl://HOST:PORT/CH1,CH2   a pushctl broker's channels, resuming by id
//	pushctl://H1:P1,H2:P2/CH      the same from several nodes, in turn
//	ds://HOST:PORT/PATH[?offset=-1]  a Durable Stream (dss:// for HTTPS), by long-poll
//	-                      lines of standard input
func ParseSource(raw string, o EndpointOptions, env *Env) (Source, error) {
	switch {
	case raw == "-":
		return &stdinSource{r: os.Stdin}, nil
	case strings.HasPrefix(raw, "zmq:"):
		ep, err := zmq.ParseEndpoint(strings.TrimPrefix(raw, "zmq:"), false)
		if err != nil {
			return nil, err
		}
		return &zmqSource{ep: ep, o: o, env: env}, nil
	case isPushctl(raw):
		c, chans, err := pushctlURL(raw, o)
		if err != nil {
			return nil, fmt.Errorf("source %q: %w", raw, err)
		}
		return &pushctlSource{c: c, channels: chans, raw: raw, env: env}, nil
	case IsDurableStream(raw):
		s, err := newDSSource(raw, o, env)
		if err != nil {
			return nil, fmt.Errorf("source %q: %w", raw, err)
		}
		return s, nil
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("source %q: %w", raw, err)
	}
	switch u.Scheme {
	case "ws", "wss":
		return &wsSource{url: raw, o: o, env: env}, nil
	case "sse", "sses", "http", "https":
		switch u.Scheme {
		case "sse":
			u.Scheme = "http"
		case "sses":
			u.Scheme = "https"
		}
		return &sseSource{url: u.String(), o: o, env: env}, nil
	}
	return nil, fmt.Errorf("source %q: unknown kind; use zmq:, ws(s)://, sse:// or http(s)://, pushctl(s)://, ds(s):// or -", raw)
}

// ParseSink returns the sink named by raw:
//
//	zmq:tcp://HOST:PORT    ZeroMQ PUB, binds (zmq:>… connects)
//	ws://… wss://…         frames to any WebSocket server
//	http(s)://…            one POST per message
//	pushctl://HOST:PORT[/CH]   publish to a pushctl broker (CH renames)
//	pushctl://H1:P1,H2:P2[/CH] the same, moving to the next node when one is down
//	ds://HOST:PORT/PATH[?content-type=T]  append to a Durable Stream (dss:// for HTTPS)
//	-                      data lines on standard output
func ParseSink(raw string, o EndpointOptions, env *Env) (Sink, error) {
	switch {
	case raw == "-":
		return &stdoutSink{w: bufio.NewWriter(os.Stdout)}, nil
	case strings.HasPrefix(raw, "zmq:"):
		ep, err := zmq.ParseEndpoint(strings.TrimPrefix(raw, "zmq:"), true)
		if err != nil {
			return nil, err
		}
		return newZMQSink(ep, o, env), nil
	case isPushctl(raw):
		c, chans, err := pushctlURL(raw, o)
		if err != nil {
			return nil, fmt.Errorf("sink %q: %w", raw, err)
		}
		if len(chans) > 1 {
			return nil, fmt.Errorf("sink %q: name at most one channel", raw)
		}
		s := &pushctlSink{c: c, raw: raw, env: env}
		if len(chans) == 1 {
			s.channel = chans[0]
		}
		return s, nil
	case IsDurableStream(raw):
		s, err := newDSSink(raw, o, env)
		if err != nil {
			return nil, fmt.Errorf("sink %q: %w", raw, err)
		}
		return s, nil
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("sink %q: %w", raw, err)
	}
	switch u.Scheme {
	case "ws", "wss":
		return &wsSink{url: raw, o: o, env: env}, nil
	case "http", "https":
		hc, err := o.httpClient(30 * time.Second)
		if err != nil {
			return nil, err
		}
		lines := false
		if u, err := url.Parse(raw); err == nil {
			v := u.Query().Get("lines")
			lines = v == "1" || v == "true"
		}
		return &httpSink{url: raw, lines: lines, o: o, env: env, hc: hc}, nil
	}
	return nil, fmt.Errorf("sink %q: unknown kind; use zmq:, ws(s)://, http(s)://, pushctl(s)://, ds(s):// or -", raw)
}

// DefaultBrokerPort is the port of a pushctl:// endpoint that names none:
// the one `pushctl serve` listens on by default.
const DefaultBrokerPort = "7070"

func isPushctl(raw string) bool {
	return strings.HasPrefix(raw, "pushctl://") || strings.HasPrefix(raw, "pushctls://")
}

// pushctlURL reads pushctl(s)://HOST[:PORT][,HOST[:PORT]…][/CH1,CH2]: the
// client tries the nodes in turn, as `--server A,B` does. Without a port,
// pushctl:// is the broker's default port 7070 and pushctls:// is HTTPS's
// 443 (a broker behind a TLS proxy or serving TLS there).
func pushctlURL(raw string, o EndpointOptions) (*client.Client, []string, error) {
	scheme, rest, _ := strings.Cut(raw, "://")
	hosts, path, _ := strings.Cut(rest, "/")
	web := "http"
	if scheme == "pushctls" {
		web = "https"
	}
	var servers []string
	for _, h := range strings.Split(hosts, ",") {
		u, err := url.Parse(web + "://" + h)
		if err != nil || h == "" || u.Host != h {
			return nil, nil, fmt.Errorf("%q is not HOST:PORT (list several nodes as HOST:PORT,HOST:PORT)", h)
		}
		if u.Port() == "" && scheme == "pushctl" {
			h = net.JoinHostPort(u.Hostname(), DefaultBrokerPort)
		}
		servers = append(servers, web+"://"+h)
	}
	c, err := client.NewWithOptions(strings.Join(servers, ","), client.Options{Token: o.Token, CAFile: o.CAFile, ConnectTimeout: o.ConnectTimeout})
	if err != nil {
		return nil, nil, err
	}
	var chans []string
	if p := strings.Trim(path, "/"); p != "" {
		if chans, err = broker.ParseChannelList(p); err != nil {
			return nil, nil, err
		}
	}
	return c, chans, nil
}

// --- ZeroMQ ---------------------------------------------------------------

type zmqSource struct {
	ep  zmq.Endpoint
	o   EndpointOptions
	env *Env
}

func (s *zmqSource) String() string { return "zmq:" + s.ep.String() }

func (s *zmqSource) Run(ctx context.Context, emit func(Message) error) error {
	last := map[string]uint64{}
	o := s.o.ZMQ
	o.Linger = 0
	return zmq.RunSub(ctx, zmq.SubConfig{
		Endpoint: s.ep, Channels: s.o.Channels, Sep: s.o.ZMQSep, SocketOptions: o,
		OnMalformed: func(err error) {
			s.env.Counters.Dropped.Add(1)
			s.env.warn("%s: dropping a malformed message: %v", s, err)
		},
	}, nil, func(f zmq.Frame) error {
		if f.HasSeq {
			if prev, ok := last[f.Channel]; ok && f.Seq > prev+1 {
				s.env.Counters.Dropped.Add(f.Seq - prev - 1)
				s.env.warn("%s: %s lost on %s before they reached the bridge", s, plural(int(f.Seq-prev-1), "message"), f.Channel)
			}
			last[f.Channel] = f.Seq
		}
		return emit(Message{Channel: f.Channel, Data: append([]byte(nil), f.Payload...)})
	})
}

// zmqSink owns its socket in one goroutine, fed through a channel.
type zmqSink struct {
	ctx  context.Context
	stop context.CancelFunc
	ep   zmq.Endpoint
	in   chan Message
	done chan error
	st   zmq.PubStats
}

func newZMQSink(ep zmq.Endpoint, o EndpointOptions, env *Env) *zmqSink {
	s := &zmqSink{ep: ep, in: make(chan Message, 256), done: make(chan error, 1)}
	s.ctx, s.stop = context.WithCancel(context.Background())
	seq := map[string]uint64{}
	go func() {
		sock := o.ZMQ
		if sock.Linger == 0 {
			sock.Linger = 5 * time.Second
		}
		// Sending before anyone subscribed would lose messages silently:
		// wait for the first subscriber (the source waits meanwhile).
		s.done <- zmq.RunPub(s.ctx, zmq.PubConfig{
			Endpoint: ep, SocketOptions: sock, Legacy: o.ZMQLegacy, Sep: o.ZMQSep, WaitSubscribers: 1,
			OnDrop: func(ch string) {
				env.Counters.Dropped.Add(1)
				env.warn("%s: a subscriber's queue is full: dropped a message on %s", s, ch)
			},
		}, &s.st, func(ctx context.Context) ([]zmq.Out, error) {
			var m Message
			var ok bool
			select {
			case m, ok = <-s.in:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			if !ok {
				return nil, io.EOF
			}
			if m.Channel == "" {
				env.Counters.Dropped.Add(1)
				env.warn("%s: dropping a message without a channel (give --channel)", s)
				return nil, nil
			}
			seq[m.Channel]++
			return []zmq.Out{{Channel: m.Channel, Payload: m.Data, Seq: seq[m.Channel]}}, nil
		})
	}()
	return s
}

func (s *zmqSink) String() string { return "zmq:" + s.ep.String() }

func (s *zmqSink) Send(ctx context.Context, m Message) error {
	select {
	case s.in <- m:
		return nil
	case err := <-s.done:
		s.done <- err
		if err == nil {
			err = errors.New("socket closed")
		}
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *zmqSink) Close(ctx context.Context) error {
	close(s.in)
	select {
	case err := <-s.done:
		if errors.Is(err, io.EOF) {
			err = nil
		}
		return err
	case <-ctx.Done():
		s.stop() // still waiting for a subscriber: give up
		<-s.done
		return nil
	}
}

// --- WebSocket --------------------------------------------------------------

type wsSource struct {
	url string
	o   EndpointOptions
	env *Env
}

func (s *wsSource) String() string { return s.url }

func (s *wsSource) Run(ctx context.Context, emit func(Message) error) error {
	var bo backoff
	for {
		conn, err := dialWS(ctx, s.url, s.o, s.env, &bo)
		if err != nil {
			return err
		}
		stop := context.AfterFunc(ctx, func() { conn.Close() })
		err = s.read(conn, emit)
		stop()
		conn.Close()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, errEmit) {
			return err
		}
		if err := retryAfter(ctx, s.env, &bo, s, err, "reconnecting"); err != nil {
			return err
		}
	}
}

var errEmit = errors.New("stopped")

// retryAfter reports a failed attempt, waits out the backoff and counts
// the reconnect. An endpoint that never answered is retried quietly and,
// after env.ConnectTimeout, fails for good with "cannot reach …"; one
// that answered before is retried until ctx ends, with a warning for the
// first failure and then at most one per env.WarnEvery.
func retryAfter(ctx context.Context, env *Env, bo *backoff, what fmt.Stringer, err error, verb string) error {
	now := time.Now()
	if !bo.answered {
		if bo.start.IsZero() {
			bo.start = now
		}
		limit := env.ConnectTimeout
		if limit <= 0 {
			limit = client.DefaultConnectTimeout
		}
		if now.Sub(bo.start) >= limit {
			return &fatalError{&client.UnreachableError{URL: what.String(), Err: err}}
		}
		return bo.wait(ctx)
	}
	bo.fails++
	every := env.WarnEvery
	if every <= 0 {
		every = 30 * time.Second
	}
	if bo.fails == 1 || now.Sub(bo.lastWarn) >= every {
		bo.lastWarn = now
		if bo.fails == 1 {
			env.warn("%s: %v; %s", what, err, verb)
		} else {
			env.warn("%s: %v; still %s (attempt %d)", what, err, verb, bo.fails)
		}
	}
	if err := bo.wait(ctx); err != nil {
		return err
	}
	env.Counters.Reconnects.Add(1)
	return nil
}

// dialWS connects to a WebSocket server, retrying with backoff until ctx
// ends; a 4xx answer is final.
func dialWS(ctx context.Context, url string, o EndpointOptions, env *Env, bo *backoff) (*websocket.Conn, error) {
	for {
		conn, resp, err := o.dialer().DialContext(ctx, url, o.Headers)
		if err == nil {
			bo.reset()
			return conn, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if resp != nil {
			bo.heard()
			if resp.StatusCode >= 400 && resp.StatusCode < 500 {
				return nil, fmt.Errorf("HTTP %d", resp.StatusCode)
			}
		}
		if err := retryAfter(ctx, env, bo, stringer(url), err, "retrying"); err != nil {
			return nil, err
		}
	}
}

func (s *wsSource) read(conn *websocket.Conn, emit func(Message) error) error {
	for {
		_, data, err := conn.ReadMessage()
		if err != nil {
			return err
		}
		m := unwrap(data)
		if m == nil {
			continue // a control frame of the pushctl protocol
		}
		if err := emit(*m); err != nil {
			return errors.Join(errEmit, err)
		}
	}
}

// unwrap turns a pushctl envelope into its message; anything else is the
// data itself. It returns nil for pushctl control frames.
func unwrap(data []byte) *Message {
	if bytes.HasPrefix(data, []byte(`{"type":"`)) {
		if env, err := wire.DecodeEnvelope(data); err == nil {
			if env.Type != wire.TypeMessage {
				return nil
			}
			if m, err := env.Message(); err == nil {
				return &Message{Channel: m.Channel, Event: m.Event, Data: m.Data, ID: m.ID()}
			}
		}
	}
	return &Message{Data: append([]byte(nil), data...)}
}

type wsSink struct {
	url  string
	o    EndpointOptions
	env  *Env
	conn *websocket.Conn
	bo   backoff
}

func (s *wsSink) String() string { return s.url }

func (s *wsSink) Send(ctx context.Context, m Message) error {
	for {
		if s.conn == nil {
			conn, err := dialWS(ctx, s.url, s.o, s.env, &s.bo)
			if err != nil {
				return err
			}
			s.conn = conn
			// Read (and discard) what the server sends so its pings are answered.
			go func() {
				for {
					if _, _, err := conn.ReadMessage(); err != nil {
						return
					}
				}
			}()
		}
		typ := websocket.TextMessage
		if !utf8Valid(m.Data) {
			typ = websocket.BinaryMessage
		}
		s.conn.SetWriteDeadline(time.Now().Add(30 * time.Second))
		if err := s.conn.WriteMessage(typ, m.Data); err != nil {
			s.env.warn("%s: %v; reconnecting", s, err)
			s.conn.Close()
			s.conn = nil
			continue
		}
		return nil
	}
}

func (s *wsSink) Close(ctx context.Context) error {
	if s.conn != nil {
		s.conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
		return s.conn.Close()
	}
	return nil
}

// --- SSE --------------------------------------------------------------------

type sseSource struct {
	url string
	o   EndpointOptions
	env *Env
}

func (s *sseSource) String() string { return s.url }

func (s *sseSource) Run(ctx context.Context, emit func(Message) error) error {
	var bo backoff
	lastID := ""
	for {
		err := s.once(ctx, &lastID, emit, &bo)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var fatal *fatalError
		if errors.As(err, &fatal) || errors.Is(err, errEmit) {
			return err
		}
		if err := retryAfter(ctx, s.env, &bo, s, err, "reconnecting"); err != nil {
			return err
		}
	}
}

type fatalError struct{ err error }

func (e *fatalError) Error() string { return e.err.Error() }

func (s *sseSource) once(ctx context.Context, lastID *string, emit func(Message) error, bo *backoff) error {
	req, err := http.NewRequestWithContext(ctx, "GET", s.url, nil)
	if err != nil {
		return &fatalError{err}
	}
	for k, v := range s.o.Headers {
		req.Header[k] = v
	}
	req.Header.Set("Accept", "text/event-stream")
	if *lastID != "" {
		req.Header.Set("Last-Event-ID", *lastID)
	}
	hc, err := s.o.httpClient(0)
	if err != nil {
		return &fatalError{err}
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	bo.heard()
	if resp.StatusCode >= 400 && resp.StatusCode < 500 {
		return &fatalError{fmt.Errorf("HTTP %d", resp.StatusCode)}
	}
	if resp.StatusCode != 200 {
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	bo.reset()
	return readSSE(bufio.NewReaderSize(resp.Body, 64<<10), maxSSELine, lastID, func(event, id string, data []byte) error {
		return s.dispatch(event, id, data, emit)
	})
}

// maxSSELine bounds one line (and one event's data) from an SSE source, so
// a hostile or broken source cannot make the bridge buffer without end.
const maxSSELine = 16 << 20

// readSSE parses an event stream (lines end in \n, a \r before it is
// dropped; "field: value"; a blank line
// dispatches; an id moves lastID even without data), calling dispatch for
// each event with data, until the stream or dispatch fails.
func readSSE(br *bufio.Reader, max int, lastID *string, dispatch func(event, id string, data []byte) error) error {
	var event, id string
	var data bytes.Buffer
	hasData := false
	var buf []byte
	for {
		buf = buf[:0]
		var err error
		for {
			var chunk []byte
			chunk, err = br.ReadSlice('\n')
			buf = append(buf, chunk...)
			if len(buf) > max || data.Len() > max {
				return &fatalError{fmt.Errorf("SSE line or event longer than %d bytes", max)}
			}
			if err != bufio.ErrBufferFull {
				break
			}
		}
		if err != nil {
			if err == io.EOF {
				return errors.New("stream ended")
			}
			return err
		}
		line := strings.TrimRight(string(buf), "\r\n")
		if line == "" {
			if id != "" {
				*lastID = id // an id without data still moves the resume point
			}
			if hasData {
				if err := dispatch(event, id, data.Bytes()); err != nil {
					return err
				}
			}
			event, id, hasData = "", "", false
			data.Reset()
			continue
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "event":
			event = value
		case "id":
			id = value
		case "data":
			if hasData {
				data.WriteByte('\n')
			}
			data.WriteString(value)
			hasData = true
		}
	}
}

func (s *sseSource) dispatch(event, id string, data []byte, emit func(Message) error) error {
	switch event {
	case wire.SSEGap:
		s.env.Counters.Gaps.Add(1)
		s.env.warn("%s: the broker no longer holds some messages: %s", s, data)
		return nil
	case wire.SSEError:
		return fmt.Errorf("broker ended the stream: %s", data)
	}
	if strings.HasPrefix(event, wire.SSEControlPrefix) {
		return nil // a control event of a newer broker
	}
	m := unwrap(data)
	if m == nil {
		return nil
	}
	if m.Event == "" {
		m.Event = event
	}
	if m.ID == "" {
		m.ID = id
	}
	if err := emit(*m); err != nil {
		return errors.Join(errEmit, err)
	}
	return nil
}

// --- HTTP POST ----------------------------------------------------------------

type httpSink struct {
	url string
	// lines: the URL is a pushctl publish of one message per line
	// (?lines=1), where an idempotency key, naming one message, is refused.
	lines bool
	o     EndpointOptions
	env   *Env
	hc    *http.Client
	bo    backoff
}

func (s *httpSink) String() string { return s.url }

func (s *httpSink) Send(ctx context.Context, m Message) error {
	key := client.NewKey() // the same for every try (see pushctlSink.Send)
	for {
		req, err := http.NewRequestWithContext(ctx, "POST", s.url, bytes.NewReader(m.Data))
		if err != nil {
			return err
		}
		for k, v := range s.o.Headers {
			req.Header[k] = v
		}
		if m.Channel != "" {
			req.Header.Set("X-Pushctl-Channel", m.Channel)
		}
		if m.Event != "" {
			req.Header.Set("X-Pushctl-Event", m.Event)
		}
		if m.ID != "" {
			req.Header.Set("X-Pushctl-Id", m.ID)
		}
		if req.Header.Get("Idempotency-Key") == "" && !s.lines {
			req.Header.Set("Idempotency-Key", key)
		}
		resp, err := s.hc.Do(req)
		if err == nil {
			s.bo.heard()
			io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
			resp.Body.Close()
			switch {
			case resp.StatusCode < 300:
				s.bo.reset()
				return nil
			case resp.StatusCode >= 400 && resp.StatusCode < 500 && resp.StatusCode != 408 && resp.StatusCode != 429:
				return fmt.Errorf("%w: HTTP %d", ErrRejected, resp.StatusCode)
			}
			err = fmt.Errorf("HTTP %d", resp.StatusCode)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err := retryAfter(ctx, s.env, &s.bo, s, err, "retrying"); err != nil {
			return err
		}
	}
}

func (s *httpSink) Close(context.Context) error { return nil }

// --- pushctl ------------------------------------------------------------------

type pushctlSource struct {
	c        *client.Client
	channels []string
	raw      string
	env      *Env
}

func (s *pushctlSource) String() string { return s.raw }

func (s *pushctlSource) Run(ctx context.Context, emit func(Message) error) error {
	if len(s.channels) == 0 {
		return &fatalError{errors.New("name the channels: pushctl://HOST:PORT/CH1,CH2")}
	}
	var lastWarn time.Time
	err := s.c.Subscribe(ctx, client.SubscribeOptions{
		Channels: s.channels, ConnectTimeout: s.env.ConnectTimeout,
		OnStatus: func(st client.Status) {
			if st.State == client.StateReconnecting {
				s.env.Counters.Reconnects.Add(1)
				every := s.env.WarnEvery
				if every <= 0 {
					every = 30 * time.Second
				}
				if st.Attempt == 1 || time.Since(lastWarn) >= every {
					lastWarn = time.Now()
					s.env.warn("%s: %v; reconnecting (attempt %d)", s, st.Err, st.Attempt)
				}
			}
		},
	}, func(ev client.Event) error {
		if ev.Gap != nil {
			s.env.Counters.Gaps.Add(1)
			s.env.warn("%s: the broker no longer holds messages of %s after %s", s, ev.Gap.Channel, ev.Gap.From)
			return nil
		}
		m := ev.Msg
		return emit(Message{Channel: m.Channel, Event: m.Event, Data: m.Data, ID: m.ID()})
	})
	if errors.Is(err, client.ErrUnreachable) {
		return &fatalError{err}
	}
	return err
}

type pushctlSink struct {
	c       *client.Client
	channel string
	raw     string
	env     *Env
	bo      backoff
}

func (s *pushctlSink) String() string { return s.raw }

func (s *pushctlSink) Send(ctx context.Context, m Message) error {
	ch := m.Channel
	if s.channel != "" {
		ch = s.channel
	}
	if ch == "" {
		return fmt.Errorf("%w: message without a channel (name one in the sink URL or with --channel)", ErrRejected)
	}
	event := m.Event
	if event == broker.DefaultEvent {
		event = ""
	}
	// One key for every try: a publish whose reply was lost (its node
	// went away mid-request) and that is sent again, to the same node or
	// the next, is stored once.
	key := client.NewKey()
	for {
		_, err := s.c.Publish(ctx, ch, m.Data, client.PublishOptions{Event: event, Key: key})
		if err == nil {
			s.bo.reset()
			return nil
		}
		if !errors.Is(err, client.ErrUnreachable) {
			s.bo.heard()
		}
		var ae *client.APIError
		if errors.As(err, &ae) && ae.Status >= 400 && ae.Status < 500 && ae.Status != 408 && ae.Status != 429 {
			return fmt.Errorf("%w: %v", ErrRejected, err)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err := retryAfter(ctx, s.env, &s.bo, s, err, "retrying"); err != nil {
			return err
		}
	}
}

func (s *pushctlSink) Close(context.Context) error { return nil }

// --- stdio --------------------------------------------------------------------

type stdinSource struct{ r io.Reader }

func (s *stdinSource) String() string { return "stdin" }

func (s *stdinSource) Run(ctx context.Context, emit func(Message) error) error {
	sc := bufio.NewScanner(s.r)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	for sc.Scan() {
		if err := emit(Message{Data: append([]byte(nil), sc.Bytes()...)}); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	return io.EOF // input ended: the bridge ends once the sink has everything
}

type stdoutSink struct{ w *bufio.Writer }

func (s *stdoutSink) String() string { return "stdout" }

func (s *stdoutSink) Send(ctx context.Context, m Message) error {
	s.w.Write(m.Data)
	s.w.WriteByte('\n')
	return s.w.Flush()
}

func (s *stdoutSink) Close(context.Context) error { return s.w.Flush() }

func utf8Valid(b []byte) bool {
	k, _ := broker.ClassifyData("", b)
	return k != broker.KindBinary
}

// stringer shows a plain string where a fmt.Stringer is wanted.
type stringer string

func (s stringer) String() string { return string(s) }

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
