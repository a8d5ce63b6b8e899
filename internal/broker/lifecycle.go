package broker

import (
	"context"
	"errors"
	"time"
)

// LifecycleLog is what nodes sharing a log (Redis) share so that the
// lifecycle events (internal/events) are decided once for the cluster and
// a dead node's are told by the others, once.
type LifecycleLog interface {
	// Occupy records that node ("": this node) holds (hold true) or no
	// longer holds subscribers of the channel whose events go to
	// evChannel. When that makes the number of holding nodes go from 0 to
	// 1 or from 1 to 0, ev (channel_occupied or channel_vacated) is
	// appended to evChannel in the same step, its place filled in, and
	// Occupy reports true.
	Occupy(ctx context.Context, node, evChannel string, hold bool, ev *Message) (bool, error)
	// StartRecord starts recording (open) or ending a connection (kind
	// "c") or subscription ("s") of node ("": this node) under key, with
	// info, appending ev (on its event channel, ev.Channel) in the same
	// step, so that the others can end it once node is gone and nothing
	// is recorded without its event or told without its record. Ending
	// one that is not recorded (another node ended it) appends nothing.
	// wait reports whether ev was appended (its place filled in).
	StartRecord(ctx context.Context, node, kind, key, info string, open bool, ev *Message) (wait func() (bool, error), err error)
	// Member records that node ("": this node) holds (hold true) or no
	// longer holds the presence member id of the channel whose events go
	// to evChannel (info kept for whoever ends it should node die). When
	// that makes the number of nodes holding the member go from 0 to 1 or
	// from 1 to 0, ev (member_added or member_removed) is appended to
	// evChannel in the same step, its place filled in, and Member reports
	// true. Holding again what node holds, or releasing what it does not
	// hold, changes nothing.
	Member(ctx context.Context, node, evChannel, id, info string, hold bool, ev *Message) (bool, error)
	// WatchLifecycle is called once, before use: lost is called, on a
	// surviving node, for each occupancy hold (kind "o", key the event
	// channel; the caller ends it with Occupy(node, …, false, …)),
	// presence member ("m", key the member id, info as recorded; the
	// caller ends it with Member(node, …, false, …)), subscription ("s")
	// and connection ("c", key and info as recorded; the caller ends them
	// with StartRecord(node, …, false, …), which tells each once) of a
	// node found dead; its members come first, the subscriptions of a
	// channel before its hold. rejoin is called when this node
	// finds it was taken for dead and must hold its channels and record
	// its connections and subscriptions again.
	WatchLifecycle(lost func(node, kind, key, info string) error, rejoin func())
}

// ErrLeaseLost is returned by DeliveryLog.SavePositions when the caller
// no longer holds the lease.
var ErrLeaseLost = errors.New("lease lost: another node holds it")

// DeliveryLog is what nodes sharing a log (Redis) share so that one of
// them, holding a lease, delivers a consumer's events (a webhook URL's)
// from the event channels, and another resumes where it stopped should it
// die: the lease, and the positions up to which the events were
// delivered.
type DeliveryLog interface {
	// LeaseTTL is how long a lease lasts when its holder stops renewing
	// it (the nodes' --node-timeout).
	LeaseTTL() time.Duration
	// TakeLease takes the lease name for token when nobody holds it, or
	// renews it when token holds it, and reports whether token holds it.
	TakeLease(ctx context.Context, name, token string) (bool, error)
	// LeaseLeft is how long token still holds name (0: it does not).
	LeaseLeft(ctx context.Context, name, token string) (time.Duration, error)
	// DropLease gives the lease up, if token holds it.
	DropLease(ctx context.Context, name, token string) error
	// Positions are name's stored positions, one per channel that still
	// exists (those of channels gone are dropped), and the time from
	// which the channels they do not name are read (set to since the
	// first time).
	Positions(ctx context.Context, name string, since time.Time) (Cursor, time.Time, error)
	// SavePositions stores positions of name, if token holds its lease
	// (ErrLeaseLost otherwise).
	SavePositions(ctx context.Context, name, token string, c Cursor) error
}
