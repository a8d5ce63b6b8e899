package door

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/wire"
)

// Namespace is a kind of channel with rules of its own: the channels its
// patterns match. The first namespace whose pattern matches a channel is
// the channel's; channels of none keep the broker's settings.
type Namespace struct {
	Name     string   `json:"name"`
	Patterns []string `json:"match"`
	Rules    Rules    `json:"rules"`
}

// Rules are what a namespace changes; a zero field keeps the broker's.
type Rules struct {
	// History is what each channel's history keeps (nil: the broker's).
	History *broker.Retention `json:"history,omitempty"`
	// Durable false keeps the channels in memory only in a durable broker
	// (--data-dir): never written to disk (nil: durable).
	Durable *bool `json:"durable,omitempty"`
	// ClientPublish says whether clients may publish over their
	// connections (WebSocket publish frames, Pusher client events); HTTP
	// publishes are the application's and are not affected (nil: yes).
	ClientPublish *bool `json:"client_publish,omitempty"`
	// AnonymousSubscribe lets callers without a token subscribe even when
	// tokens are required elsewhere (nil: as everywhere).
	AnonymousSubscribe *bool `json:"anonymous_subscribe,omitempty"`
	// Presence says whether members may join (nil: yes).
	Presence *bool `json:"presence,omitempty"`
	// PresenceMembers bounds a channel's members (0: the broker's).
	PresenceMembers int `json:"presence_members,omitempty"`
	// MaxMessageSize bounds one message's data; it can only be lower than
	// the broker's, whose limit bounds every request (0: the broker's).
	MaxMessageSize int64 `json:"max_message_size,omitempty"`
	// PublishRate and PublishBurst replace the broker's publish rate for
	// the namespace's channels (0: the broker's).
	PublishRate  float64 `json:"publish_rate,omitempty"`
	PublishBurst int     `json:"publish_burst,omitempty"`
	// Hooks are the hooks asked for the namespace's channels (subscribe,
	// publish; nil: every hook configured; empty: none).
	Hooks *[]string `json:"hooks,omitempty"`
	// HookFailure is FailDeny or FailAllow when a hook does not answer
	// ("": the broker's).
	HookFailure string `json:"hook_failure,omitempty"`
	// Events says whether the channels' lifecycle events are emitted
	// (nil: as serve --events says, or yes when the namespace has
	// webhooks or publish events).
	Events *bool `json:"events,omitempty"`
	// PublishEvents emits a published event for each message.
	PublishEvents bool `json:"publish_events,omitempty"`
	// Webhooks receive the namespace's channels' events.
	Webhooks []string `json:"webhooks,omitempty"`
	// ConsumerMaxPending and ConsumerMaxPendingBytes bound what a durable
	// consumer of its channels keeps unacknowledged: a consumer created
	// without a bound of its own gets these, one asking for more is
	// refused (0: consumer.DefaultMaxPending and DefaultMaxPendingBytes,
	// and a consumer may ask up to consumer.Config's own limits).
	ConsumerMaxPending      int   `json:"consumer_max_pending,omitempty"`
	ConsumerMaxPendingBytes int64 `json:"consumer_max_pending_bytes,omitempty"`
}

// nsState is a namespace as the door enforces it.
type nsState struct {
	Namespace
	rate *rateLimiter
}

// Effective is what applies to one channel: its namespace ("" for none)
// and the rules after the broker's defaults, as GET /channels/{ch} shows.
type Effective struct {
	Namespace          string   `json:"namespace,omitempty"`
	History            *History `json:"history,omitempty"`
	Durable            *bool    `json:"durable,omitempty"`
	ClientPublish      bool     `json:"client_publish"`
	AnonymousSubscribe bool     `json:"anonymous_subscribe"`
	Presence           bool     `json:"presence"`
	PresenceMembers    int      `json:"presence_members,omitempty"`
	MaxMessageSize     int64    `json:"max_message_size"`
	PublishRate        float64  `json:"publish_rate,omitempty"`
	PublishBurst       int      `json:"publish_burst,omitempty"`
	// ConsumerMaxPending and ConsumerMaxPendingBytes are the namespace's
	// bounds for durable consumers (omitted: none of its own).
	ConsumerMaxPending      int   `json:"consumer_max_pending,omitempty"`
	ConsumerMaxPendingBytes int64 `json:"consumer_max_pending_bytes,omitempty"`
}

