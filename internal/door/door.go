// Package door is the one admission step between the outside and the
// broker. Every way in (HTTP publish, NDJSON lines and batches, WebSocket
// frames, Pusher client events and REST triggers, presence joins, ZeroMQ
// ingest, and every subscribe path) hands the door a Caller and what it
// wants; the door checks, in one order, the channel name, the caller's
// grant, the size and the publish rate, and only then reaches the broker.
//
// The door is also the only holder of the broker and of the presence
// registry that a server gets: a transport has no other way to publish,
// subscribe or join, so a new way in cannot skip a check by forgetting it
// (TestNoWayAroundTheDoor keeps it so).
package door

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pushctl/pushctl/internal/auth"
	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/consumer"
	"github.com/pushctl/pushctl/internal/hooks"
	"github.com/pushctl/pushctl/internal/presence"
	"github.com/pushctl/pushctl/internal/wire"
)

// Config configures a Door.
type Config struct {
	// Auth decides who may publish and subscribe (nil: everyone).
	Auth *auth.Authorizer
	// MaxMessageSize bounds one message's data in bytes (default 1 MiB).
	MaxMessageSize int64
	// PublishRate and PublishBurst bound publishes (and joins) per second
	// per token, or per address without one (0: no bound).
	PublishRate  float64
	PublishBurst int
	// PresenceGrace is how long a member whose last connection dropped
	// stays, so that a quick reconnect is not a leave.
	PresenceGrace time.Duration
	// Namespaces are kinds of channel with rules of their own (checked
	// with CheckNamespaces first); the first whose pattern matches a
	// channel is the channel's.
	Namespaces []Namespace
	// Hooks ask the application (nil: none).
	Hooks *hooks.Client
	// HookFailure is what happens when a hook does not answer: FailDeny
	// (default) or FailAllow; a namespace may say otherwise.
	HookFailure string
	// Now is the clock of the rate limiter (default time.Now).
	Now func() time.Time
	// Events configures the lifecycle events and webhooks (events.go).
	Events EventsConfig
	// Consumers are the broker's durable consumers (nil: kept in memory).
	Consumers consumer.Engine
}

// Door admits publishes, subscriptions and joins.
type Door struct {
	b        broker.Broker
	auth     *auth.Authorizer
	rate     *rateLimiter
	maxSize  int64
	now      func() time.Time
	presence *presence.Registry
	refused  sync.Map // reason -> *atomic.Uint64

	namespaces nsList
	hooks      *hooks.Client
	hookPolicy string

	events    *eventState // nil: no lifecycle events (events.go)
	consumers consumer.Engine
}

// New returns the door in front of b. The door owns the presence registry,
// whose events it publishes through itself.
func New(b broker.Broker, c Config) *Door {
	if c.Auth == nil {
		c.Auth = auth.New(auth.Config{})
	}
	if c.MaxMessageSize <= 0 {
		c.MaxMessageSize = 1 << 20
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	d := &Door{b: b, auth: c.Auth, maxSize: c.MaxMessageSize, now: c.Now, hooks: c.Hooks, hookPolicy: c.HookFailure}
	if d.hookPolicy == "" {
		d.hookPolicy = FailDeny
	}
	if c.PublishRate > 0 {
		d.rate = newRateLimiter(c.PublishRate, c.PublishBurst)
	}
	d.consumers = c.Consumers
	if d.consumers == nil {
		d.consumers = consumer.NewManager(b, consumer.Options{}).Engine()
	}
	d.namespaces = newNSList(c.Namespaces)
	for i := range d.namespaces {
		if r := d.namespaces[i].Rules; r.PublishRate > 0 {
			d.namespaces[i].rate = newRateLimiter(r.PublishRate, r.PublishBurst)
		}
	}
	d.presence = presence.New(func(ctx context.Context, m *broker.Message) (*broker.Message, error) {
		rm, _, err := d.Publish(ctx, System, m)
		return rm, err
	}, c.PresenceGrace)
	d.presence.Changed = d.presenceChanged
	d.presence.Hold = d.presenceHold
	lb, _ := b.(interface{ Log() broker.Log })
	if lb != nil {
		if ll, ok := lb.Log().(broker.LifecycleLog); ok {
			c.Events.shared = ll // several nodes: occupancy decided in Redis
		}
	}
	d.startEvents(c.Events) // before Share: a dead node's members are told to the events
	if lb != nil {
		if pl, ok := lb.Log().(broker.PresenceLog); ok {
			d.presence.Share(pl) // several nodes: members live in Redis
		}
	}
	return d
}

// Caller is who is asking: an identity (nil: no token) and the client's
// address, which keys the rate limit of callers without a token.
type Caller struct {
	ID     *auth.Identity
	Client string
	// trusted callers are the broker's own: no grant, no rate limit.
	trusted bool
	// system is the broker itself, the only publisher on reserved
	// channels (the lifecycle events).
	system bool
	// scoped callers were authenticated by their protocol (a Pusher app's
	// key and signatures) for the channels that begin with scope; pushctl
	// tokens do not apply to them.
	scoped bool
	scope  string
	// socket: the caller publishes over its own connection (a WebSocket
	// frame, a Pusher client event), which namespaces may refuse.
	socket bool
}

// keyScope is what the door puts before a caller's idempotency keys, so
// that one publisher's key never answers for another's message: the
// token's subject, hashed ("" for callers without a token, who share
// one scope).
func keyScope(c Caller) string {
	if c.ID == nil || c.ID.Claims == nil || c.ID.Claims.Subject == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(c.ID.Claims.Subject))
	return hex.EncodeToString(sum[:8]) + "."
}

