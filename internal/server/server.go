// Package server is pushctl's HTTP surface: publish, subscribe over
// WebSocket, SSE, NDJSON, raw lines and long-poll, channel info and health.
package server

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/pushctl/pushctl/internal/auth"
	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/connrt"
	"github.com/pushctl/pushctl/internal/consumer"
	"github.com/pushctl/pushctl/internal/door"
	"github.com/pushctl/pushctl/internal/hooks"
	"github.com/pushctl/pushctl/internal/presence"
	"github.com/pushctl/pushctl/internal/pusher"
	"github.com/pushctl/pushctl/internal/pusher/pusherd"
	"github.com/pushctl/pushctl/internal/web"
	"github.com/pushctl/pushctl/internal/wire"
)

// Options configure a Server.
type Options struct {
	// MaxMessageSize bounds one message's data in bytes (default 1 MiB).
	MaxMessageSize int64
	// QueueSize bounds each subscriber's queue (default: the broker's).
	QueueSize int
	// Keepalive is the SSE/NDJSON keepalive interval (default 15s).
	Keepalive time.Duration
	// PingInterval is the WebSocket ping interval (default 30s); a peer
	// silent for two intervals is disconnected.
	PingInterval time.Duration
	// WriteTimeout is how long a subscriber may take no bytes at all
	// before it counts as stalled and is disconnected (default 10s).
	WriteTimeout time.Duration
	// CloseGrace is how long a connection that is being ended gets to take
	// its last frames and the reason (default 5s).
	CloseGrace time.Duration
	// MaxPoll bounds a long-poll wait (default 5m).
	MaxPoll time.Duration
	// StreamPollWait is how long a Durable Streams long-poll waits for
	// data before its 204 (default 20s).
	StreamPollWait time.Duration
	// Logger receives operational logs (default: discard).
	Logger *slog.Logger
	// ExtraStats adds counters to GET /stats (ZeroMQ endpoints, …).
	ExtraStats func() map[string]uint64
	// ChannelExtra adds counters to a channel's info.
	ChannelExtra func(channel string) map[string]uint64
	// Auth decides who may publish and subscribe (nil: everyone).
	Auth *auth.Authorizer
	// Limits bound what one client may use.
	Limits Limits
	// AllowedOrigins are the browser origins allowed for WebSocket and
	// CORS ("*" or empty: any; tokens, not cookies, carry authority).
	AllowedOrigins []string
	// TrustedProxies are the reverse proxies (nginx on the same host, a
	// load balancer) whose Forwarded / X-Forwarded-For headers say who the
	// client is; from anyone else those headers are ignored.
	TrustedProxies []netip.Prefix
	// NoConsole turns the web console at / off (pushctl.js is still served).
	NoConsole bool
	// Presence bounds channels' presence (members, info size, id length).
	Presence presence.Limits
	// PresenceGrace is how long a member whose last connection dropped
	// stays, so a quick reconnect is not a leave (default 3s).
	PresenceGrace time.Duration
	// PusherApps turns on the Pusher Channels protocol and HTTP API for
	// these apps (served by internal/pusher/pusherd on this server's
	// connection runtime, see wsprotocol.go).
	PusherApps []pusher.App
	// PusherWebhookDelay delays channel_vacated and member_removed
	// webhooks (0: 3s; negative: none).
	PusherWebhookDelay time.Duration
	// Namespaces are kinds of channel with rules of their own (see
	// door.Namespace).
	Namespaces []door.Namespace
	// Hooks ask the application (nil: none); HookFailure is what happens
	// when it does not answer (door.FailDeny or door.FailAllow).
	Hooks       *hooks.Client
	HookFailure string
	// TLSCert and TLSKey serve HTTPS and WSS.
	TLSCert, TLSKey string
	// Events configures the lifecycle events and webhooks
	// (docs/events.md).
	Events door.EventsConfig
	// Consumers are the broker's durable consumers, kept in a store (nil:
	// in memory); the door holds them.
	Consumers consumer.Engine
}

