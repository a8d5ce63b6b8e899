// Package serve implements `pushctl serve`.
package serve

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/pushctl/pushctl/internal/auth"
	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/broker/backend"
	"github.com/pushctl/pushctl/internal/cmdutil"
	"github.com/pushctl/pushctl/internal/door"
	"github.com/pushctl/pushctl/internal/hooks"
	"github.com/pushctl/pushctl/internal/presence"
	"github.com/pushctl/pushctl/internal/pusher"
	"github.com/pushctl/pushctl/internal/server"
	"github.com/pushctl/pushctl/internal/zmq"
	"github.com/spf13/cobra"
)

// Options are the flags of serve and its dependencies.
type Options struct {
	IO *cmdutil.IOStreams

	Listen         string
	HistorySize    int
	HistoryAge     time.Duration
	MaxMessageSize cmdutil.ByteSize
	Namespaces     namespacesValue
	QueueSize      int
	Keepalive      time.Duration
	PingInterval   time.Duration
	WriteTimeout   time.Duration
	StreamPollWait time.Duration
	LogLevel       string
	LogFormat      string

	DataDir      string
	Broker       string
	NodeTimeout  time.Duration
	Sync         string
	SyncDelay    time.Duration
	HistoryBytes cmdutil.ByteSize
	QueueBytes   cmdutil.ByteSize
	MaxBytes     cmdutil.ByteSize

	TokenSecret       string
	TokenPublicKey    string
	TokenJWKS         string
	TokenIssuer       string
	TokenAudience     string
	HookConnect       string
	HookSubscribe     string
	HookPublish       string
	HookRefresh       string
	HookSecret        string
	HookSignedAnswers bool
	HookTimeout       time.Duration
	HookConcurrency   int
	HookHeaders       []string
	HookFailure       string
	Events            bool
	Webhooks          []string
	WebhookSecret     string
	WebhookDelay      time.Duration
	WebhookRetry      time.Duration
	WebhookQueue      int
	TrustedPublishers []string
	TrustedProxies    []string
	NoConsole         bool
	InsecureNoAuth    bool
	AllowedOrigins    []string
	MaxConnsPerIP     int
	MaxChannels       int
	PublishRate       float64
	PublishBurst      int
	ReadTimeout       time.Duration
	TLSCert, TLSKey   string

	PusherApps      []string
	PresenceMembers int
	PresenceInfo    cmdutil.ByteSize
	PresenceGrace   time.Duration

	ZMQ          bool
	ZMQIn        string
	ZMQOut       string
	ZMQSep       string
	ZMQHWM       int
	CurveSecret  string
	CurveClients []string
	Config       string
	PrintConfig  bool
	Pprof        string
	// Ready, if set, is called with the bound address (tests).
	Ready func(addr net.Addr)
}

// Default addresses, loopback only.
const (
	DefaultListen = "127.0.0.1:7070"
	DefaultZMQIn  = "tcp://127.0.0.1:7071"
	DefaultZMQOut = "tcp://127.0.0.1:7072"
)

