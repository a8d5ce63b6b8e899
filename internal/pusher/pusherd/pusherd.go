// Package pusherd serves the Pusher Channels protocol: Pusher clients
// over WebSocket (/app/{key}, protocol 5 to 7) and the Pusher HTTP API
// (/apps/{id}/…), for the apps `serve --pusher-app` configures.
//
// It is the serving side of internal/pusher, which holds only what the
// protocol is (frames, apps, signatures, webhooks); the d is the serving
// side's, as in sshd. A Pusher channel is the pushctl channel of the
// same name after the app's prefix, so pub, sub, the TUI and bridges see
// Pusher traffic and Pusher clients see theirs. Presence is the door's
// (member_added/member_removed on the channel).
//
// Every publish and subscribe passes the door (a door.Scoped caller,
// confined to the app's prefix). Connections run on the server's
// connection runtime, the same writer, pool, poller and wheel as /ws:
// the server implements Host and Conn, this package Handler.
package pusherd

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/pushctl/pushctl/internal/auth"
	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/connrt"
	"github.com/pushctl/pushctl/internal/door"
	"github.com/pushctl/pushctl/internal/events"
	"github.com/pushctl/pushctl/internal/presence"
	"github.com/pushctl/pushctl/internal/pusher"
	"github.com/pushctl/pushctl/internal/wire"
)

// Host is the HTTP server the protocol is served in (internal/server):
// its connection runtime and what it knows of a request.
type Host interface {
	// NewConn makes a WebSocket connection on the server's connection
	// runtime, to be served for h by Conn.Serve. Its ID is known at once.
	NewConn(h Handler) Conn
	// ConnSlot takes one of the client address's connection slots, or
	// refuses (too many connections from one address).
	ConnSlot(r *http.Request) (release func(), err error)
	// ConnectIdentity says who a connection is: by its token, else by the
	// application's connect hook.
	ConnectIdentity(r *http.Request) (*auth.Identity, error)
	// ClientKey names the client's address, for per-address limits (and
	// so for the door's callers).
	ClientKey(r *http.Request) string
	// Error is err as the server answers it: an HTTP status and a stable
	// code.
	Error(err error) *wire.Error
}

// Conn is one WebSocket connection run by the server's connection
// runtime: one writer, and a loop that drains its subscriptions through
// its Handler. Frames are whole WebSocket frames (see textFrame).
type Conn interface {
	// ID names the connection (sessions and the lifecycle events'
	// connection ids); a message whose Origin it is, is its own.
	ID() uint64
	// NoEcho keeps the connection's own publishes from being delivered
	// back to it.
	NoEcho()
	// Serve upgrades r and serves the connection; it owns release from
	// then on (called once the connection is closed).
	Serve(w http.ResponseWriter, r *http.Request, release func())
	// Context ends with the connection (for door calls).
	Context() context.Context
	// Client is the client's address key (Host.ClientKey of the upgrade).
	Client() string
	// Reply queues frame after the replies queued before it.
	Reply(frame []byte)
	// Send queues frame, waiting while too many wait; false once the
	// connection is ending.
	Send(frame []byte) bool
	// Signal is a subscription's OnReady: the loop has something to do.
	Signal()
	// AddSub registers sub under key with frames to precede its messages;
	// false (sub closed) when the connection is ending.
	AddSub(key string, sub *broker.Subscription, frames ...[]byte) bool
	// RemoveSub closes the subscription under key.
	RemoveSub(key string)
	// End ends the connection for reason (the first reason wins); before
	// Serve, the connection is refused: nothing but the close is written.
	End(reason error)
	// EndWith ends the connection for reason after frame.
	EndWith(frame []byte, reason error)
}

// Handler is one connection's protocol, as the runtime calls it.
type Handler interface {
	// Opened is called once the connection is upgraded, before its first
	// frame is read or written.
	Opened()
	// Frame executes a text frame of the client's (valid UTF-8; data is
	// reused after).
	Frame(data []byte)
	// NotText is the reply to a binary frame.
	NotText() []byte
	// Start adds the first frames, unless the connection is refused.
	Start(b *connrt.Batch)
	// Message and Gap add what a subscription delivers.
	Message(b *connrt.Batch, m *broker.Message)
	Gap(b *connrt.Batch, g *broker.Gap)
	// Dropped tells the client that the subscription key ended (err)
	// while the connection goes on; false ends the connection instead.
	Dropped(b *connrt.Batch, key string, err error) bool
	// Close is the close code and reason of a connection ending for
	// reason, whose stable code (or "client_closed", "write_error",
	// "protocol_error") is code; 0: no close frame.
	Close(reason error, code string) (int, string)
	// Ended is called once the connection is closed.
	Ended()
}