// OnSocket is c publishing over its own connection (a WebSocket publish
// frame, a Pusher client event) rather than through the HTTP API.
func (c Caller) OnSocket() Caller { c.socket = true; return c }

// System is the broker itself (presence events): its names and sizes are
// checked, grants and rates are not.
var System = Caller{Client: "system", trusted: true, system: true}

// Operator is a way in that the operator configured and that has no
// identity of its own (the ZeroMQ SUB endpoint of serve): like System,
// what it may publish was decided by whoever could reach the endpoint.
func Operator(name string) Caller { return Caller{Client: name, trusted: true} }

// Scoped is a caller that its own protocol authenticated (a Pusher app's
// client or REST caller) for the channels whose names begin with prefix:
// it may do nothing outside them.
func Scoped(prefix, client string) Caller { return Caller{Client: client, scoped: true, scope: prefix} }

// Auth is the authorizer the door checks grants with.
func (d *Door) Auth() *auth.Authorizer { return d.auth }

// MaxMessageSize is the size limit of one message's data.
func (d *Door) MaxMessageSize() int64 { return d.maxSize }

// Identify authenticates a token (empty: none) from remote.
func (d *Door) Identify(token string, remote net.Addr) (*auth.Identity, error) {
	id, err := d.auth.Authenticate(token, remote)
	if err != nil {
		d.refuse("bad_token")
		return nil, AccessError(err)
	}
	return id, nil
}

// Allow checks one grant of c. A refusal is counted.
func (d *Door) Allow(c Caller, a auth.Action, channel string) error {
	if c.trusted {
		return nil
	}
	if c.scoped {
		if !strings.HasPrefix(channel, c.scope) {
			d.refuse("denied")
			return wire.Errorf(http.StatusForbidden, wire.CodeForbidden, "not allowed: %s is outside this application's channels", channel)
		}
		return nil
	}
	if err := d.auth.Allow(c.ID, a, channel); err != nil {
		d.refuse("denied")
		return AccessError(err)
	}
	return nil
}

// CheckPublish is the part of a publish's admission that needs no data:
// the channel's name, the grant and, for a client publishing over its
// connection, the namespace's client-publish rule. A request checks it
// before reading a body; Publish checks it again.
func (d *Door) CheckPublish(c Caller, channel string) error {
	return d.checkPublish(c, channel, d.namespaceOf(channel))
}

// checkPublish is CheckPublish for a channel whose namespace is known.
func (d *Door) checkPublish(c Caller, channel string, ns *nsState) error {
	if err := broker.ValidateChannel(channel); err != nil {
		return err
	}
	if err := reservedPublish(c, channel); err != nil {
		d.refuse("denied")
		return err
	}
	if err := d.Allow(c, auth.Publish, channel); err != nil {
		return err
	}
	if err := d.checkDeadLetter(c, channel); err != nil {
		return err
	}
	if c.socket && ns != nil && ns.Rules.ClientPublish != nil && !*ns.Rules.ClientPublish {
		d.refuse("client_publish")
		return nsRefusal(ns, "clients may not publish to %s over their connections; publish through the HTTP API", channel)
	}
	return nil
}

