package redislog

import "time"

// SetAfterCounts has f called, on Redis Cluster, each time the node read
// a batch's counts and before it sends the batch (f may block it), with
// how the batch will be published ("S": sharded Pub/Sub only, "SP": for
// pattern followers too). nil removes it.
func (l *Log) SetAfterCounts(f func(mode string, channels []string)) {
	if f == nil {
		l.afterCounts.Store(nil)
		return
	}
	l.afterCounts.Store(&f)
}

// SOnlyPending is how many of the node's script calls went out on sharded
// Pub/Sub only and are not settled yet (no read of the routes after them).
func (l *Log) SOnlyPending() int { return int(l.sonlyN.Load()) }

// SetSOnlyIdle sets how long the idle publisher waits before it reads the
// routes to settle them (0: the default).
func (l *Log) SetSOnlyIdle(d time.Duration) { l.sonlyIdle.Store(int64(d)) }

// SOnlyReads is how many times the idle publisher read the routes.
func (l *Log) SOnlyReads() int64 { return l.sonlyReads.Load() }

// SetSOnlyResend turns the sending again of batches sent on sharded
// Pub/Sub only on or off (on by default), to test what receivers do
// without it.
func (l *Log) SetSOnlyResend(on bool) { l.sonlyOff.Store(!on) }
