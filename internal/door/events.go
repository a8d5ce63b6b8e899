package door

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pushctl/pushctl/internal/auth"
	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/events"
	"github.com/pushctl/pushctl/internal/webhooks"
	"github.com/pushctl/pushctl/internal/wire"
)

// Lifecycle events (see internal/events and docs/events.md). The door sees
// every subscription and join, so it decides their events; the server
// tells it of connections. Events go out on the reserved event channels
// ("$events.…") through the door itself as the system, and to the
// webhooks.

// EventsConfig configures the lifecycle events.
type EventsConfig struct {
	// Node names this node in the events.
	Node string
	// All emits the events of every channel (a namespace may say
	// events=false) and the connection events.
	All bool
	// Webhooks receive every event (implies All); a namespace's
	// webhooks receive its channels' events.
	Webhooks []string
	// Also names channels whose events a consumer of this process needs
	// even without All (the Pusher apps' webhooks); nil: none.
	Also func(channel string) bool
	// AppWebhooks are webhooks in another format, fed from the same
	// events as Webhooks (the Pusher apps'; see AppWebhook).
	AppWebhooks []AppWebhook
	// WebhookSecret signs the webhook bodies (Pushctl-Signature).
	WebhookSecret []byte
	// WebhookDelay, WebhookRetry and WebhookQueue: see webhooks.Config.
	WebhookDelay time.Duration
	WebhookRetry time.Duration
	WebhookQueue int
	Logger       *slog.Logger

	shared broker.LifecycleLog // the broker's log, when nodes share it
}

// AppWebhook is a webhook with a body format of its own (a Pusher app's),
// sent from the lifecycle events as the --webhook URLs are: on Redis by
// the node holding its lease, from the event channels, from stored
// positions; on one node from the events this node publishes.
type AppWebhook struct {
	// Scope tells its lease and positions apart from another webhook of
	// the same URL; every node must give the same.
	Scope string
	URL   string
	// Channels are the event channels it reads on Redis (nil: all).
	Channels []string
	// Wants picks the events it sends (those Encode can encode); the
	// others are passed over.
	Wants func(ev *events.Event) bool
	// Encode makes a body and the headers that sign it.
	Encode func(evs []events.Event, now time.Time) ([]byte, http.Header)
	// Delay holds channel_vacated and member_removed back (see
	// webhooks.Config.Delay).
	Delay time.Duration
}

// eventState is the door's part of the events.
type eventState struct {
	em       *events.Emitter
	senders  []*webhooks.Sender
	relays   []*webhooks.Relay
	metrics  *webhooks.Metrics
	rmetrics *webhooks.RelayMetrics
	counters prometheus.Collector
}