// sizeLimit is the size limit of a message to a channel of ns.
func (d *Door) sizeLimit(ns *nsState) int64 {
	if ns != nil && ns.Rules.MaxMessageSize > 0 {
		return min(ns.Rules.MaxMessageSize, d.maxSize)
	}
	return d.maxSize
}

// admitSize checks m against its namespace's size limit.
func (d *Door) admitSize(m *broker.Message, ns *nsState) error {
	if limit := d.sizeLimit(ns); int64(len(m.Data)) > limit {
		d.refuse("message_size")
		return TooLarge(int64(len(m.Data)), limit)
	}
	return nil
}

// admitPublish is the whole admission of one message; it returns the
// channel's namespace for what comes after (the publish hook).
func (d *Door) admitPublish(c Caller, m *broker.Message) (*nsState, error) {
	if m.Key != "" {
		if broker.ValidateKey(m.Key) != nil {
			return nil, wire.Errorf(http.StatusBadRequest, wire.CodeInvalidParameter, "an idempotency key is 1 to %d printable ASCII characters without spaces", broker.MaxKeyLen)
		}
		m.Key = keyScope(c) + m.Key
	}
	ns := d.namespaceOf(m.Channel)
	if err := d.checkPublish(c, m.Channel, ns); err != nil {
		return nil, err
	}
	if err := d.admitSize(m, ns); err != nil {
		return nil, err
	}
	return ns, d.takeRate(c, ns)
}

// Publish admits m from c and publishes it.
func (d *Door) Publish(ctx context.Context, c Caller, m *broker.Message) (*broker.Message, int, error) {
	ns, err := d.admitPublish(c, m)
	if err != nil {
		return nil, 0, err
	}
	if err := d.askPublish(ctx, c, m, ns); err != nil {
		return nil, 0, err
	}
	rm, n, err := d.b.Publish(ctx, m)
	if ev := d.publishEventFor(c, ns); ev != nil && err == nil && !rm.Duplicate {
		ev(rm)
	}
	return rm, n, err
}

// PublishEach admits the same event to several channels (a Pusher
// trigger), all or none, and publishes it to each in turn. It counts once
// against each publish rate its channels come under (the broker's, a
// namespace's), as one request of the caller's.
func (d *Door) PublishEach(ctx context.Context, c Caller, ms []*broker.Message) ([]int, error) {
	nss := make([]*nsState, len(ms))
	for i, m := range ms {
		nss[i] = d.namespaceOf(m.Channel)
		if err := d.checkPublish(c, m.Channel, nss[i]); err != nil {
			return nil, err
		}
		if err := d.admitSize(m, nss[i]); err != nil {
			return nil, err
		}
	}
	// One publish against each rate the channels come under (a channel of
	// no namespace with a rate of its own must not let the others' by).
	charged := map[*rateLimiter]bool{}
	for _, ns := range nss {
		if rate, _ := d.rateFor(ns); !charged[rate] {
			charged[rate] = true
			if err := d.takeRate(c, ns); err != nil {
				return nil, err
			}
		}
	}
	subs := make([]int, len(ms))
	for i, m := range ms {
		rm, n, err := d.b.Publish(ctx, m)
		if err != nil {
			return nil, err
		}
		if ev := d.publishEventFor(c, nss[i]); ev != nil {
			ev(rm)
		}
		subs[i] = n
	}
	return subs, nil
}

// StartPublish admits m from c and starts publishing it, pipelined when
// the broker can (see broker.StartPublish).
func (d *Door) StartPublish(ctx context.Context, c Caller, m *broker.Message) (func() (*broker.Message, int, error), error) {
	ns, err := d.admitPublish(c, m)
	if err != nil {
		return nil, err
	}
	if err := d.askPublish(ctx, c, m, ns); err != nil {
		return nil, err
	}
	wait, err := broker.StartPublish(ctx, d.b, m)
	if ev := d.publishEventFor(c, ns); ev != nil && err == nil {
		return func() (*broker.Message, int, error) {
			rm, n, err := wait()
			if err == nil && !rm.Duplicate {
				ev(rm)
			}
			return rm, n, err
		}, nil
	}
	return wait, err
}