func (o *Options) fill() {
	if o.MaxMessageSize <= 0 {
		o.MaxMessageSize = 1 << 20
	}
	if o.Keepalive <= 0 {
		o.Keepalive = 15 * time.Second
	}
	if o.PingInterval <= 0 {
		o.PingInterval = 30 * time.Second
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = 10 * time.Second
	}
	if o.CloseGrace <= 0 {
		o.CloseGrace = 5 * time.Second
	}
	if o.PresenceGrace == 0 {
		o.PresenceGrace = 3 * time.Second
	}
	if o.StreamPollWait <= 0 {
		o.StreamPollWait = 20 * time.Second
	}
	if o.MaxPoll <= 0 {
		o.MaxPoll = 5 * time.Minute
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Server serves the pushctl HTTP API over one broker.
type Server struct {
	// door is the server's only way to the broker and to presence.
	door *door.Door
	opts Options
	log  *slog.Logger
	mux  *http.ServeMux

	metrics        metrics
	metricsHandler http.Handler
	upgrader       websocket.Upgrader
	pusher         *pusherd.Service // nil without Pusher apps
	streams        streamsState     // Durable Streams (streams.go)

	connMu     sync.Mutex
	connsPerIP map[string]int

	handler http.Handler
	// wsWheel and streamWheel pace keepalives of WebSockets and of
	// HTTP streams (SSE, NDJSON, raw).
	wsWheel, streamWheel *connrt.Wheel[*session]
	stopping             chan struct{}
	stopOnce             sync.Once
	conns                sync.WaitGroup // long-lived subscriber handlers (see enter)
	draining             bool           // guarded by connMu: Serve is waiting for conns
}

// New returns a Server for b.
func New(b broker.Broker, opts Options) *Server {
	opts.fill()
	opts.Events.Also = pusherd.EventChannels(opts.PusherApps)
	opts.Events.AppWebhooks = append(opts.Events.AppWebhooks, pusherd.Webhooks(opts.PusherApps, opts.PusherWebhookDelay)...)
	d := door.New(b, door.Config{Auth: opts.Auth, MaxMessageSize: opts.MaxMessageSize,
		PublishRate: opts.Limits.PublishRate, PublishBurst: opts.Limits.PublishBurst, PresenceGrace: opts.PresenceGrace,
		Namespaces: opts.Namespaces, Hooks: opts.Hooks, HookFailure: opts.HookFailure, Events: opts.Events,
		Consumers: opts.Consumers})
	s := &Server{door: d, opts: opts, log: opts.Logger, mux: http.NewServeMux(), stopping: make(chan struct{}),
		connsPerIP: map[string]int{}}
	s.pusher = pusherd.New(pusherd.Config{Apps: opts.PusherApps, Door: d, Host: protocolHost{s},
		WebhookDelay: opts.PusherWebhookDelay, QueueSize: opts.QueueSize, ChannelsPerConn: s.channelsPerConn(), Logger: s.log})
	s.wsWheel = connrt.NewWheel(opts.PingInterval, s.visitWebSocket)
	s.streamWheel = connrt.NewWheel(opts.Keepalive, func(ss *session, _ time.Time) { ss.keepalive() })
	s.upgrader = websocket.Upgrader{
		// A small read buffer (a busy connection's reads go through a
		// pooled one, see inputWatch.Read); write buffers come from a pool
		// and are held only while writing, so an idle connection costs
		// little.
		ReadBufferSize:  wsReadBufferSize,
		WriteBufferPool: &sync.Pool{},
		CheckOrigin: func(r *http.Request) bool {
			if s.originAllowed(r.Header.Get("Origin")) {
				return true
			}
			s.limitHit("origin")
			return false
		},
	}
	s.metricsHandler = newMetricsHandler(s)
	s.routes()
	s.handler = s.cors(s.canonicalPaths(s.mux))
	return s
}

func (s *Server) routes() {
	s.mux.Handle("/pub/{channel}", s.methods(map[string]handlerFunc{"POST": s.publish, "PUT": s.publish}))
	s.mux.Handle("/pub", s.methods(map[string]handlerFunc{"POST": s.publishBatch, "PUT": s.publishBatch}))
	s.mux.Handle("/sub/{channels}", s.methods(map[string]handlerFunc{"GET": s.subscribe}))
	s.mux.Handle("/ws", s.methods(map[string]handlerFunc{"GET": s.websocketOnly}))
	s.mux.Handle("/channels", s.methods(map[string]handlerFunc{"GET": s.listChannels}))
	s.mux.Handle("/channels/{channel}", s.methods(map[string]handlerFunc{"GET": s.channelInfo, "DELETE": s.deleteChannel}))
	s.mux.Handle("/channels/{channel}/presence", s.methods(map[string]handlerFunc{"GET": s.channelPresence}))
	s.protocolRoutes(s.pusher.Routes())
	s.consumerRoutes()
	s.mux.Handle(StreamsPrefix, s.handle(s.serveStream))
	s.mux.Handle("/stats", s.methods(map[string]handlerFunc{"GET": s.stats}))
	s.mux.Handle("/healthz", s.methods(map[string]handlerFunc{"GET": s.healthz}))
	s.mux.Handle("/metrics", s.methods(map[string]handlerFunc{"GET": s.handleMetrics}))
	asset := func(p string) http.Handler {
		h := web.Handler(p)
		return s.methods(map[string]handlerFunc{"GET": func(w http.ResponseWriter, r *http.Request) error {
			h.ServeHTTP(w, r)
			return nil
		}})
	}
	for _, p := range web.ClientPaths {
		s.mux.Handle(p, asset(p))
	}
	if !s.opts.NoConsole {
		for _, p := range web.ConsolePaths {
			if p == "/" {
				s.mux.Handle("/{$}", asset(p))
			} else {
				s.mux.Handle(p, asset(p))
			}
		}
	}
	s.mux.Handle("/", s.handle(func(w http.ResponseWriter, r *http.Request) error {
		return errorf(http.StatusNotFound, CodeNotFound, "no such endpoint %s; see docs/http-api.md", r.URL.Path)
	}))
}

// canonicalPaths answers a path with an empty, "." or ".." segment with
// the documented JSON error where Go's mux would redirect to the cleaned
// path: another channel, or another endpoint, than the one written.
func (s *Server) canonicalPaths(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := r.URL.Path
		if !strings.HasPrefix(p, "/") {
			next.ServeHTTP(w, r)
			return
		}
		clean := path.Clean(p)
		if strings.HasSuffix(p, "/") && clean != "/" {
			clean += "/"
		}
		if clean == p {
			next.ServeHTTP(w, r)
			return
		}
		for _, prefix := range []string{"/pub/", "/sub/", "/channels/"} {
			if strings.HasPrefix(p, prefix) {
				s.writeError(w, r, errorf(http.StatusBadRequest, CodeInvalidChannel,
					"path %q has an empty, \".\" or \"..\" segment: a channel name is one path segment (see docs/http-api.md)", p))
				return
			}
		}
		s.writeError(w, r, errorf(http.StatusNotFound, CodeNotFound, "no such endpoint %s; see docs/http-api.md", p))
	})
}