// NewCmdServe returns the serve command. runF replaces the run function
// in tests.
func NewCmdServe(f *cmdutil.Factory, runF func(context.Context, *Options) error) *cobra.Command {
	opts := &Options{IO: f.IO, MaxMessageSize: 1 << 20, QueueBytes: 64 << 20, PresenceInfo: 1024}
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run a broker",
		Long: `Run a pushctl broker: publish over HTTP and WebSocket, subscribe over
WebSocket, SSE, NDJSON, raw lines and long-poll, all on one listener.

It listens on loopback unless told otherwise. Messages are kept in memory
with a bounded history per channel, so subscribers can replay and resume.

Every flag can also be set in a YAML config file (keys are the flag names:
"history-age: 24h") and as a PUSHCTL_* environment variable (--history-age is
PUSHCTL_HISTORY_AGE). The command line wins over the environment, which wins
over the file. The file is --config, else $PUSHCTL_CONFIG, else
~/.config/pushctl/serve.yaml when it exists; unknown keys are an error.
--print-config shows the effective settings, secrets redacted.`,
		Example: `  pushctl serve
  pushctl serve --listen 127.0.0.1:8080 --history 10000 --history-age 24h
  PUSHCTL_LISTEN=127.0.0.1:0 pushctl serve   # any free port, printed on stderr`,
		Args: cmdutil.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if opts.PrintConfig {
				var b bytes.Buffer
				cmdutil.PrintConfig(cmd, f.Sources, &b)
				_, err := opts.IO.Out.Write(b.Bytes())
				return err
			}
			if runF != nil {
				return runF(cmd.Context(), opts)
			}
			return Run(cmd.Context(), opts)
		},
	}
	fl := cmd.Flags()
	fl.StringVarP(&opts.Listen, "listen", "l", DefaultListen, "address to listen on (host:port; port 0 picks a free one)")
	fl.IntVar(&opts.HistorySize, "history", 1000, "messages retained per channel for replay and resume (0 keeps none)")
	fl.DurationVar(&opts.HistoryAge, "history-age", time.Hour, "drop retained messages older than this")
	fl.Var(&opts.MaxMessageSize, "max-message-size", "largest message accepted")
	fl.Var(&opts.Namespaces, "namespace", "a kind of channel with rules of its own: match=PATTERN,history=N,client-publish=false,… (repeatable, first match wins; in the config file a list of mappings; see docs/namespaces.md)")
	fl.Var(&opts.QueueBytes, "queue-bytes", "data queued per subscriber before it is disconnected as too slow (0: no bound)")
	fl.Var(&opts.HistoryBytes, "history-bytes", "retained data per channel, oldest dropped first (0: no bound)")
	fl.Var(&opts.MaxBytes, "max-bytes", "retained data of all channels together, oldest dropped first (0: no bound)")
	fl.StringVar(&opts.Broker, "broker", "memory", "where channels live: memory (this process), or redis://[user:pass@]host:port/db or rediss://… to share channels with other nodes; a Redis Cluster node's address uses the whole cluster (see docs/cluster.md)")
	fl.DurationVar(&opts.NodeTimeout, "node-timeout", 10*time.Second, "with --broker redis://…: how long a node may be silent before the others take its subscribers and presence members out")
	fl.StringVar(&opts.DataDir, "data-dir", "", "keep channels in a durable store in this directory (survives restarts and crashes)")
	fl.StringVar(&opts.Sync, "sync", "always", "with --data-dir: always (acknowledge once fsync'd) or none (once written to the OS)")
	fl.DurationVar(&opts.SyncDelay, "sync-delay", 0, "with --data-dir: let writes gather this long into one commit")
	fl.IntVar(&opts.QueueSize, "queue-size", broker.DefaultQueueSize, "messages queued per subscriber before it is disconnected as too slow")
	fl.DurationVar(&opts.Keepalive, "keepalive", 15*time.Second, "keepalive interval of SSE and NDJSON streams")
	fl.DurationVar(&opts.PingInterval, "ping-interval", 30*time.Second, "WebSocket ping interval; silent peers are dropped after two")
	fl.DurationVar(&opts.WriteTimeout, "write-timeout", 10*time.Second, "a subscriber that takes no bytes for this long is disconnected as stalled")
	fl.DurationVar(&opts.StreamPollWait, "stream-poll-wait", 20*time.Second, "how long a Durable Streams long-poll waits for data before answering 204 (keep it under your proxies' idle timeout)")
	fl.StringVar(&opts.LogLevel, "log-level", "info", "log level: debug, info, warn or error")
	fl.StringVar(&opts.LogFormat, "log-format", "text", "log format: text or json")
	fl.BoolVar(&opts.ZMQ, "zmq", false, "enable ZeroMQ on the default endpoints ("+DefaultZMQIn+" in, "+DefaultZMQOut+" out)")
	fl.StringVar(&opts.ZMQIn, "zmq-in", "", "ZeroMQ endpoint publishers send to (SUB; binds, or >ENDPOINT to connect to a publisher)")
	fl.StringVar(&opts.ZMQOut, "zmq-out", "", "ZeroMQ endpoint emitting every channel as [channel, payload, seq] (PUB; binds, or >ENDPOINT to connect)")
	fl.StringVar(&opts.ZMQSep, "zmq-sep", " ", "separator of channel and payload in legacy single-frame messages")
	fl.IntVar(&opts.ZMQHWM, "zmq-hwm", 100000, "ZeroMQ high-water mark in messages; messages beyond it are dropped and counted")
	fl.StringVar(&opts.CurveSecret, "zmq-curve-secret", "", "CURVE secret key of the broker's ZeroMQ endpoints (Z85; see pushctl zmq keygen)")
	fl.StringSliceVar(&opts.CurveClients, "zmq-curve-clients", nil, "public keys of the ZeroMQ clients allowed in (default with a secret: any client with a valid handshake)")
	fl.StringVar(&opts.TokenSecret, "token-secret", "", "HMAC secret verifying tokens (at least 32 bytes; env PUSHCTL_TOKEN_SECRET); enables access control")
	fl.StringVar(&opts.TokenPublicKey, "token-public-key", "", "PEM public key verifying tokens signed by an issuer (Ed25519, ECDSA, RSA); enables access control")
	fl.StringVar(&opts.TokenJWKS, "token-jwks", "", "URL of an identity provider's JSON Web Key Set verifying tokens that name a key id (kid); enables access control")
	fl.StringVar(&opts.TokenIssuer, "token-jwks-issuer", "", "with --token-jwks: the iss a provider's token must have")
	fl.StringVar(&opts.TokenAudience, "token-jwks-audience", "", "with --token-jwks: the aud a provider's token must include")
	fl.StringVar(&opts.HookConnect, "hook-connect", "", "URL the application answers at: who a connection without a token is, and what it may do (see docs/hooks.md)")
	fl.StringVar(&opts.HookSubscribe, "hook-subscribe", "", "URL asked before each subscription starts (allow or deny)")
	fl.StringVar(&opts.HookPublish, "hook-publish", "", "URL asked for each message a client publishes over its connection (allow, deny, or replace the data)")
	fl.StringVar(&opts.HookRefresh, "hook-refresh", "", "URL asked again when what the connect hook said expires, instead of ending the connection")
	fl.StringVar(&opts.HookSecret, "hook-secret", "", "HMAC secret signing hook requests (header Pushctl-Signature; env PUSHCTL_HOOK_SECRET)")
	fl.BoolVar(&opts.HookSignedAnswers, "hook-signed-answers", false, "trust only hook answers signed with --hook-secret")
	fl.DurationVar(&opts.HookTimeout, "hook-timeout", 3*time.Second, "how long the application may take to answer a hook")
	fl.IntVar(&opts.HookConcurrency, "hook-concurrency", 64, "hook calls under way at once")
	fl.StringSliceVar(&opts.HookHeaders, "hook-headers", []string{"User-Agent", "Origin", "X-Forwarded-For"}, "request headers the connect hook is told of (cookies always are)")
	fl.StringVar(&opts.HookFailure, "hook-failure", "deny", "what happens when a hook does not answer: deny (hook_unavailable) or allow (a namespace may say otherwise)")
	cmdutil.MarkSecret(cmd, "hook-secret")
	fl.BoolVar(&opts.Events, "events", false, "publish lifecycle events (connections, subscriptions, presence, occupancy) on the $events.… channels (see docs/events.md)")
	fl.StringArrayVar(&opts.Webhooks, "webhook", nil, "URL that lifecycle events are POSTed to, batched and signed (repeatable; implies --events; see docs/events.md)")
	fl.StringVar(&opts.WebhookSecret, "webhook-secret", "", "HMAC secret signing webhook bodies (header Pushctl-Signature; env PUSHCTL_WEBHOOK_SECRET; default: --hook-secret)")
	fl.DurationVar(&opts.WebhookDelay, "webhook-delay", 3*time.Second, "how long channel_vacated and member_removed wait before a webhook sends them (a Pusher app's wait 3s, as Pusher's); the occupied or added that undoes one within it cancels both (0: none)")
	fl.DurationVar(&opts.WebhookRetry, "webhook-retry", time.Minute, "how long a webhook body is retried before its events are dropped (counted)")
	fl.IntVar(&opts.WebhookQueue, "webhook-queue", 10000, "events waiting for each webhook URL; more are dropped (counted)")
	cmdutil.MarkSecret(cmd, "webhook-secret")
	fl.StringSliceVar(&opts.TrustedPublishers, "trusted-publishers", nil, "addresses or CIDRs that may publish without a token (e.g. 10.0.0.5,127.0.0.1/32)")
	fl.BoolVar(&opts.InsecureNoAuth, "insecure-no-auth", false, "allow listening beyond loopback with no access control at all")
	fl.StringSliceVar(&opts.TrustedProxies, "trusted-proxies", nil, "reverse proxies (addresses or CIDRs) whose Forwarded/X-Forwarded-For headers name the client, for --trusted-publishers and per-address limits behind nginx")
	fl.BoolVar(&opts.NoConsole, "no-console", false, "do not serve the web console at / (pushctl.js is still served)")
	fl.StringSliceVar(&opts.AllowedOrigins, "allowed-origins", []string{"*"}, "browser origins allowed for WebSocket and CORS")
	fl.IntVar(&opts.MaxConnsPerIP, "max-conns-per-ip", 1000, "subscriber connections per client address (0: no limit)")
	fl.IntVar(&opts.MaxChannels, "max-channels-per-conn", 256, "subscriptions on one WebSocket")
	fl.Float64Var(&opts.PublishRate, "publish-rate", 0, "publishes per second per token, or per address without one; 429 beyond (0: no limit)")
	fl.IntVar(&opts.PublishBurst, "publish-burst", 0, "publishes allowed in a burst above --publish-rate (default: one second's worth)")
	fl.DurationVar(&opts.ReadTimeout, "read-timeout", 30*time.Second, "time to send one ordinary request body (slow senders are cut off)")
	fl.StringArrayVar(&opts.PusherApps, "pusher-app", nil, "serve the Pusher Channels protocol for an app: ID:KEY:SECRET[?prefix=P&webhook=URL&max_presence_members=N…] (repeatable; see docs/pusher.md)")
	cmdutil.MarkSecret(cmd, "pusher-app")
	fl.IntVar(&opts.PresenceMembers, "presence-max-members", 1000, "members in one channel's presence; joins beyond get presence_full")
	fl.Var(&opts.PresenceInfo, "presence-max-info", "size of one presence member's info (JSON)")
	fl.DurationVar(&opts.PresenceGrace, "presence-grace", 3*time.Second, "a member whose last connection dropped stays this long, so a quick reconnect is not a leave (0: leave at once)")
	fl.StringVar(&opts.TLSCert, "tls-cert", "", "PEM certificate (chain) for HTTPS and WSS")
	fl.StringVar(&opts.TLSKey, "tls-key", "", "PEM private key for --tls-cert")
	cmdutil.MarkSecret(cmd, "token-secret")
	fl.StringVar(&opts.Pprof, "pprof", "", "serve Go's profiles (/debug/pprof/) on this loopback address, for measuring the broker under load")
	fl.StringVar(&opts.Config, "config", "", "YAML config file (default ~/.config/pushctl/serve.yaml when it exists)")
	fl.BoolVar(&opts.PrintConfig, "print-config", false, "print the effective configuration (secrets redacted) and exit")
	cmdutil.MarkSecret(cmd, "zmq-curve-secret")
	return cmd
}