// startEvents starts the emitter and the webhooks, when anything asks
// for events.
func (d *Door) startEvents(c EventsConfig) {
	all := c.All || len(c.Webhooks) > 0
	any := all || c.Also != nil || len(c.AppWebhooks) > 0
	for _, ns := range d.namespaces {
		r := ns.Rules
		if (r.Events != nil && *r.Events) || len(r.Webhooks) > 0 || r.PublishEvents {
			any = true
		}
	}
	if !any {
		return
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	es := &eventState{metrics: webhooks.NewMetrics()}
	es.em = events.New(events.Config{
		Node:        c.Node,
		Connections: all,
		Logger:      c.Logger,
		Publish: func(ctx context.Context, m *broker.Message) (func() (*broker.Message, error), error) {
			wait, err := d.StartPublish(ctx, System, m)
			if err != nil {
				return nil, err
			}
			return func() (*broker.Message, error) {
				rm, _, err := wait()
				return rm, err
			}, nil
		},
		Enabled: func(ch string) bool {
			return d.eventsOn(ch, all) || (c.Also != nil && !broker.IsReserved(ch) && c.Also(ch))
		},
		Shared: c.shared,
	})
	// Nodes sharing a log (Redis) send the webhooks from the event
	// channels, one node per URL holding its lease (webhooks.Relay), so
	// that a node's death loses none; one node sends what it decides.
	dl, _ := c.shared.(broker.DeliveryLog)
	if dl != nil {
		es.rmetrics = webhooks.NewRelayMetrics()
	}
	wh := func(scope string, chans []string, sc webhooks.Config) {
		sc.Retry, sc.QueueSize, sc.Logger, sc.Metrics = c.WebhookRetry, c.WebhookQueue, c.Logger, es.metrics
		if dl != nil {
			es.relays = append(es.relays, webhooks.NewRelay(webhooks.RelayConfig{Sender: sc, Scope: scope, Node: c.Node, Log: dl,
				Channels: chans, Subscribe: d.b.Subscribe, Metrics: es.rmetrics}))
			return
		}
		s := webhooks.New(sc)
		es.senders = append(es.senders, s)
		es.em.AddSink(s.Send)
	}
	for _, u := range c.Webhooks {
		wh("", nil, webhooks.Config{URL: u, Secret: c.WebhookSecret, Delay: c.WebhookDelay})
	}
	for i := range d.namespaces {
		ns := &d.namespaces[i]
		var chans []string
		for _, p := range ns.Patterns {
			chans = append(chans, events.ChannelOf(p))
		}
		for _, u := range ns.Rules.Webhooks {
			wh("namespace "+ns.Name+" "+strings.Join(ns.Patterns, ","), chans, webhooks.Config{URL: u, Secret: c.WebhookSecret, Delay: c.WebhookDelay,
				Wants: func(ev *events.Event) bool { return ev.Channel != "" && d.namespaceOf(ev.Channel) == ns }})
		}
	}
	for _, a := range c.AppWebhooks {
		wh(a.Scope, a.Channels, webhooks.Config{URL: a.URL, Delay: a.Delay, Wants: a.Wants, Encode: a.Encode})
	}
	em := es.em
	es.counters = prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "pushctl_events_dropped_total",
		Help: "Lifecycle events not published on their event channel (queue full or the broker refused)."}, func() float64 {
		_, dropped, failed := em.Counts()
		return float64(dropped + failed)
	})
	d.events = es
}

// eventsOn reports whether a channel's events are emitted.
func (d *Door) eventsOn(ch string, all bool) bool {
	if broker.IsReserved(ch) {
		return false // no events about the event channels themselves
	}
	ns := d.namespaceOf(ch)
	if ns == nil {
		return all
	}
	if r := ns.Rules; r.Events != nil {
		return *r.Events
	}
	return all || len(ns.Rules.Webhooks) > 0 || ns.Rules.PublishEvents
}

// Events is the emitter of lifecycle events (nil: none are emitted).
func (d *Door) Events() *events.Emitter {
	if d.events == nil {
		return nil
	}
	return d.events.em
}

// EventCollectors are the events' and webhooks' metrics, for /metrics.
func (d *Door) EventCollectors() []prometheus.Collector {
	if d.events == nil {
		return nil
	}
	return append(append(d.events.metrics.Collectors(), d.events.rmetrics.Collectors()...), d.events.counters)
}

// closeEvents publishes the events still queued, sends the webhooks and
// stops them.
func (d *Door) closeEvents() {
	if d.events == nil {
		return
	}
	d.events.em.Close()
	for _, s := range d.events.senders {
		s.Close()
	}
	for _, r := range d.events.relays {
		r.Close()
	}
}

// eventUser is who a caller is in events: its presence id, else its
// token's (or connect hook's) subject.
func eventUser(c Caller) string {
	if id, _, ok := c.ID.PresenceID(); ok {
		return id
	}
	return c.user()
}