// methods dispatches on the request method; others get a JSON 405.
func (s *Server) methods(m map[string]handlerFunc) http.Handler {
	allow := make([]string, 0, len(m)+1)
	for k := range m {
		allow = append(allow, k)
	}
	if _, ok := m["GET"]; ok {
		allow = append(allow, "HEAD")
	}
	allowed := strings.Join(allow, ", ")
	return s.handle(func(w http.ResponseWriter, r *http.Request) error {
		method := r.Method
		if method == "HEAD" {
			method = "GET"
		}
		h, ok := m[method]
		if !ok {
			w.Header().Set("Allow", allowed)
			return errorf(http.StatusMethodNotAllowed, CodeMethodNotAllowed, "%s is not allowed here; use %s", r.Method, allowed)
		}
		return h(w, r)
	})
}

// Door is the server's admission step, for other ways in that serve
// beside it (the ZeroMQ endpoints of serve).
func (s *Server) Door() *door.Door { return s.door }

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.handler.ServeHTTP(w, r) }

// Stopping is closed when Shutdown starts; long-lived handlers end.
func (s *Server) Stopping() <-chan struct{} { return s.stopping }

// Serve accepts connections on l until Shutdown. It returns
// http.ErrServerClosed after a clean shutdown.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	hs := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	errc := make(chan error, 1)
	go func() {
		if s.opts.TLSCert != "" {
			errc <- hs.ServeTLS(l, s.opts.TLSCert, s.opts.TLSKey)
			return
		}
		errc <- hs.Serve(l)
	}()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	s.stopOnce.Do(func() { close(s.stopping) })
	s.wsWheel.Each((*session).stop)
	s.streamWheel.Each((*session).stop)
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := hs.Shutdown(sctx)
	s.connMu.Lock()
	s.draining = true // no handler enters after this
	s.connMu.Unlock()
	s.conns.Wait()
	// Members whose connections the shutdown ended leave now, while the
	// broker still takes their events.
	s.door.Close()
	s.pusher.Close()
	if err != nil {
		hs.Close()
		return err
	}
	return <-errc
}