func newLogger(o *Options) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.LogLevel)); err != nil {
		return nil, cmdutil.FlagErrorf("--log-level %q: want debug, info, warn or error", o.LogLevel)
	}
	ho := &slog.HandlerOptions{Level: level}
	switch o.LogFormat {
	case "text":
		return slog.New(slog.NewTextHandler(o.IO.ErrOut, ho)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(o.IO.ErrOut, ho)), nil
	}
	return nil, cmdutil.FlagErrorf("--log-format %q: want text or json", o.LogFormat)
}

// Run runs the broker until ctx ends.
func Run(ctx context.Context, o *Options) error {
	log, err := newLogger(o)
	if err != nil {
		return err
	}
	if _, err := backend.Kind(backend.Spec{URL: o.Broker, Dir: o.DataDir, MaxBytes: int64(o.MaxBytes)}); err != nil {
		return cmdutil.FlagErrorf("%v", err)
	}
	for _, ns := range o.Namespaces.list {
		if d := ns.Rules.Durable; d != nil {
			switch {
			case o.Broker != "" && o.Broker != "memory":
				return cmdutil.FlagErrorf("--namespace %s: durable applies to --data-dir; on Redis what is kept is Redis's persistence to say", ns.Name)
			case *d && o.DataDir == "":
				return cmdutil.FlagErrorf("--namespace %s: durable=true needs --data-dir (without it nothing is written to disk)", ns.Name)
			}
		}
		if ns.Rules.MaxMessageSize > int64(o.MaxMessageSize) {
			return cmdutil.FlagErrorf("--namespace %s: max-message-size %d is more than --max-message-size %d, which bounds every request", ns.Name, ns.Rules.MaxMessageSize, int64(o.MaxMessageSize))
		}
	}
	if o.HistorySize < 0 || o.QueueSize <= 0 || o.MaxMessageSize <= 0 {
		return cmdutil.FlagErrorf("--history must be >= 0, --queue-size and --max-message-size > 0")
	}
	if o.StreamPollWait < 100*time.Millisecond || o.StreamPollWait > 5*time.Minute {
		return cmdutil.FlagErrorf("--stream-poll-wait %s: must be between 100ms and 5m", o.StreamPollWait)
	}
	if err := checkPprofAddr(o.Pprof); err != nil {
		return err
	}
	if o.NodeTimeout < 2*time.Second {
		return cmdutil.FlagErrorf("--node-timeout %s: must be at least 2s (nodes beat every second)", o.NodeTimeout)
	}
	hist := o.HistorySize
	if hist == 0 {
		hist = -1
	}
	zc, err := zmqConfig(o, log)
	if err != nil {
		return err
	}
	// Durable Streams channels (ds.>) keep everything unless a namespace
	// of the operator's says otherwise (docs/durable-streams.md).
	namespaces := door.WithStreamNamespaces(o.Namespaces.list)
	ret := broker.Retention{HistorySize: hist, HistoryAge: o.HistoryAge, HistoryBytes: int64(o.HistoryBytes)}
	var extra []func() map[string]uint64 // counters for /stats and /metrics
	octx, ocancel := context.WithTimeout(ctx, 10*time.Second)
	opened, err := backend.Open(octx, backend.Spec{URL: o.Broker, Dir: o.DataDir, Sync: o.Sync, SyncDelay: o.SyncDelay,
		Retention: ret, RetentionFor: door.RetentionFor(namespaces), MemoryOnly: door.MemoryOnly(namespaces),
		MaxBytes: int64(o.MaxBytes), QueueSize: o.QueueSize, QueueBytes: int64(o.QueueBytes),
		NodeTimeout: o.NodeTimeout, Logger: log})
	ocancel()
	if err != nil {
		return err
	}
	b := opened.Broker
	if opened.Counters != nil {
		extra = append(extra, opened.Counters)
	}
	took := opened.Took.Round(time.Millisecond)
	switch opened.Kind {
	case backend.Redis:
		log.Info("redis broker connected", "node", opened.Node, "took", took)
		fmt.Fprintf(o.IO.ErrOut, "pushctl: channels shared through Redis at %s (node %s)\n", backend.Redacted(o.Broker), opened.Node)
	case backend.Bolt:
		log.Info("store opened", "dir", o.DataDir, "channels", opened.Channels, "took", took)
		fmt.Fprintf(o.IO.ErrOut, "pushctl: store %s opened in %s (%s)\n", o.DataDir, took, cmdutil.Plural(opened.Channels, "channel"))
	}
	defer b.Close()
	consumers, err := openConsumers(o, b, opened.Kind, log)
	if err != nil {
		return err
	}
	defer consumers.Close() // before the broker closes
	hk, err := hookClient(o)
	if err != nil {
		return err
	}
	evc, err := eventsConfig(o, opened.Node, log)
	if err != nil {
		return err
	}
	sopts := server.Options{
		Events:         evc,
		Namespaces:     namespaces,
		Hooks:          hk,
		HookFailure:    o.HookFailure,
		MaxMessageSize: int64(o.MaxMessageSize),
		QueueSize:      o.QueueSize,
		Keepalive:      o.Keepalive,
		PingInterval:   o.PingInterval,
		WriteTimeout:   o.WriteTimeout,
		StreamPollWait: o.StreamPollWait,
		Logger:         log,
		Presence:       presence.Limits{MaxMembers: o.PresenceMembers, MaxInfo: int(o.PresenceInfo)},
		PresenceGrace:  o.PresenceGrace,
	}
	if o.PresenceGrace <= 0 {
		sopts.PresenceGrace = -1 // at once
	}
	for _, spec := range o.PusherApps {
		app, err := pusher.ParseApp(spec)
		if err != nil {
			return cmdutil.FlagErrorf("--pusher-app: %v", err)
		}
		sopts.PusherApps = append(sopts.PusherApps, app)
	}
	if err := pusher.CheckApps(sopts.PusherApps); err != nil {
		return cmdutil.FlagErrorf("--pusher-app: %v", err)
	}
	sopts.ExtraStats = func() map[string]uint64 {
		all := map[string]uint64{}
		for _, f := range extra { // (ZeroMQ's are added below)
			maps.Copy(all, f())
		}
		return all
	}
	stopped := ctx // why we stop is the caller's context's cause
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var zst *zmq.BrokerStats
	if zc != nil {
		zst = &zmq.BrokerStats{}
		extra = append(extra, zst.Snapshot)
		sopts.ChannelExtra = func(ch string) map[string]uint64 {
			if n := zst.DroppedOn(ch); n > 0 {
				return map[string]uint64{"zmq_out_dropped": n}
			}
			return nil
		}
	}
	az, err := authorizer(o)
	if err != nil {
		return err
	}
	if (o.TLSCert == "") != (o.TLSKey == "") {
		return cmdutil.FlagErrorf("--tls-cert and --tls-key go together")
	}
	sopts.Auth = az
	sopts.AllowedOrigins = o.AllowedOrigins
	sopts.NoConsole = o.NoConsole
	if sopts.TrustedProxies, err = prefixes("--trusted-proxies", o.TrustedProxies); err != nil {
		return err
	}
	sopts.TLSCert, sopts.TLSKey = o.TLSCert, o.TLSKey
	sopts.Limits = server.Limits{ConnsPerIP: o.MaxConnsPerIP, ChannelsPerConn: o.MaxChannels,
		PublishRate: o.PublishRate, PublishBurst: o.PublishBurst, ReadTimeout: o.ReadTimeout}
	sopts.Consumers = consumers
	srv := server.New(b, sopts)
	// ZeroMQ's endpoints come in through the same door as HTTP.
	var zdone chan error // nil (never ready) without ZeroMQ
	if zc != nil {
		zdone = make(chan error, 1)
		ready := make(chan struct{}, 2)
		zc.Ready = func(role, addr string) {
			fmt.Fprintf(o.IO.ErrOut, "pushctl: ZeroMQ %s on %s\n", role, addr)
			ready <- struct{}{}
		}
		go func() { zdone <- zmq.RunBroker(ctx, srv.Door(), *zc, zst) }()
		defer zmq.Shutdown()
		want := 0
		if zc.In != nil {
			want++
		}
		if zc.Out != nil {
			want++
		}
		for i := 0; i < want; i++ {
			select {
			case <-ready:
			case err := <-zdone:
				if err == nil {
					err = errors.New("ZeroMQ stopped")
				}
				return err
			}
		}
	}
	l, err := net.Listen("tcp", o.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", o.Listen, err)
	}
	if !isLoopback(l.Addr()) && !az.Enabled() && !o.InsecureNoAuth {
		l.Close()
		return cmdutil.FlagErrorf("refusing to listen on %s with no access control: anyone who reaches it could publish and subscribe; "+
			"set --token-secret, --token-public-key, --token-jwks or --trusted-publishers, or pass --insecure-no-auth", l.Addr())
	}
	scheme := "http"
	if o.TLSCert != "" {
		scheme = "https"
	}
	if o.Pprof != "" {
		// Before "broker listening": a bad --pprof fails before anyone
		// is told the broker is up.
		stop, err := servePprof(o.Pprof, o.IO.ErrOut)
		if err != nil {
			l.Close()
			return err
		}
		defer stop()
	}
	url := scheme + "://" + l.Addr().String()
	log.Debug("listening", "url", url, "history", o.HistorySize, "history_age", o.HistoryAge)
	fmt.Fprintf(o.IO.ErrOut, "pushctl: broker listening on %s\n", url)
	if !isLoopback(l.Addr()) && !az.Enabled() {
		log.Warn("listening beyond loopback with no access control (--insecure-no-auth)", "addr", l.Addr().String())
	}
	if o.Ready != nil {
		o.Ready(l.Addr())
	}
	serr := make(chan error, 1)
	go func() { serr <- srv.Serve(ctx, l) }()
	select {
	case err = <-serr:
		cancel()
		if zdone != nil {
			if zerr := <-zdone; zerr != nil && (err == nil || errors.Is(err, http.ErrServerClosed)) {
				err = zerr
			}
		}
	case err = <-zdone:
		// A ZeroMQ endpoint failed: stop serving HTTP too.
		cancel()
		<-serr
	}
	if errors.Is(err, http.ErrServerClosed) || err == nil {
		log.Info("stopped")
		if stopped.Err() != nil {
			return cmdutil.Stopped(stopped) // 0 on SIGTERM, 130 on Ctrl-C
		}
		return nil
	}
	return err
}

