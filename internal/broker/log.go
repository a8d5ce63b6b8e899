package broker

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"
)

// ErrUnavailable is wrapped by errors of a log that cannot be reached (a
// Redis server down): nothing was stored; try again later or elsewhere.
var ErrUnavailable = errors.New("broker storage unavailable")

// ErrOutcomeUnknown is wrapped by errors of an append whose outcome is
// not known: it was sent to the storage (Redis), which did not answer in
// time or whose connection broke, so the message may or may not have
// been stored (never twice). A subscriber, or the channel's history,
// tells which.
var ErrOutcomeUnknown = errors.New("publish outcome unknown")

// Log is where channels' history lives and what fixes each message's
// place: the in-memory ring (memory), bbolt (--data-dir) or Redis.
// Whatever it commits it hands to its Sink, in each channel's sequence
// order, before the publish is acknowledged (Redis: as the message comes
// back over Pub/Sub, on every node that follows the channel).
type Log interface {
	// Append assigns m's Epoch, Seq and Time and stores it. Appends of
	// one caller keep their order. The returned wait gives the number of
	// subscribers the message was handed to once it is stored.
	Append(ctx context.Context, m *Message) (wait func() (int, error), err error)
	// Read describes a channel for a new subscriber: what to replay and
	// where the stream starts. With req.Create an unknown channel is
	// created (its epoch fixed) instead of reported as not found.
	Read(ctx context.Context, channel string, req ReadRequest) (ReadResult, error)
	// Info describes one channel's history, or returns ErrNotFound.
	// Subscribers is left for the caller to fill in.
	Info(ctx context.Context, channel string) (ChannelInfo, error)
	// List describes every channel.
	List(ctx context.Context) ([]ChannelInfo, error)
	// Delete drops a channel's history (ErrNotFound if there is none) and
	// tells the Sink of every node, so subscriptions naming it end.
	Delete(ctx context.Context, channel string) error
	// Close stops the log; appends already accepted are finished first.
	Close() error
}

// Sink receives what a Log commits: the Hub.
type Sink interface {
	Deliver(m *Message) int
	Gap(g Gap)
	Deleted(channel string)
	Subscribers(channel string) int
	Total() int
}

// ReadRequest says where a new subscriber of one channel starts.
type ReadRequest struct {
	// From, when Resume is set, resumes after this position.
	From   Position
	Resume bool
	// Last and Since are as in SubscribeOptions.
	Last  int
	Since time.Time
	// Create makes an unknown channel exist (fixing its epoch).
	Create bool
}

// ReadResult is what a subscriber of one channel is replayed.
type ReadResult struct {
	// Events are a gap notice (when the resume position is no longer
	// retained) followed by the messages to replay, oldest first.
	Events []Event
	// Start is the position the stream continues after.
	Start Position
	// Head is the channel's newest position when it was read: live
	// messages up to it are covered by the replay.
	Head Position
}

// Follower is implemented by logs that route live messages between nodes
// (Redis): a node receives only the channels and patterns it follows.
// Follow returns once messages of name published from then on will reach
// the Sink. Count, called once a (not internal) subscription is live,
// counts it as a subscriber of names on every node before it returns;
// Unfollow undoes Follow, and the count when counted.
type Follower interface {
	Follow(ctx context.Context, name string) error
	Count(ctx context.Context, names []string) error
	Unfollow(name string, counted bool)
}

// ClusterView is implemented by logs shared by several nodes: subscriber
// counts and waits cover every node.
type ClusterView interface {
	Subscribers(ctx context.Context, channel string) (int, error)
	WaitSubscribers(ctx context.Context, channel string, n int) error
	TotalSubscribers() int
	Nodes() int
}

// PresenceLog is implemented by logs shared by several nodes (Redis):
// who is on a channel lives in the log, so a member held on two nodes is
// one member, and the members of a node that died are taken out by the
// others. A node holds a member (once, however many of its connections
// do); the first hold anywhere adds the member and the last one's end
// removes it, each appending its event in the same step, so the list and
// the events agree on every node. Calls for one channel must not overlap
// on one node.
type PresenceLog interface {
	// PresenceAdd records that this node holds member id of channel.
	// When no node held it, the member is added with info and ev is
	// appended (its place filled in): added is true. ErrPresenceFull
	// when the member is new and the channel has max members.
	PresenceAdd(ctx context.Context, channel, id string, info []byte, max int, ev *Message) (added bool, err error)
	// PresenceRemove ends node's hold of member id (node "": this node);
	// when it was the last hold the member is removed and ev appended.
	PresenceRemove(ctx context.Context, node, channel, id string, ev *Message) (removed bool, err error)
	// PresenceList returns channel's members, by id, with the position of
	// the latest presence event they reflect.
	PresenceList(ctx context.Context, channel string) ([]PresenceMember, Position, error)
	// PresenceCount returns how many members channel has.
	PresenceCount(ctx context.Context, channel string) (int, error)
	// WatchPresence is called once, before use: lost is called for each
	// member a dead node held (the caller ends the hold with
	// PresenceRemove(node, …)), and rejoin when this node was taken for
	// dead (it was silent too long) and must add its members again.
	WatchPresence(lost func(node, channel, id string) error, rejoin func())
}

// PresenceMember is one member as a PresenceLog lists it.
type PresenceMember struct {
	ID    string
	Info  []byte
	Nodes int // how many nodes hold it
}

// ErrPresenceFull is returned when a channel has as many members as it
// may.
var ErrPresenceFull = errors.New("presence full")

// Health is implemented by logs that can be degraded: Health returns nil
// when all is well, or why not.
type Health interface {
	Health() error
}

// PlanReplay computes, from a channel's retained messages (oldest first,
// at(i) for i < n, the newest at head), what req replays and where the
// stream starts.
func PlanReplay(name string, head Position, n int, at func(int) *Message, req ReadRequest) (ReadResult, error) {
	res := ReadResult{Head: head}
	oldest := head.Seq - uint64(n) + 1
	start := n
	if req.Resume {
		pos := req.From
		switch {
		case pos.Epoch == head.Epoch && pos.Seq > head.Seq:
			return res, errBeyond(pos, name, head)
		case pos.Epoch == head.Epoch && pos.Seq == head.Seq:
			res.Start = head
			return res, nil
		case pos.Epoch == head.Epoch && pos.Seq+1 >= oldest:
			start = int(pos.Seq + 1 - oldest)
		default:
			res.Events = append(res.Events, Event{Gap: &Gap{
				Channel: name,
				From:    pos,
				To:      Position{Epoch: head.Epoch, Seq: oldest - 1},
			}})
			start = 0
		}
		for i := start; i < n; i++ {
			res.Events = append(res.Events, Event{Msg: at(i)})
		}
		res.Start = pos
		return res, nil
	}
	switch {
	case req.Last < 0:
		start = 0
	case req.Last > 0:
		start = max(0, n-req.Last)
	}
	if !req.Since.IsZero() {
		start = min(start, sort.Search(n, func(i int) bool { return at(i).Time.After(req.Since) }))
	}
	for i := start; i < n; i++ {
		res.Events = append(res.Events, Event{Msg: at(i)})
	}
	res.Start = Position{Epoch: head.Epoch, Seq: oldest - 1 + uint64(start)}
	return res, nil
}

func errBeyond(pos Position, name string, head Position) error {
	return fmt.Errorf("%w: %s is beyond the newest message of %s (%s)", ErrInvalidPosition, pos, name, head)
}
