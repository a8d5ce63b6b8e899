// Package presence keeps who is on a channel: members with an id and some
// info, joined by one or more connections. A member's arrival and
// departure are published on the channel itself as the events
// member_added and member_removed, so every subscriber (pushctl or Pusher,
// on this node or another) sees them in order with the channel's messages.
//
// A connection that drops does not make its member leave at once: the
// departure waits a grace period, so a quick reconnect is not a leave.
//
// On one node the registry decides who is a member. When the broker's
// log is shared by several nodes (Redis) the registry counts only this
// node's connections and grace periods, and the log decides: a member
// held by two nodes is one member, and the members of a node that died
// are removed by the others (see broker.PresenceLog).
package presence

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/pushctl/pushctl/internal/broker"
)

// Event names of presence changes on a channel. Only the registry
// publishes them.
const (
	EventAdded   = "member_added"
	EventRemoved = "member_removed"
)

// Reserved reports whether a client may not publish an event of this name.
func Reserved(event string) bool { return event == EventAdded || event == EventRemoved }

// Errors a join can fail with.
var (
	ErrFull        = broker.ErrPresenceFull
	ErrInfoTooLong = errors.New("member info too large")
	ErrBadMember   = errors.New("invalid member")
)

// Limits bound one channel's presence.
type Limits struct {
	MaxMembers int // members per channel (0: 1000)
	MaxInfo    int // bytes of one member's info (0: 1024)
	MaxID      int // bytes of a member id (0: 128)
}

func (l Limits) members() int { return orDefault(l.MaxMembers, 1000) }
func (l Limits) info() int    { return orDefault(l.MaxInfo, 1024) }
func (l Limits) id() int      { return orDefault(l.MaxID, 128) }

func orDefault(v, d int) int {
	if v > 0 {
		return v
	}
	return d
}

// Member is one member of a channel's presence.
type Member struct {
	ID   string          `json:"id"`
	Info json.RawMessage `json:"info,omitempty"`
	// Connections is how many connections of this node hold the
	// membership.
	Connections int `json:"connections"`
	// Nodes is how many nodes hold it, when nodes share presence.
	Nodes int `json:"nodes,omitempty"`
}

// Publisher publishes a presence event on a channel and returns the
// stored message.
type Publisher func(ctx context.Context, m *broker.Message) (*broker.Message, error)

// Registry is the presence of every channel of this node.
type Registry struct {
	publish Publisher
	grace   time.Duration
	shared  broker.PresenceLog // nil: this node decides
	// Changed, when set before use, is told each member's arrival and
	// departure (event EventAdded or EventRemoved), in order per channel.
	Changed func(channel, event, id string)
	// Hold, when set before use with a shared log, is told instead of
	// Changed each time a node ("": this one) starts or stops holding a
	// member (the presence log changed), and waited for: it decides the
	// member's lifecycle events for the cluster (events.Emitter.Member).
	// An error from a stop is retried like the log's.
	Hold func(ctx context.Context, node, channel, id string, hold bool) error

	mu     sync.Mutex
	rooms  map[string]*room
	closed bool
}

type room struct {
	// mu orders the room's changes with their events: an event is
	// published while it is held, so the member list and the events
	// agree.
	mu      sync.Mutex
	members map[string]*member
	last    broker.Position // of the latest presence event published
	refs    int             // joins in progress or held, pending leaves
}

type member struct {
	info    json.RawMessage
	max     int // the channel's member limit when it joined
	conns   int
	leaving *time.Timer // the debounced departure, while conns == 0
}

// New returns a registry that publishes presence events with publish and
// lets a member whose last connection dropped stay for grace.
func New(publish Publisher, grace time.Duration) *Registry {
	return &Registry{publish: publish, grace: grace, rooms: map[string]*room{}}
}

// Share makes the registry keep its members in pl, shared with the other
// nodes. Call it before use.
func (r *Registry) Share(pl broker.PresenceLog) {
	r.shared = pl
	pl.WatchPresence(r.lost, r.rejoin)
}