// zmqConfig turns the ZeroMQ flags into a configuration, or nil when
// ZeroMQ is off.
func zmqConfig(o *Options, log *slog.Logger) (*zmq.BrokerConfig, error) {
	in, out := o.ZMQIn, o.ZMQOut
	if o.ZMQ {
		if in == "" {
			in = DefaultZMQIn
		}
		if out == "" {
			out = DefaultZMQOut
		}
	}
	if in == "" && out == "" {
		if o.CurveSecret != "" {
			return nil, cmdutil.FlagErrorf("--zmq-curve-secret needs --zmq, --zmq-in or --zmq-out")
		}
		return nil, nil
	}
	if len(o.ZMQSep) != 1 {
		return nil, cmdutil.FlagErrorf("--zmq-sep must be one byte")
	}
	c := &zmq.BrokerConfig{Sep: o.ZMQSep[0], Logger: log}
	c.HWM = o.ZMQHWM
	c.Linger = time.Second
	for _, x := range []struct {
		flag, val string
		dst       **zmq.Endpoint
	}{{"--zmq-in", in, &c.In}, {"--zmq-out", out, &c.Out}} {
		if x.val == "" {
			continue
		}
		ep, err := zmq.ParseEndpoint(x.val, true)
		if err != nil {
			return nil, cmdutil.FlagErrorf("%s: %v", x.flag, err)
		}
		*x.dst = &ep
	}
	if o.CurveSecret != "" {
		if _, err := zmq.PublicFromSecret(o.CurveSecret); err != nil {
			return nil, fmt.Errorf("--zmq-curve-secret: %w", err)
		}
		c.Curve = &zmq.Curve{ServerSecret: o.CurveSecret, AllowedClients: o.CurveClients}
	} else if len(o.CurveClients) > 0 {
		return nil, cmdutil.FlagErrorf("--zmq-curve-clients needs --zmq-curve-secret")
	}
	return c, nil
}