// CheckSubscribe checks that c may subscribe to every one of channels
// (names or patterns), as Subscribe will.
func (d *Door) CheckSubscribe(c Caller, channels []string) error {
	if len(channels) == 0 || len(channels) > broker.MaxChannelsPerList {
		return wire.Errorf(http.StatusBadRequest, wire.CodeInvalidChannel, "subscribe names 1 to %d channels", broker.MaxChannelsPerList)
	}
	for _, ch := range channels {
		if err := broker.ValidatePattern(ch); err != nil {
			return err
		}
		if err := d.allowSubscribe(c, ch); err != nil {
			return err
		}
	}
	return nil
}

// allowSubscribe checks c's grant to subscribe to ch, unless ch's
// namespace lets anyone without a token subscribe.
func (d *Door) allowSubscribe(c Caller, ch string) error {
	if broker.IsReserved(ch) {
		return d.allowReserved(c, ch)
	}
	if ns := d.namespaceOf(ch); ns != nil && ns.Rules.AnonymousSubscribe != nil && *ns.Rules.AnonymousSubscribe && !c.scoped {
		if c.ID == nil || c.ID.Claims == nil {
			return nil
		}
	}
	return d.Allow(c, auth.Subscribe, ch)
}

// Subscribe admits c to opts.Channels and subscribes.
func (d *Door) Subscribe(ctx context.Context, c Caller, opts broker.SubscribeOptions) (*broker.Subscription, error) {
	if err := d.CheckSubscribe(c, opts.Channels); err != nil {
		return nil, err
	}
	if opts.Internal && !c.trusted {
		return nil, errors.New("door: only the broker's own subscriptions are internal")
	}
	for _, ch := range opts.Channels {
		if err := d.askSubscribe(ctx, c, ch); err != nil {
			return nil, err
		}
	}
	sub, err := d.b.Subscribe(ctx, opts)
	if err == nil {
		d.subscribed(ctx, c, opts, sub)
	}
	return sub, err
}

// Join admits c to a channel's presence as member and joins.
func (d *Door) Join(ctx context.Context, c Caller, channel, member string, info []byte, lim presence.Limits) (*presence.Membership, error) {
	if err := broker.ValidateChannel(channel); err != nil {
		return nil, err
	}
	if err := d.allowSubscribe(c, channel); err != nil {
		return nil, err
	}
	info, lim, err := d.admitJoin(ctx, c, channel, member, info, lim)
	if err != nil {
		return nil, err
	}
	return d.presence.Join(ctx, channel, member, info, lim)
}

// SubscribeAsMember admits c to one channel as a subscriber and a member
// of its presence, in one decision (a Pusher presence subscription): the
// subscribe hook is asked once, as a join. The subscription is closed if
// the join fails.
func (d *Door) SubscribeAsMember(ctx context.Context, c Caller, opts broker.SubscribeOptions, member string, info []byte, lim presence.Limits) (*broker.Subscription, *presence.Membership, error) {
	if len(opts.Channels) != 1 || opts.Internal {
		return nil, nil, errors.New("door: a member subscribes to one channel")
	}
	channel := opts.Channels[0]
	if err := broker.ValidateChannel(channel); err != nil {
		return nil, nil, err // a concrete name: presence has no patterns
	}
	if err := d.CheckSubscribe(c, opts.Channels); err != nil {
		return nil, nil, err
	}
	info, lim, err := d.admitJoin(ctx, c, channel, member, info, lim)
	if err != nil {
		return nil, nil, err
	}
	sub, err := d.b.Subscribe(ctx, opts)
	if err != nil {
		return nil, nil, err
	}
	d.subscribed(ctx, c, opts, sub)
	m, err := d.presence.Join(ctx, channel, member, info, lim)
	if err != nil {
		sub.Close()
		return nil, nil, err
	}
	return sub, m, nil
}