// enter registers a long-lived handler with Serve's shutdown wait; it
// fails once shutdown is waiting, so that no Add races the Wait.
func (s *Server) enter() bool {
	s.connMu.Lock()
	defer s.connMu.Unlock()
	if s.draining {
		return false
	}
	s.conns.Add(1)
	return true
}

func writeJSON(w http.ResponseWriter, status int, v any) error {
	return wire.WriteJSON(w, status, v)
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) error {
	select {
	case <-s.stopping:
		return errorf(http.StatusServiceUnavailable, CodeShuttingDown, "shutting down")
	default:
	}
	if err := s.door.Health(); err != nil {
		// Local streams go on, but publishes and new subscriptions
		// fail, or (only a Redis Pub/Sub connection down) this node's
		// subscribers hear nothing live until it is back: a load
		// balancer should send clients elsewhere.
		return writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "degraded", "reason": err.Error()})
	}
	return writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// adminCheck guards listings and stats: with tokens, they need a token
// that may subscribe to everything.
func (s *Server) adminCheck(r *http.Request) error {
	if !s.door.Auth().TokensEnabled() {
		return nil
	}
	id, err := s.identity(r)
	if err != nil {
		return err
	}
	return s.allow(id, auth.Subscribe, ">")
}

func (s *Server) stats(w http.ResponseWriter, r *http.Request) error {
	if err := s.adminCheck(r); err != nil {
		return err
	}
	var extra map[string]uint64
	if s.opts.ExtraStats != nil {
		extra = s.opts.ExtraStats()
	}
	if extra == nil {
		extra = map[string]uint64{}
	}
	d := s.metrics.disconnectsByReason()
	extra["stalled_disconnects"] = d[CodeStalled]
	return writeJSON(w, http.StatusOK, withExtra(s.door.Stats(), extra))
}

// withExtra returns v (a JSON object) with extra's fields added.
func withExtra(v any, extra map[string]uint64) any {
	if len(extra) == 0 {
		return v
	}
	b, _ := json.Marshal(v)
	m := map[string]any{}
	json.Unmarshal(b, &m)
	for k, x := range extra {
		m[k] = x
	}
	return m
}

func (s *Server) listChannels(w http.ResponseWriter, r *http.Request) error {
	if err := s.adminCheck(r); err != nil {
		return err
	}
	list, err := s.door.Channels(r.Context())
	if err != nil {
		return err
	}
	if p := r.URL.Query().Get("match"); p != "" {
		if err := broker.ValidatePattern(p); err != nil {
			return err
		}
		out := list[:0]
		for _, c := range list {
			if broker.Match(p, c.Name) {
				out = append(out, c)
			}
		}
		list = out
	}
	return writeJSON(w, http.StatusOK, map[string]any{"channels": list})
}