// History is a namespace's history rule as channel info shows it (a zero
// field is the broker's).
type History struct {
	Messages *int   `json:"messages,omitempty"` // 0: none
	Age      string `json:"age,omitempty"`
	Bytes    int64  `json:"bytes,omitempty"`
}

// CheckNamespaces refuses namespaces that cannot work: no pattern, an
// invalid pattern, two of one name, or one whose every pattern an
// earlier namespace's covers (it could never match).
func CheckNamespaces(nss []Namespace) error {
	names := map[string]bool{}
	for i, ns := range nss {
		where := fmt.Sprintf("namespace %d", i+1)
		if ns.Name != "" {
			where = fmt.Sprintf("namespace %q", ns.Name)
		}
		if ns.Name == "" {
			return fmt.Errorf("%s has no name", where)
		}
		if names[ns.Name] {
			return fmt.Errorf("two namespaces are named %q", ns.Name)
		}
		names[ns.Name] = true
		if len(ns.Patterns) == 0 {
			return fmt.Errorf("%s matches no channel: give it match: PATTERN", where)
		}
		shadowed := 0
		for _, p := range ns.Patterns {
			if err := broker.ValidatePattern(p); err != nil {
				return fmt.Errorf("%s: match %q: %v", where, p, err)
			}
			if by := coveredBy(nss[:i], p); by != "" {
				shadowed++
				if shadowed == len(ns.Patterns) {
					return fmt.Errorf("%s can never match: namespace %q, earlier, takes every channel of %q (the first match wins: put the narrower one first)", where, by, p)
				}
			}
		}
		r := ns.Rules
		if r.MaxMessageSize < 0 || r.PresenceMembers < 0 || r.PublishRate < 0 || r.PublishBurst < 0 {
			return fmt.Errorf("%s: limits must not be negative", where)
		}
	}
	return nil
}

// coveredBy names the earlier namespace one of whose patterns takes every
// channel p can match ("" for none).
func coveredBy(earlier []Namespace, p string) string {
	for _, ns := range earlier {
		for _, q := range ns.Patterns {
			if covers(q, p) {
				return ns.Name
			}
		}
	}
	return ""
}

// covers reports whether pattern g matches every channel that p (a
// channel or a pattern) can be. It allocates nothing: it runs on every
// publish when there are namespaces. A wildcard does not take the
// broker's reserved channels ("$events.…"; see broker.Match).
func covers(g, p string) bool {
	if broker.IsReserved(p) && !broker.IsReserved(g) {
		return false
	}
	for {
		gseg, grest, gmore := strings.Cut(g, ".")
		pseg, prest, pmore := strings.Cut(p, ".")
		switch {
		case gseg == ">":
			return true // p has this segment, and any after it
		case gseg == "*":
			if pseg == ">" {
				return false
			}
		case gseg != pseg:
			return false
		}
		if !gmore || !pmore {
			return gmore == pmore
		}
		g, p = grest, prest
	}
}

// nsList is the namespaces in the order they are matched.
type nsList []nsState

// newNSList is nss as the door matches them (their rate limiters are the
// door's to add).
func newNSList(nss []Namespace) nsList {
	l := make(nsList, len(nss))
	for i, ns := range nss {
		l[i] = nsState{Namespace: ns}
	}
	return l
}

// namespaceOf returns the namespace of a channel, or nil.
func (d *Door) namespaceOf(channel string) *nsState { return d.namespaces.of(channel) }

// of returns the namespace of a channel, or nil. For a pattern (a
// subscription) it is the namespace that takes every channel the pattern
// can match, provided no earlier namespace takes any of them: a pattern
// that spans namespaces has none (the broker's rules), so that a wider
// namespace's relaxations never open a narrower one's channels.
func (l nsList) of(channel string) *nsState {
	for i := range l {
		ns := &l[i]
		for _, p := range ns.Patterns {
			if covers(p, channel) {
				return ns
			}
		}
		for _, p := range ns.Patterns {
			if overlaps(p, channel) {
				return nil // part of channel's channels are this namespace's
			}
		}
	}
	return nil
}