// admitJoin applies what a join meets past the grant: no presence on the
// broker's own channels, the namespace's presence rules, the rate (a join publishes an event) and the subscribe
// hook, asked as a join, whose answer may replace the member's info.
func (d *Door) admitJoin(ctx context.Context, c Caller, channel, member string, info []byte, lim presence.Limits) ([]byte, presence.Limits, error) {
	if broker.IsReserved(channel) {
		d.refuse("presence_off")
		return nil, lim, wire.Errorf(http.StatusForbidden, wire.CodeForbidden, "%s is one of the broker's own channels: it has no presence", channel)
	}
	ns := d.namespaceOf(channel)
	if ns != nil {
		if ns.Rules.Presence != nil && !*ns.Rules.Presence {
			d.refuse("presence_off")
			return nil, lim, nsRefusal(ns, "%s has no presence", channel)
		}
		if n := ns.Rules.PresenceMembers; n > 0 {
			lim.MaxMembers = n
		}
	}
	if err := d.takeRate(c, ns); err != nil {
		return nil, lim, err
	}
	hinfo, err := d.askSubscribeOrJoin(ctx, c, channel, ns, member, true)
	if err != nil {
		return nil, lim, err
	}
	if hinfo != nil {
		info = hinfo
	}
	return info, lim, nil
}

// DeleteChannel admits c (who must be allowed to publish to it) and
// deletes the channel.
func (d *Door) DeleteChannel(ctx context.Context, c Caller, name string) error {
	if err := d.CheckPublish(c, name); err != nil {
		return err
	}
	return d.b.DeleteChannel(ctx, name)
}

// rateFor is the rate a channel of ns comes under (its namespace's, else
// the broker's; nil: none) and how a refusal names it.
func (d *Door) rateFor(ns *nsState) (*rateLimiter, string) {
	if ns != nil && ns.rate != nil {
		return ns.rate, " in namespace " + ns.Name
	}
	return d.rate, ""
}

// takeRate spends one of c's publishes to a channel of ns.
func (d *Door) takeRate(c Caller, ns *nsState) error {
	rate, in := d.rateFor(ns)
	if rate == nil || c.trusted {
		return nil
	}
	key := c.ID.Key()
	if key == "" {
		key = "ip:" + c.Client
	}
	ok, wait := rate.take(key, d.now())
	if ok {
		return nil
	}
	d.refuse("publish_rate")
	secs := int(wait/time.Second) + 1
	return &wire.Error{Status: http.StatusTooManyRequests, Code: wire.CodeRateLimited, RetryAfter: secs,
		Message: fmt.Sprintf("publishing faster than %g messages/s%s; retry in %ds", rate.rate, in, secs)}
}

// TooLarge is the refusal of a message of size bytes over limit.
func TooLarge(size, limit int64) *wire.Error {
	return wire.Errorf(http.StatusRequestEntityTooLarge, wire.CodeTooLarge,
		"message of %d bytes is larger than the limit of %d bytes (serve --max-message-size)", size, limit)
}

// AccessError maps an auth error to its reply (nil: not an auth error).
func AccessError(err error) *wire.Error {
	switch {
	case errors.Is(err, auth.ErrNoToken):
		return &wire.Error{Status: http.StatusUnauthorized, Code: wire.CodeTokenMissing, Message: "a token is required: send Authorization: Bearer <token> or ?token=<token>"}
	case errors.Is(err, auth.ErrExpired):
		return &wire.Error{Status: http.StatusUnauthorized, Code: wire.CodeTokenExpired, Message: "the token has expired; get a new one"}
	case errors.Is(err, auth.ErrBadToken):
		return &wire.Error{Status: http.StatusUnauthorized, Code: wire.CodeTokenInvalid, Message: err.Error()}
	case errors.Is(err, auth.ErrForbidden):
		return &wire.Error{Status: http.StatusForbidden, Code: wire.CodeForbidden, Message: err.Error()}
	}
	return nil
}

// Refuse counts a refusal or limit by reason (for limits the door does not
// check itself, such as connections per address).
func (d *Door) Refuse(reason string) { d.refuse(reason) }

func (d *Door) refuse(reason string) {
	v, ok := d.refused.Load(reason)
	if !ok {
		v, _ = d.refused.LoadOrStore(reason, new(atomic.Uint64))
	}
	v.(*atomic.Uint64).Add(1)
}

// Refusals calls fn with each reason's count.
func (d *Door) Refusals(fn func(reason string, n uint64)) {
	d.refused.Range(func(k, v any) bool {
		fn(k.(string), v.(*atomic.Uint64).Load())
		return true
	})
}