// channelInfo describes a channel. With wait_subscribers=N it first waits
// (up to timeout, default 30s) until N subscribers are listening.
func (s *Server) channelInfo(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("channel")
	if err := broker.ValidateChannel(name); err != nil {
		return err
	}
	id, err := s.identity(r)
	if err != nil {
		return err
	}
	// Subscribers and publishers (waiting for listeners) may look.
	if s.door.Auth().Allow(id, auth.Publish, name) != nil {
		if err := s.allow(id, auth.Subscribe, name); err != nil {
			return err
		}
	}
	q := r.URL.Query()
	if v := q.Get("wait_subscribers"); v != "" {
		if err := s.waitSubscribers(r, name, v, q.Get("timeout")); err != nil {
			return err
		}
	}
	info, err := s.door.Channel(r.Context(), name)
	if errors.Is(err, broker.ErrNotFound) && q.Get("wait_subscribers") != "" {
		// Pattern subscribers were waited for on a channel without
		// history yet: it exists for them.
		if n, cerr := s.door.Subscribers(r.Context(), name); cerr == nil && n > 0 {
			info, err = broker.ChannelInfo{Name: name, Subscribers: n}, nil
		}
	}
	if err != nil {
		return err
	}
	var extra map[string]uint64
	if s.opts.ChannelExtra != nil {
		extra = s.opts.ChannelExtra(name)
	}
	if n, _ := s.door.MemberCount(r.Context(), name); n > 0 {
		if extra == nil {
			extra = map[string]uint64{}
		}
		extra["members"] = uint64(n)
	}
	var out any = info
	if extra != nil {
		out = withExtra(info, extra)
	}
	if len(s.opts.Namespaces) > 0 {
		// Which namespace holds the channel and what applies to it.
		b, _ := json.Marshal(out)
		m := map[string]any{}
		json.Unmarshal(b, &m)
		m["rules"] = s.door.Rules(name)
		out = m
	}
	return writeJSON(w, http.StatusOK, out)
}

func (s *Server) waitSubscribers(r *http.Request, channel, nstr, tstr string) error {
	n, err := strconv.Atoi(nstr)
	if err != nil || n < 0 || n > 1_000_000 {
		return errorf(http.StatusBadRequest, CodeInvalidParameter, "wait_subscribers must be a number from 0 to 1000000")
	}
	timeout := 30 * time.Second
	if tstr != "" {
		if timeout, err = time.ParseDuration(tstr); err != nil || timeout <= 0 || timeout > time.Hour {
			return errorf(http.StatusBadRequest, CodeInvalidParameter, "timeout must be a duration such as 30s, at most 1h")
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	defer cancel()
	go func() {
		select {
		case <-s.stopping:
			cancel()
		case <-ctx.Done():
		}
	}()
	if err := s.door.WaitSubscribers(ctx, channel, n); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return errorf(http.StatusRequestTimeout, CodeWaitTimeout, "fewer than %d subscribers on %s after %s", n, channel, timeout)
		}
		if errors.Is(err, context.Canceled) {
			return broker.ErrClosed
		}
		return err
	}
	return nil
}

// channelAccess returns the request's {channel} once it is a valid name
// and the caller may do a on it.
func (s *Server) channelAccess(r *http.Request, a auth.Action) (string, error) {
	name := r.PathValue("channel")
	if err := broker.ValidateChannel(name); err != nil {
		return "", err
	}
	id, err := s.identity(r)
	if err != nil {
		return "", err
	}
	return name, s.allow(id, a, name)
}

func (s *Server) deleteChannel(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("channel")
	if err := broker.ValidateChannel(name); err != nil {
		return err
	}
	id, err := s.identity(r)
	if err != nil {
		return err
	}
	if err := s.door.DeleteChannel(r.Context(), s.caller(r, id), name); err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, map[string]any{"deleted": name})
}