// ValidateMember checks a member id and info against lim.
func ValidateMember(id string, info json.RawMessage, lim Limits) error {
	switch {
	case id == "":
		return fmt.Errorf("%w: the member id is empty", ErrBadMember)
	case len(id) > lim.id():
		return fmt.Errorf("%w: the member id is longer than %d bytes", ErrBadMember, lim.id())
	case !utf8.ValidString(id):
		return fmt.Errorf("%w: the member id is not UTF-8", ErrBadMember)
	case strings.ContainsFunc(id, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		return fmt.Errorf("%w: the member id contains a control character", ErrBadMember)
	case len(info) > lim.info():
		return fmt.Errorf("%w: %d bytes, the limit is %d", ErrInfoTooLong, len(info), lim.info())
	case len(info) > 0 && !json.Valid(info):
		return fmt.Errorf("%w: the member info is not JSON", ErrBadMember)
	}
	return nil
}

// acquire returns the channel's room, counted as in use.
func (r *Registry) acquire(channel string) (*room, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, broker.ErrClosed
	}
	return r.acquireLocked(channel), nil
}

func (r *Registry) acquireLocked(channel string) *room {
	rm := r.rooms[channel]
	if rm == nil {
		rm = &room{members: map[string]*member{}}
		r.rooms[channel] = rm
	}
	rm.refs++
	return rm
}

// release drops one use of the room, and the room once unused and empty.
func (r *Registry) release(channel string, rm *room) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rm.refs--
	if rm.refs == 0 && r.rooms[channel] == rm {
		delete(r.rooms, channel)
	}
}

// Join makes a connection a member of channel's presence. The member is
// added (and member_added published) unless it is already there through
// another connection or a connection that dropped within the grace
// period. The returned Membership must be left exactly once.
func (r *Registry) Join(ctx context.Context, channel, id string, info json.RawMessage, lim Limits) (*Membership, error) {
	if err := ValidateMember(id, info, lim); err != nil {
		return nil, err
	}
	info = compact(info)
	rm, err := r.acquire(channel)
	if err != nil {
		return nil, err
	}
	rm.mu.Lock()
	defer rm.mu.Unlock()
	if m := rm.members[id]; m != nil {
		if m.leaving != nil {
			if m.leaving.Stop() {
				r.release(channel, rm) // the pending leave's use
			} // else its func is waiting for rm.mu: it will see it was undone
			m.leaving = nil
		}
		m.conns++
		return &Membership{r: r, rm: rm, channel: channel, id: id}, nil
	}
	if r.shared == nil && len(rm.members) >= lim.members() {
		r.release(channel, rm)
		return nil, fmt.Errorf("%w: %s has %d members, the limit", ErrFull, channel, len(rm.members))
	}
	m := &member{info: info, max: lim.members(), conns: 1}
	if err := r.add(ctx, rm, channel, id, m); err != nil {
		r.release(channel, rm)
		return nil, err
	}
	rm.members[id] = m
	return &Membership{r: r, rm: rm, channel: channel, id: id}, nil
}

// add makes the member present and publishes its arrival (shared: when
// no node held it); rm.mu is held.
func (r *Registry) add(ctx context.Context, rm *room, channel, id string, m *member) error {
	data, _ := json.Marshal(struct {
		ID   string          `json:"id"`
		Info json.RawMessage `json:"info,omitempty"`
	}{id, m.info})
	ev := &broker.Message{Channel: channel, Event: EventAdded, Kind: broker.KindJSON, Data: data}
	if r.shared == nil {
		return r.emit(ctx, rm, channel, EventAdded, id, ev)
	}
	added, err := r.shared.PresenceAdd(ctx, channel, id, m.info, m.max, ev)
	if err != nil {
		return err
	}
	if added {
		r.emitted(rm, channel, EventAdded, id, ev)
	}
	if r.Hold != nil {
		// This node holds the member now: recorded with a context of
		// its own (a client gone mid-join must not cancel it), and
		// tried again while the member is there when it fails (its
		// member_added is told then); the join stands either way.
		hctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := r.Hold(hctx, "", channel, id, true)
		cancel()
		if err != nil {
			r.retryHold(channel, id, time.Second)
		}
	}
	return nil
}

