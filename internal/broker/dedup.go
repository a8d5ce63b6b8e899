package broker

import (
	"errors"
	"time"
)

// DedupWindow is how long a channel remembers a publish's idempotency key:
// a publish of the same key to the same channel within it is not stored
// again, and is answered with the first one's position.
const DedupWindow = 2 * time.Minute

// maxDedupKeys bounds the keys one channel remembers; past it the oldest
// are forgotten before their window ends.
const maxDedupKeys = 100_000

// MaxKeyLen bounds an idempotency key.
const MaxKeyLen = 128

// ErrInvalidKey is returned for an idempotency key that is empty, too long
// or not printable ASCII.
var ErrInvalidKey = errors.New("invalid idempotency key")

// MaxStoredKeyLen bounds a key as a log stores it: the publisher's scope
// (see door) and the key.
const MaxStoredKeyLen = 255

// ValidateKey checks an idempotency key: 1 to MaxKeyLen printable ASCII
// characters, no spaces.
func ValidateKey(k string) error {
	if !keyOK(k, MaxKeyLen) {
		return ErrInvalidKey
	}
	return nil
}

// StoredKeyOK reports whether k can be a key as a log stores it: the
// characters of a key, at most MaxStoredKeyLen bytes.
func StoredKeyOK(k string) bool { return keyOK(k, MaxStoredKeyLen) }

func keyOK(k string, max int) bool {
	if k == "" || len(k) > max {
		return false
	}
	for i := 0; i < len(k); i++ {
		if k[i] <= ' ' || k[i] > '~' {
			return false
		}
	}
	return true
}

// dedup is one channel's idempotency keys of the last DedupWindow, each
// with the position and time of the message that first carried it.
// Guarded by its channel's lock.
type dedup struct {
	seen  map[string]dedupHit
	order []dedupRef // oldest first from head
	head  int
}

type dedupHit struct {
	seq uint64
	at  time.Time
}

type dedupRef struct {
	key string
	at  time.Time
}

// lookup returns the message a key was first published with, if it was
// within the window before now.
func (d *dedup) lookup(key string, now time.Time) (dedupHit, bool) {
	d.prune(now)
	h, ok := d.seen[key]
	if ok && h.at.Before(now.Add(-DedupWindow)) {
		return h, false // behind a key whose time the clock stepped back over
	}
	return h, ok
}

// add remembers that key was first published as seq at at.
func (d *dedup) add(key string, seq uint64, at time.Time) {
	d.prune(at)
	if _, ok := d.seen[key]; ok {
		return
	}
	if len(d.seen) >= maxDedupKeys {
		d.drop()
	}
	if d.seen == nil {
		d.seen = map[string]dedupHit{}
	}
	d.seen[key] = dedupHit{seq: seq, at: at}
	d.order = append(d.order, dedupRef{key: key, at: at})
}

// prune forgets the keys older than the window.
func (d *dedup) prune(now time.Time) {
	cutoff := now.Add(-DedupWindow)
	for d.head < len(d.order) && d.order[d.head].at.Before(cutoff) {
		d.drop()
	}
}

// drop forgets the oldest key, and compacts the queue once most of it is
// spent.
func (d *dedup) drop() {
	r := d.order[d.head]
	d.order[d.head] = dedupRef{}
	d.head++
	if h, ok := d.seen[r.key]; ok && h.at.Equal(r.at) {
		delete(d.seen, r.key)
	}
	switch {
	case d.head == len(d.order):
		// Nothing left: give the memory back (a map never shrinks).
		d.seen, d.order, d.head = nil, nil, 0
	case d.head > 1024 && d.head*2 > len(d.order):
		d.order = append([]dedupRef(nil), d.order[d.head:]...)
		d.head = 0
	}
}
