// Package presence keeps who is on a channel: members with an id and some
// info, joined by one or more connections. A member's arrival and
// departure are published on the channel itself as the events
// member_added and member_removed, so every subscriber (pushctl or Pusher,
// on this node or another) sees them in order with the channel's messages.
//
// A connection that drops does not make its member leave at once: the
// departure waits a grace period, so a quick reconnect is not a leave.
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
	ErrFull        = errors.New("presence full")
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
	// Connections is how many connections hold the membership (on this
	// node).
	Connections int `json:"connections"`
}

// Publisher publishes a presence event on a channel and returns the
// stored message.
type Publisher func(ctx context.Context, m *broker.Message) (*broker.Message, error)

// Registry is the presence of every channel of this node.
type Registry struct {
	publish Publisher
	grace   time.Duration
	// Changed, when set before use, is told each member's arrival and
	// departure (event EventAdded or EventRemoved), in order per channel.
	Changed func(channel, event, id string)

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
	conns   int
	leaving *time.Timer // the debounced departure, while conns == 0
}

// New returns a registry that publishes presence events with publish and
// lets a member whose last connection dropped stay for grace.
func New(publish Publisher, grace time.Duration) *Registry {
	return &Registry{publish: publish, grace: grace, rooms: map[string]*room{}}
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
	rm := r.rooms[channel]
	if rm == nil {
		rm = &room{members: map[string]*member{}}
		r.rooms[channel] = rm
	}
	rm.refs++
	return rm, nil
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
	if len(rm.members) >= lim.members() {
		r.release(channel, rm)
		return nil, fmt.Errorf("%w: %s has %d members, the limit", ErrFull, channel, len(rm.members))
	}
	data, _ := json.Marshal(struct {
		ID   string          `json:"id"`
		Info json.RawMessage `json:"info,omitempty"`
	}{id, info})
	if err := r.emit(ctx, rm, channel, EventAdded, id, data); err != nil {
		r.release(channel, rm)
		return nil, err
	}
	rm.members[id] = &member{info: info, conns: 1}
	return &Membership{r: r, rm: rm, channel: channel, id: id}, nil
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
func (r *Registry) emit(ctx context.Context, rm *room, channel, event, id string, data []byte) error {
	m, err := r.publish(ctx, &broker.Message{Channel: channel, Event: event, Kind: broker.KindJSON, Data: data})
	if err != nil {
		return err
	}
	rm.last = m.Position()
	if r.Changed != nil {
		r.Changed(channel, event, id)
	}
	return nil
}

// Members lists channel's members by id, with the position of the latest
// presence event they reflect (later events change the list).
func (r *Registry) Members(channel string) ([]Member, broker.Position) {
	r.mu.Lock()
	rm := r.rooms[channel]
	r.mu.Unlock()
	if rm == nil {
		return nil, broker.Position{}
	}
	rm.mu.Lock()
	defer rm.mu.Unlock()
	out := make([]Member, 0, len(rm.members))
	for id, m := range rm.members {
		out = append(out, Member{ID: id, Info: m.info, Connections: m.conns})
	}
	slices.SortFunc(out, func(a, b Member) int { return strings.Compare(a.ID, b.ID) })
	return out, rm.last
}

// Count returns how many members channel has.
func (r *Registry) Count(channel string) int {
	r.mu.Lock()
	rm := r.rooms[channel]
	r.mu.Unlock()
	if rm == nil {
		return 0
	}
	rm.mu.Lock()
	defer rm.mu.Unlock()
	return len(rm.members)
}

// Channels lists the channels that have members.
func (r *Registry) Channels() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, 0, len(r.rooms))
	for ch := range r.rooms {
		out = append(out, ch)
	}
	slices.Sort(out)
	return out
}

// Close publishes the departures still waiting out their grace period
// (the process is ending: nobody can come back to it) and refuses new
// joins.
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
	data, _ := json.Marshal(struct {
		ID string `json:"id"`
	}{id})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// A failed publish (the broker is closing or unreachable) loses the
	// event, not the departure: the list is already right.
	_ = r.emit(ctx, rm, channel, EventRemoved, id, data)
}