// retryHold records this node's hold of member id again after wait,
// doubling up to a minute, while the member is there.
func (r *Registry) retryHold(channel, id string, wait time.Duration) {
	r.later(channel, wait, func(rm *room) {
		if rm.members[id] == nil {
			return // gone: its release has nothing to end
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if r.Hold(ctx, "", channel, id, true) != nil {
			r.retryHold(channel, id, min(2*wait, time.Minute))
		}
	})
}

// later runs f with channel's room held and locked, after wait, unless
// the registry has closed by then.
func (r *Registry) later(channel string, wait time.Duration, f func(rm *room)) {
	time.AfterFunc(wait, func() {
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			return
		}
		rm := r.acquireLocked(channel)
		r.mu.Unlock()
		defer r.release(channel, rm)
		rm.mu.Lock()
		defer rm.mu.Unlock()
		f(rm)
	})
}

func compact(info json.RawMessage) json.RawMessage {
	if len(info) == 0 || string(info) == "null" {
		return nil
	}
	var b bytes.Buffer
	if json.Compact(&b, info) != nil {
		return info
	}
	return b.Bytes()
}

// emit publishes a presence event of member id; rm.mu is held.
func (r *Registry) emit(ctx context.Context, rm *room, channel, event, id string, ev *broker.Message) error {
	m, err := r.publish(ctx, ev)
	if err != nil {
		return err
	}
	r.emitted(rm, channel, event, id, m)
	return nil
}

// emitted records a presence event that was published; rm.mu is held.
func (r *Registry) emitted(rm *room, channel, event, id string, m *broker.Message) {
	rm.last = m.Position()
	if r.Changed != nil && (r.shared == nil || r.Hold == nil) {
		r.Changed(channel, event, id)
	}
}

// Members lists channel's members by id, with the position of the latest
// presence event they reflect (later events change the list).
func (r *Registry) Members(ctx context.Context, channel string) ([]Member, broker.Position, error) {
	r.mu.Lock()
	rm := r.rooms[channel]
	r.mu.Unlock()
	if r.shared != nil {
		list, last, err := r.shared.PresenceList(ctx, channel)
		if err != nil {
			return nil, last, err
		}
		out := make([]Member, len(list))
		for i, m := range list {
			out[i] = Member{ID: m.ID, Info: m.Info, Nodes: m.Nodes}
		}
		if rm != nil {
			rm.mu.Lock()
			for i := range out {
				if m := rm.members[out[i].ID]; m != nil {
					out[i].Connections = m.conns
				}
			}
			rm.mu.Unlock()
		}
		return out, last, nil
	}
	if rm == nil {
		return nil, broker.Position{}, nil
	}
	rm.mu.Lock()
	defer rm.mu.Unlock()
	out := make([]Member, 0, len(rm.members))
	for id, m := range rm.members {
		out = append(out, Member{ID: id, Info: m.info, Connections: m.conns})
	}
	slices.SortFunc(out, func(a, b Member) int { return strings.Compare(a.ID, b.ID) })
	return out, rm.last, nil
}

// Count returns how many members channel has.
func (r *Registry) Count(ctx context.Context, channel string) (int, error) {
	if r.shared != nil {
		return r.shared.PresenceCount(ctx, channel)
	}
	r.mu.Lock()
	rm := r.rooms[channel]
	r.mu.Unlock()
	if rm == nil {
		return 0, nil
	}
	rm.mu.Lock()
	defer rm.mu.Unlock()
	return len(rm.members), nil
}

// Close publishes the departures still waiting out their grace period
// (the process is ending: nobody can come back to it) and refuses new
// joins. Shared presence: a departure that could not be told to the log
// is ended by the log's Close, or by the other nodes once this one is
// silent.
func (r *Registry) Close() {
	r.mu.Lock()
	r.closed = true
	rooms := make(map[string]*room, len(r.rooms))
	for ch, rm := range r.rooms {
		rooms[ch] = rm
	}
	r.mu.Unlock()
	for ch, rm := range rooms {
		rm.mu.Lock()
		for id, m := range rm.members {
			if m.leaving != nil && m.leaving.Stop() {
				r.remove(rm, ch, id)
				r.release(ch, rm)
			}
		}
		rm.mu.Unlock()
	}
}

// Membership is one connection's hold on a member.
type Membership struct {
	r       *Registry
	rm      *room
	channel string
	id      string
	once    sync.Once
}

// ID returns the member's id.
func (ms *Membership) ID() string { return ms.id }

// Channel returns the channel.
func (ms *Membership) Channel() string { return ms.channel }

// Leave drops the connection's hold. When it was the member's last
// connection the member leaves: at once when now is true (the client
// said so), otherwise after the grace period unless it joins again.
func (ms *Membership) Leave(now bool) {
	ms.once.Do(func() { ms.leave(now) })
}