func isLoopback(a net.Addr) bool {
	ta, ok := a.(*net.TCPAddr)
	return ok && ta.IP.IsLoopback() || strings.HasPrefix(a.String(), "localhost")
}

// checkPprofAddr refuses, before anything starts, a --pprof address
// whose host is an IP address beyond loopback; names are checked once
// listening.
func checkPprofAddr(addr string) error {
	if addr == "" {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return cmdutil.FlagErrorf("--pprof %q: want a loopback HOST:PORT such as 127.0.0.1:6060", addr)
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && !ip.IsLoopback() {
		return cmdutil.FlagErrorf("--pprof %s: profiles are served on loopback addresses only (such as 127.0.0.1:6060)", addr)
	}
	return nil
}

// authorizer builds access control from the flags.
func authorizer(o *Options) (*auth.Authorizer, error) {
	cfg := auth.Config{}
	if o.TokenSecret != "" {
		if len(o.TokenSecret) < 32 {
			return nil, cmdutil.FlagErrorf("--token-secret must be at least 32 bytes (pushctl token secret makes one)")
		}
		cfg.Secret = []byte(o.TokenSecret)
	}
	if o.TokenPublicKey != "" {
		k, err := auth.LoadPublicKey(o.TokenPublicKey)
		if err != nil {
			return nil, fmt.Errorf("--token-public-key: %w", err)
		}
		cfg.PublicKey = k
	}
	if o.TokenJWKS != "" {
		u, err := url.Parse(o.TokenJWKS)
		if err != nil || u.Host == "" || u.Scheme != "https" && !(u.Scheme == "http" && isLoopbackHost(u.Hostname())) {
			// Keys fetched over plain HTTP could be anyone's.
			return nil, cmdutil.FlagErrorf("--token-jwks %q: want an https:// URL (http:// only on loopback)", o.TokenJWKS)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		j, err := auth.NewJWKS(ctx, o.TokenJWKS, nil, auth.JWKSOptions{Issuer: o.TokenIssuer, Audience: o.TokenAudience})
		if err != nil {
			return nil, fmt.Errorf("--token-jwks: %w", err)
		}
		cfg.JWKS = j
	} else if o.TokenIssuer != "" || o.TokenAudience != "" {
		return nil, cmdutil.FlagErrorf("--token-jwks-issuer and --token-jwks-audience go with --token-jwks")
	}
	var err error
	if cfg.TrustedPublishers, err = prefixes("--trusted-publishers", o.TrustedPublishers); err != nil {
		return nil, err
	}
	return auth.New(cfg), nil
}

// isLoopbackHost reports whether host names this machine.
func isLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// hookClient is the hooks' client (nil without hooks).
func hookClient(o *Options) (*hooks.Client, error) {
	for flag, u := range map[string]string{"--hook-connect": o.HookConnect, "--hook-subscribe": o.HookSubscribe, "--hook-publish": o.HookPublish, "--hook-refresh": o.HookRefresh} {
		if u == "" {
			continue
		}
		pu, err := url.Parse(u)
		if err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" {
			return nil, cmdutil.FlagErrorf("%s %q: want an http:// or https:// URL of the application", flag, u)
		}
	}
	if o.HookFailure != door.FailDeny && o.HookFailure != door.FailAllow {
		return nil, cmdutil.FlagErrorf("--hook-failure %q: want deny or allow", o.HookFailure)
	}
	if o.HookSignedAnswers && o.HookSecret == "" {
		return nil, cmdutil.FlagErrorf("--hook-signed-answers needs --hook-secret")
	}
	if o.HookTimeout <= 0 || o.HookConcurrency <= 0 {
		return nil, cmdutil.FlagErrorf("--hook-timeout and --hook-concurrency must be positive")
	}
	return hooks.New(hooks.Config{Connect: o.HookConnect, Subscribe: o.HookSubscribe, Publish: o.HookPublish, Refresh: o.HookRefresh,
		Secret: []byte(o.HookSecret), SignedAnswers: o.HookSignedAnswers, Timeout: o.HookTimeout,
		Concurrency: o.HookConcurrency, Headers: o.HookHeaders}), nil
}

// prefixes parses addresses and CIDRs (an address alone is one host).
func prefixes(flag string, list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, t := range list {
		if !strings.Contains(t, "/") {
			if strings.Contains(t, ":") {
				t += "/128"
			} else {
				t += "/32"
			}
		}
		p, err := netip.ParsePrefix(t)
		if err != nil {
			return nil, cmdutil.FlagErrorf("%s %q: want an address or CIDR", flag, t)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}
