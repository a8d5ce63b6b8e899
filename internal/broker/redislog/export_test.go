package redislog

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
