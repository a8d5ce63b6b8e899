package broker

import "context"

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
	// Track records (open true) or forgets one of this node's
	// connections (kind "c") or subscriptions ("s") under key, with
	// info, so that the other nodes can end it once this node is gone.
	Track(ctx context.Context, kind, key, info string, open bool) error
	// WatchLifecycle is called once, before use: lost is called, on one
	// surviving node and once, for each occupancy hold (kind "o", key
	// the event channel; the caller ends it with Occupy(node, …, false,
	// …)), subscription ("s") and connection ("c") of a node found dead;
	// rejoin when this node finds it was taken for dead and must hold its
	// channels again.
	WatchLifecycle(lost func(node, kind, key, info string) error, rejoin func())
}
