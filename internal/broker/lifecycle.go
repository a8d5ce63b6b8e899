package broker

import "context"

// Tracked is one change of what a node keeps for the others to end
// (LifecycleLog.Track): kind "c" a connection, "s" a subscription, under
// key, with info.
type Tracked struct {
	Kind, Key, Info string
	Open            bool
}

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
	// Track records (Open) or forgets this node's connections (kind "c")
	// and subscriptions ("s"), so that the other nodes can end them once
	// this node is gone.
	Track(ctx context.Context, changes []Tracked) error
	// WatchLifecycle is called once, before use: lost is called, on one
	// surviving node and once, for each occupancy hold (kind "o", key
	// the event channel; the caller ends it with Occupy(node, …, false,
	// …)), subscription ("s") and connection ("c") of a node found dead;
	// rejoin when this node finds it was taken for dead and must hold its
	// channels again.
	WatchLifecycle(lost func(node, kind, key, info string) error, rejoin func())
}