// holdsSome reports whether some channel filter (a name or a pattern)
// can match is one of the namespace's.
func (ns *nsState) holdsSome(filter string) bool {
	for _, p := range ns.Patterns {
		if overlaps(p, filter) {
			return true
		}
	}
	return false
}

// overlaps reports whether some channel matches both patterns.
func overlaps(a, b string) bool {
	if broker.IsReserved(a) != broker.IsReserved(b) {
		return false
	}
	for {
		as, arest, amore := strings.Cut(a, ".")
		bs, brest, bmore := strings.Cut(b, ".")
		if as == ">" || bs == ">" {
			return true
		}
		if as != "*" && bs != "*" && as != bs {
			return false
		}
		if !amore || !bmore {
			return amore == bmore
		}
		a, b = arest, brest
	}
}

// Namespaces are the door's namespaces, in the order they are matched.
func (d *Door) Namespaces() []Namespace {
	out := make([]Namespace, len(d.namespaces))
	for i, ns := range d.namespaces {
		out[i] = ns.Namespace
	}
	return out
}

// RetentionFor gives each namespace's channels its history rules, for the
// broker's log.
func RetentionFor(nss []Namespace) broker.RetentionFor {
	if len(nss) == 0 {
		return nil
	}
	l := newNSList(nss)
	return func(ch string) (broker.Retention, bool) {
		ns := l.of(ch)
		if ns == nil || ns.Rules.History == nil {
			return broker.Retention{}, false
		}
		return *ns.Rules.History, true
	}
}

// MemoryOnly names the channels whose namespace says durable: false, for a
// durable log (nil: none).
func MemoryOnly(nss []Namespace) func(channel string) bool {
	memOnly := func(ns *nsState) bool { return ns != nil && ns.Rules.Durable != nil && !*ns.Rules.Durable }
	l := newNSList(nss)
	for i := range l {
		if memOnly(&l[i]) {
			return func(ch string) bool { return memOnly(l.of(ch)) }
		}
	}
	return nil
}

// Rules returns what applies to channel.
func (d *Door) Rules(channel string) Effective {
	e := Effective{ClientPublish: true, Presence: true, MaxMessageSize: d.maxSize}
	if d.rate != nil {
		e.PublishRate, e.PublishBurst = d.rate.rate, int(d.rate.burst)
	}
	ns := d.namespaceOf(channel)
	if ns == nil {
		return e
	}
	r := ns.Rules
	e.Namespace = ns.Name
	e.Durable = r.Durable
	if h := r.History; h != nil {
		e.History = &History{Bytes: h.HistoryBytes}
		if h.HistorySize != 0 {
			n := max(h.HistorySize, 0)
			e.History.Messages = &n
		}
		if h.HistoryAge > 0 {
			e.History.Age = h.HistoryAge.String()
		}
	}
	if r.ClientPublish != nil {
		e.ClientPublish = *r.ClientPublish
	}
	if r.AnonymousSubscribe != nil {
		e.AnonymousSubscribe = *r.AnonymousSubscribe
	}
	if r.Presence != nil {
		e.Presence = *r.Presence
	}
	e.PresenceMembers = r.PresenceMembers
	if r.MaxMessageSize > 0 {
		e.MaxMessageSize = min(r.MaxMessageSize, d.maxSize)
	}
	if ns.rate != nil {
		e.PublishRate, e.PublishBurst = ns.rate.rate, int(ns.rate.burst)
	}
	e.ConsumerMaxPending, e.ConsumerMaxPendingBytes = r.ConsumerMaxPending, r.ConsumerMaxPendingBytes
	return e
}

// nsRefusal is a namespace's refusal.
func nsRefusal(ns *nsState, format string, args ...any) *wire.Error {
	return wire.Errorf(http.StatusForbidden, wire.CodeForbidden, "%s (namespace %s)", fmt.Sprintf(format, args...), ns.Name)
}

// parseBool, parseSize and parseDuration read a namespace's values.
func parseBool(v string) (bool, error) { return strconv.ParseBool(v) }

func parseDuration(v string) (time.Duration, error) {
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("want a duration such as 30s or 24h")
	}
	return d, nil
}