func (ms *Membership) leave(now bool) {
	r, rm := ms.r, ms.rm
	rm.mu.Lock()
	defer rm.mu.Unlock()
	m := rm.members[ms.id]
	if m == nil {
		r.release(ms.channel, rm)
		return
	}
	m.conns--
	if m.conns > 0 {
		r.release(ms.channel, rm)
		return
	}
	if now || r.grace <= 0 {
		r.remove(rm, ms.channel, ms.id)
		r.release(ms.channel, rm)
		return
	}
	// The use is kept by the pending leave.
	var t *time.Timer
	t = time.AfterFunc(r.grace, func() {
		rm.mu.Lock()
		defer rm.mu.Unlock()
		// Unless a join undid this departure (while this func waited for
		// the lock, or the member left again since), the member goes.
		if m := rm.members[ms.id]; m != nil && m.leaving == t && m.conns == 0 {
			r.remove(rm, ms.channel, ms.id)
		}
		r.release(ms.channel, rm) // the pending leave's use
	})
	m.leaving = t
}

// remove deletes a member and publishes its departure; rm.mu is held.
func (r *Registry) remove(rm *room, channel, id string) {
	delete(rm.members, id)
	if r.shared != nil {
		if r.unhold(rm, "", channel, id) != nil {
			r.retryRemove(channel, id, time.Second)
		}
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// A failed publish (the broker is closing or unreachable) loses the
	// event, not the departure: the list is already right.
	_ = r.emit(ctx, rm, channel, EventRemoved, id, removedEvent(channel, id))
}

// unhold ends node's hold of member id in the shared log (node "": this
// node) and records the departure when it was the last hold; rm.mu is
// held.
func (r *Registry) unhold(rm *room, node, channel, id string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ev := removedEvent(channel, id)
	removed, err := r.shared.PresenceRemove(ctx, node, channel, id, ev)
	if err == nil && removed {
		r.emitted(rm, channel, EventRemoved, id, ev)
	}
	if err == nil && r.Hold != nil {
		// After the log: a node that dies in between leaves its hold
		// recorded, and a survivor tells its end.
		err = r.Hold(ctx, node, channel, id, false)
	}
	return err
}

func removedEvent(channel, id string) *broker.Message {
	data, _ := json.Marshal(struct {
		ID string `json:"id"`
	}{id})
	return &broker.Message{Channel: channel, Event: EventRemoved, Kind: broker.KindJSON, Data: data}
}

// retryRemove tries again, after wait and then less and less often, to
// tell the shared log of a departure it could not be told of (Redis was
// unreachable), unless the member came back in the meantime. It gives up
// when the registry closes: then the log's Close, or the other nodes once
// this one is gone, end the hold.
func (r *Registry) retryRemove(channel, id string, wait time.Duration) {
	r.later(channel, wait, func(rm *room) {
		if rm.members[id] != nil {
			return // back: the hold is right again
		}
		if r.unhold(rm, "", channel, id) != nil {
			r.retryRemove(channel, id, min(2*wait, time.Minute))
		}
	})
}

// lost ends a dead node's hold of a member (shared presence): the log
// calls it for each; the member leaves if no other node holds it.
func (r *Registry) lost(node, channel, id string) error {
	r.mu.Lock()
	rm := r.acquireLocked(channel) // also once closed: the log's own Close reaps
	r.mu.Unlock()
	defer r.release(channel, rm)
	rm.mu.Lock()
	defer rm.mu.Unlock()
	return r.unhold(rm, node, channel, id)
}

// rejoin adds this node's members to the shared log again, after the
// other nodes took the node for dead and removed them.
func (r *Registry) rejoin() {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	rooms := make(map[string]*room, len(r.rooms))
	for ch := range r.rooms {
		rooms[ch] = r.acquireLocked(ch)
	}
	r.mu.Unlock()
	for ch, rm := range rooms {
		rm.mu.Lock()
		for id, m := range rm.members {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			// A member that no longer fits (others joined meanwhile)
			// stays listed on this node only; nothing better to do.
			_ = r.add(ctx, rm, ch, id, m)
			cancel()
		}
		rm.mu.Unlock()
		r.release(ch, rm)
	}
}