// subscribed emits a subscription's events (subscribed, channel_occupied
// for the first anywhere here) and its unsubscribe's when it ends. With
// nodes sharing the log it returns once the cluster counts the
// subscription, so that a client told it is subscribed is counted (the
// other nodes' unsubscribes cannot vacate the channel under it).
func (d *Door) subscribed(ctx context.Context, c Caller, opts broker.SubscribeOptions, sub *broker.Subscription) {
	em := d.Events()
	if em == nil || opts.Internal {
		return
	}
	var chans []string
	for _, ch := range opts.Channels {
		if !broker.IsPattern(ch) && em.On(ch) {
			chans = append(chans, ch)
		}
	}
	if len(chans) == 0 {
		return
	}
	user := eventUser(c)
	ids := make([]uint64, len(chans))
	for i, ch := range chans {
		ids[i] = em.Subscribe(ch, user)
	}
	sub.OnEnd(func() {
		for i, ch := range chans {
			em.Unsubscribe(ch, user, ids[i])
		}
	})
	for _, ch := range chans {
		if em.Held(ctx, ch) != nil {
			return // the caller gave up; the hold is still recorded
		}
	}
}

// presenceChanged is the registry's word of a member added or removed,
// on the node that decided it: its event (which the Pusher apps'
// webhooks, too, take from the event channel).
func (d *Door) presenceChanged(channel, event, id string) {
	if em := d.Events(); em != nil {
		em.Emit(events.Event{Name: event, Channel: channel, UserID: id})
	}
}

// presenceHold is the registry's word, with nodes sharing the log, that
// a node holds a member or no longer does: the shared log decides
// member_added and member_removed for the cluster, appended in the same
// step (see events.Emitter.Member).
func (d *Door) presenceHold(ctx context.Context, node, channel, id string, hold bool) error {
	return d.Events().Member(ctx, node, channel, id, hold)
}

// publishEventFor returns what emits the published event of a message to
// a channel of ns (nil: none).
func (d *Door) publishEventFor(c Caller, ns *nsState) func(m *broker.Message) {
	em := d.Events()
	if em == nil || ns == nil || !ns.Rules.PublishEvents || c.system {
		return nil
	}
	return func(m *broker.Message) {
		if m != nil && em.On(m.Channel) {
			em.Emit(events.Event{Name: events.Published, Channel: m.Channel, Event: m.Event, MessageSeq: m.Seq, UserID: eventUser(c)})
		}
	}
}

// ConnectionEvent emits a connection's opened or closed event.
func (d *Door) ConnectionEvent(name, conn, transport, reason string, id *auth.Identity) {
	em := d.Events()
	if em == nil || !em.ConnectionsOn() {
		return
	}
	em.Connection(events.Event{Name: name, ConnectionID: conn, Transport: transport, Reason: reason, UserID: eventUser(Caller{ID: id})})
}

// reservedPublish refuses a publish to a reserved channel by anyone but
// the broker itself.
func reservedPublish(c Caller, channel string) error {
	if broker.IsReserved(channel) && !c.system {
		return wire.Errorf(http.StatusForbidden, wire.CodeForbidden, "%s is one of the broker's own channels: only the broker publishes on it", channel)
	}
	return nil
}

// allowReserved checks a subscription to a reserved channel or pattern:
// only a token (or connect hook answer) whose subscribe grants name it
// ("$events.>") may, even where tokens are off or a namespace lets anyone
// subscribe.
func (d *Door) allowReserved(c Caller, ch string) error {
	if c.trusted {
		return nil
	}
	if c.scoped || c.ID == nil || c.ID.Claims == nil {
		d.refuse("denied")
		return wire.Errorf(http.StatusForbidden, wire.CodeForbidden, "reading %s needs a token whose subscribe grants name it (such as $events.>)", ch)
	}
	for _, g := range c.ID.Claims.Grants.Subscribe {
		if broker.IsReserved(g) {
			return d.Allow(c, auth.Subscribe, ch)
		}
	}
	d.refuse("denied")
	return wire.Errorf(http.StatusForbidden, wire.CodeForbidden, "reading %s needs a token whose subscribe grants name it (such as $events.>)", ch)
}
