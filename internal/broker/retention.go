package broker

import "time"

// Defaults of every log and of the hub's queues, written once here.
const (
	// DefaultHistorySize is how many messages a channel retains when
	// Retention.HistorySize is 0.
	DefaultHistorySize = 1000
	// DefaultHistoryAge is how long a message is retained when
	// Retention.HistoryAge is 0.
	DefaultHistoryAge = time.Hour
	// DefaultQueueSize bounds a subscriber's live queue when no size is
	// given.
	DefaultQueueSize = 65536
)

// Retention says what each channel's history keeps, for every log (memory,
// bbolt, Redis).
type Retention struct {
	// HistorySize is how many messages each channel retains (0:
	// DefaultHistorySize; negative keeps none).
	HistorySize int
	// HistoryAge drops retained messages older than this (0:
	// DefaultHistoryAge; negative keeps them until HistorySize pushes
	// them out).
	HistoryAge time.Duration
	// HistoryBytes bounds the retained data of each channel (0: no bound).
	HistoryBytes int64
}

// WithDefaults returns r with the defaults filled in: HistorySize is then
// 0 (keep none) or positive, HistoryAge non-zero.
func (r Retention) WithDefaults() Retention {
	if r.HistorySize == 0 {
		r.HistorySize = DefaultHistorySize
	}
	if r.HistorySize < 0 {
		r.HistorySize = 0
	}
	if r.HistoryAge == 0 {
		r.HistoryAge = DefaultHistoryAge
	}
	return r
}

// RetentionFor gives the retention of the channels it knows (ok true):
// the rules of a channel's namespace. Other channels keep the log's own.
type RetentionFor func(channel string) (r Retention, ok bool)

// of returns channel's retention: what f says, its zero fields filled
// from def (the log's own, defaults filled in).
func (f RetentionFor) of(channel string, def Retention) Retention {
	if f == nil {
		return def
	}
	r, ok := f(channel)
	if !ok {
		return def
	}
	if r.HistorySize == 0 {
		r.HistorySize = def.HistorySize
		if r.HistorySize == 0 {
			r.HistorySize = -1 // def keeps none
		}
	}
	if r.HistoryAge == 0 {
		r.HistoryAge = def.HistoryAge
	}
	if r.HistoryBytes == 0 {
		r.HistoryBytes = def.HistoryBytes
	}
	return r.WithDefaults()
}

// Of returns channel's retention by f, or def: the log's own, its
// defaults already filled in (WithDefaults), as they are in what Of
// returns. (Filled in twice, a HistorySize of 0, "keep none", would
// become the default.)
func (f RetentionFor) Of(channel string, def Retention) Retention {
	return f.of(channel, def)
}
