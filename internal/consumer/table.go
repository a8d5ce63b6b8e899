package consumer

// table holds a consumer's entries by seq. Seqs are handed out in order
// and mostly acknowledged in order, so the entries live in a window of
// slots indexed by seq: a lookup is an index, not a hash, and neighbours
// are neighbours in memory (a map of a few hundred thousand entries was
// the largest cost of a busy consumer, most of it cache misses).
//
// An entry that stays while many after it are acknowledged (a message
// nacked with a long delay, say) would keep the window growing; once the
// window is much wider than what it holds, the oldest entries move to a
// map of stragglers, so memory stays proportional to the entries kept.
type table struct {
	base  uint64   // the seq of slots[0]
	slots []*entry // seqs base .. base+len(slots)-1
	head  int      // slots before head are empty (not yet cut off)
	old   map[uint64]*entry
	n     int
}

func (t *table) len() int { return t.n }

func (t *table) get(seq uint64) *entry {
	if seq >= t.base {
		if i := seq - t.base; i < uint64(len(t.slots)) {
			return t.slots[i]
		}
		return nil
	}
	return t.old[seq]
}

// put stores e at e.seq: a new entry's seq is past every seq stored, a
// loaded one may come in any order.
func (t *table) put(e *entry) {
	if t.get(e.seq) == nil {
		t.n++
	}
	if len(t.slots) == 0 && t.base <= e.seq && len(t.old) == 0 {
		t.base, t.head = e.seq, 0
		t.slots = t.slots[:0]
	}
	switch {
	case e.seq < t.base:
		if t.old == nil {
			t.old = map[uint64]*entry{}
		}
		t.old[e.seq] = e
		return
	case e.seq-t.base >= uint64(len(t.slots)):
		if gap := e.seq - t.base - uint64(len(t.slots)); gap > uint64(4*(t.n-len(t.old))+4096) {
			// Far past the window (a store's entries with a long run
			// acknowledged between them): what the window holds goes to
			// the stragglers and a new window starts at e.
			t.each(func(o *entry) {
				if o != e && o.seq >= t.base {
					if t.old == nil {
						t.old = map[uint64]*entry{}
					}
					t.old[o.seq] = o
				}
			})
			t.base, t.head = e.seq, 0
			t.slots = append(t.slots[:0:0], e)
			return
		}
		for uint64(len(t.slots)) < e.seq-t.base {
			t.slots = append(t.slots, nil)
		}
		t.slots = append(t.slots, e)
	default:
		t.slots[e.seq-t.base] = e
	}
	t.shrink()
}

func (t *table) del(seq uint64) {
	if seq < t.base {
		if _, ok := t.old[seq]; ok {
			delete(t.old, seq)
			t.n--
		}
		return
	}
	i := seq - t.base
	if i >= uint64(len(t.slots)) || t.slots[i] == nil {
		return
	}
	t.slots[i] = nil
	t.n--
	for t.head < len(t.slots) && t.slots[t.head] == nil {
		t.head++
	}
	if t.head == len(t.slots) { // empty window: start again at its end
		t.base += uint64(len(t.slots))
		t.slots, t.head = t.slots[:0], 0
		if cap(t.slots) > 8192 {
			t.slots = nil // a burst is over: give its memory back
		}
		return
	}
	t.shrink()
}

// shrink cuts the empty slots off the window's front once they are half
// of it, and moves the oldest entries to the stragglers while the window
// is more than four times wider than the entries in it.
func (t *table) shrink() {
	if t.head > 1024 && t.head*2 > len(t.slots) {
		t.cut()
	}
	inWindow := t.n - len(t.old)
	for len(t.slots)-t.head > 4*inWindow+4096 {
		// Move entries from the front until the window is half empty
		// at most.
		for t.head < len(t.slots) && (len(t.slots)-t.head) > 2*(t.n-len(t.old))+1024 {
			if e := t.slots[t.head]; e != nil {
				if t.old == nil {
					t.old = map[uint64]*entry{}
				}
				t.old[e.seq] = e
				t.slots[t.head] = nil
			}
			t.head++
		}
		for t.head < len(t.slots) && t.slots[t.head] == nil {
			t.head++
		}
		t.cut()
		inWindow = t.n - len(t.old)
	}
}

// cut drops the empty slots before head, and gives back the memory of a
// window that was once much wider.
func (t *table) cut() {
	if live := len(t.slots) - t.head; cap(t.slots) > 4*live+4096 {
		t.slots = append(make([]*entry, 0, 2*live+1024), t.slots[t.head:]...)
	} else {
		n := copy(t.slots, t.slots[t.head:])
		clear(t.slots[n:])
		t.slots = t.slots[:n]
	}
	t.base += uint64(t.head)
	t.head = 0
}

// each calls fn for every entry, in no particular order.
func (t *table) each(fn func(*entry)) {
	for _, e := range t.slots[t.head:] {
		if e != nil {
			fn(e)
		}
	}
	for _, e := range t.old {
		fn(e)
	}
}