// Config is what New needs.
type Config struct {
	Apps []pusher.App
	// Door is the one way to the broker and presence.
	Door *door.Door
	Host Host
	// WebhookDelay delays channel_vacated and member_removed webhooks
	// (0: 3s; negative: none).
	WebhookDelay time.Duration
	// QueueSize bounds each subscription's queue (0: the broker's).
	QueueSize int
	// ChannelsPerConn bounds the subscriptions of one connection.
	ChannelsPerConn int
	Logger          *slog.Logger
}

// Service is every configured app, its sockets and its HTTP API.
type Service struct {
	cfg   Config
	door  *door.Door
	host  Host
	byKey map[string]*liveApp
	byID  map[string]*liveApp
}

// New returns the service of cfg.Apps (nil without apps). The apps'
// lifecycle webhooks are the door's (see Webhooks); New sends the
// others (client_event, subscription_count).
func New(cfg Config) *Service {
	if len(cfg.Apps) == 0 {
		return nil
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Service{cfg: cfg, door: cfg.Door, host: cfg.Host, byKey: map[string]*liveApp{}, byID: map[string]*liveApp{}}
	for _, a := range cfg.Apps {
		pa := &liveApp{App: a, sockets: map[uint64]*conn{}, occupied: map[string]int{}}
		if len(a.Webhooks) > 0 {
			pa.hooks = pusher.NewSender(a, cfg.WebhookDelay, cfg.Logger)
		}
		s.byKey[a.Key], s.byID[a.ID] = pa, pa
	}
	return s
}

// EventChannels names the channels of the apps with webhooks, whose
// events their webhooks are made of (nil: none), for the door's events
// configuration (door.EventsConfig.Also).
func EventChannels(apps []pusher.App) func(ch string) bool {
	var prefixes []string
	for _, a := range apps {
		if len(a.Webhooks) > 0 {
			prefixes = append(prefixes, a.Prefix)
		}
	}
	if len(prefixes) == 0 {
		return nil
	}
	return func(ch string) bool {
		for _, p := range prefixes {
			if strings.HasPrefix(ch, p) {
				return true
			}
		}
		return false
	}
}

// Webhooks are the apps' lifecycle webhooks, for the door's events
// configuration (door.EventsConfig.AppWebhooks): channel_occupied,
// channel_vacated and, on presence channels, member_added and
// member_removed, made of the lifecycle events of the app's channels
// (decided once for the cluster), as Pusher has them (the Pusher channel
// name, no sequence) and signed as Pusher signs them (X-Pusher-Key,
// X-Pusher-Signature). The door sends them as it sends the --webhook
// URLs: on Redis one node per URL, from the event channels. delay holds
// channel_vacated and member_removed back (0: 3s; negative: none).
func Webhooks(apps []pusher.App, delay time.Duration) []door.AppWebhook {
	var out []door.AppWebhook
	for _, a := range apps {
		la := &liveApp{App: a}
		chans := []string{events.ChannelPrefix + ">"}
		if p := events.ChannelOf(a.Prefix + ">"); strings.HasSuffix(a.Prefix, ".") && broker.ValidatePattern(p) == nil {
			chans = []string{p}
		}
		for _, u := range a.Webhooks {
			out = append(out, door.AppWebhook{Scope: "pusher app " + a.ID, URL: u, Channels: chans, Delay: delay,
				Wants: func(ev *events.Event) bool { _, ok := la.webhookEvent(ev); return ok }, Encode: la.encodeWebhook})
		}
	}
	return out
}

// webhookEvent is the app's Pusher webhook event of a lifecycle event,
// if it has one.
func (a *liveApp) webhookEvent(ev *events.Event) (pusher.WebhookEvent, bool) {
	if !strings.HasPrefix(ev.Channel, a.Prefix) {
		return pusher.WebhookEvent{}, false
	}
	name := a.pusherChannel(ev.Channel)
	switch ev.Name {
	case events.ChannelOccupied, events.ChannelVacated:
		return pusher.WebhookEvent{Name: ev.Name, Channel: name}, true
	case events.MemberAdded, events.MemberRemoved:
		if pusher.IsPresence(name) {
			return pusher.WebhookEvent{Name: ev.Name, Channel: name, UserID: ev.UserID}, true
		}
	}
	return pusher.WebhookEvent{}, false
}

// encodeWebhook is the body of a batch of lifecycle events (those
// webhookEvent takes) as the app's webhook, and its headers.
func (a *liveApp) encodeWebhook(evs []events.Event, now time.Time) ([]byte, http.Header) {
	out := make([]pusher.WebhookEvent, 0, len(evs))
	for i := range evs {
		if we, ok := a.webhookEvent(&evs[i]); ok {
			out = append(out, we)
		}
	}
	body, sig := a.WebhookBody(out, now)
	return body, http.Header{"X-Pusher-Key": {a.Key}, "X-Pusher-Signature": {sig}}
}

// HandlerFunc is an HTTP handler that returns its error; the server
// answers the error with its status and stable code.
type HandlerFunc func(w http.ResponseWriter, r *http.Request) error

// Route is one endpoint of the protocol.
type Route struct {
	Pattern, Method string
	Handle          HandlerFunc
}

// Routes are the protocol's endpoints, for the server's mux (none
// without apps).
func (s *Service) Routes() []Route {
	if s == nil {
		return nil
	}
	return []Route{
		{"/app/{key}", "GET", s.webSocket},
		{"/apps/{app}/events", "POST", s.api(s.events)},
		{"/apps/{app}/batch_events", "POST", s.api(s.batch)},
		{"/apps/{app}/channels", "GET", s.api(s.channels)},
		{"/apps/{app}/channels/{channel}", "GET", s.api(s.channelInfo)},
		{"/apps/{app}/channels/{channel}/users", "GET", s.api(s.users)},
		{"/apps/{app}/users/{user}/terminate_connections", "POST", s.api(s.terminate)},
	}
}

// Close stops the apps' client_event and subscription_count webhook
// senders (after what they hold is sent).
func (s *Service) Close() {
	if s == nil {
		return
	}
	for _, a := range s.byID {
		if a.hooks != nil {
			a.hooks.Close()
		}
	}
}

// liveApp is one configured app and its live sockets.
type liveApp struct {
	pusher.App
	// hooks sends the webhooks not made of lifecycle events
	// (client_event, subscription_count) from this node; nil without
	// webhooks.
	hooks *pusher.Sender

	mu       sync.Mutex
	sockets  map[uint64]*conn // by connection id
	occupied map[string]int   // Pusher subscriptions by channel, on this node
}

// userChannelPart names, inside an app's prefix, the pushctl channel of a
// signed-in user: ':' cannot appear in a Pusher channel name, so no
// Pusher channel is confused with it.
const userChannelPart = "server-to-user:"

// brokerChannel maps a Pusher channel name to the app's pushctl channel.
func (a *liveApp) brokerChannel(name string) (string, error) {
	if id, ok := strings.CutPrefix(name, pusher.UserPrefix); ok {
		ch := a.Prefix + userChannelPart + id
		if err := broker.ValidateChannel(ch); err != nil {
			return "", fmt.Errorf("user id %q cannot name a pushctl channel (use letters, digits and _-.@~+)", id)
		}
		return ch, nil
	}
	if err := pusher.ValidChannel(name); err != nil {
		return "", err
	}
	ch := a.Prefix + name
	if err := broker.ValidateChannel(ch); err != nil {
		return "", fmt.Errorf("%q is a valid Pusher channel but not a pushctl channel name: pushctl names are at most %d characters of letters, digits and _-.:@~+, in non-empty dot-separated segments", name, broker.MaxChannelLen)
	}
	return ch, nil
}

// pusherChannel maps a pushctl channel back to the Pusher name.
func (a *liveApp) pusherChannel(ch string) string {
	name := strings.TrimPrefix(ch, a.Prefix)
	if id, ok := strings.CutPrefix(name, userChannelPart); ok {
		return pusher.UserPrefix + id
	}
	return name
}

func (a *liveApp) limits() presence.Limits {
	return presence.Limits{MaxMembers: a.Limits.PresenceMembers, MaxInfo: a.Limits.UserInfo, MaxID: a.Limits.UserID}
}

// hook queues a webhook event, if the app has webhooks.
func (a *liveApp) hook(ev pusher.WebhookEvent) {
	if a.hooks != nil {
		a.hooks.Send(ev)
	}
}

// occupy counts a Pusher subscription of name on this node (delta ±1)
// and returns the new count (subscription_count's).
func (a *liveApp) occupy(name string, delta int) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := a.occupied[name] + delta
	if n <= 0 {
		delete(a.occupied, name)
		return 0
	}
	a.occupied[name] = n
	return n
}
