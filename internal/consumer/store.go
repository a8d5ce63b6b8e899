package consumer

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/pushctl/pushctl/internal/broker"
)

// Store keeps consumers across restarts. A Manager saves to it in batches
// from one goroutine.
type Store interface {
	// Loaded is what the store held when it was opened.
	Loaded() []Saved
	// Save writes changes in one commit: all or nothing.
	Save(changes []Change) error
	// Drop removes a consumer and everything kept for it.
	Drop(name string) error
	Close() error
}

// Meta is a consumer's settings, position and counters.
type Meta struct {
	Config   Config        `json:"config"`
	Created  time.Time     `json:"created"`
	Next     uint64        `json:"next"`
	Cursor   broker.Cursor `json:"cursor"`
	Counters Counters      `json:"counters"`
}

// SavedEntry is one message (or gap) kept for a consumer.
type SavedEntry struct {
	Seq   uint64
	Count int
	Msg   *broker.Message
	Gap   *broker.Gap
	Lost  uint64
}

// Saved is a consumer as a store holds it.
type Saved struct {
	Name    string
	Meta    Meta
	Entries []SavedEntry
	// Done holds, per range of entries (by its first seq), the entries
	// removed whose records are still in the store: a bitmap of
	// rangeSpan bits, bit i for seq start+i.
	Done map[uint64][]byte
}

// Change is what changed of one consumer since the last save: its meta,
// the entries to write (new, or delivered again), the ranges whose
// removed entries changed (their whole bitmap) and the ranges to drop
// (every entry of them removed, and no new one can come).
type Change struct {
	Name string
	Meta Meta
	Puts []SavedEntry
	Done []RangeDone
	Drop []uint64
}

// RangeDone is the bitmap of removed entries of the range beginning at
// Start.
type RangeDone struct {
	Start uint64
	Bits  []byte
}

// rangeSpan is how many seqs one range holds. An acknowledgement sets
// a bit in its range's bitmap (one write per range and save, however many
// acks) instead of deleting a record; a range whose entries are all done
// is dropped at once. A range with an entry that stays keeps the records
// of its others on disk (at most rangeSpan records) until it goes.
const rangeSpan = 4096

func rangeStart(seq uint64) uint64 { return seq &^ (rangeSpan - 1) }

// seqRange is a range as a consumer keeps it in memory: how many of its
// entries are kept, and the bitmap of those removed.
type seqRange struct {
	live int
	done []byte
}

// doneBit reports whether bits marks seq (of the range starting at start)
// done.
func doneBit(bits []byte, start, seq uint64) bool {
	i := seq - start
	return bits[i/8]&(1<<(i%8)) != 0
}

// StoreFile is the bbolt file of consumers in a --data-dir.
const StoreFile = "consumers.db"

// Layout (format 2): consumers/<name> = Meta as JSON;
// entries/<name>/r<start:8>/<seq:8> = an entry record, and
// entries/<name>/r<start:8>/done = the range's bitmap of removed entries;
// meta/format = 2. Format 1 (pushctl before ranges) kept each record
// at entries/<name>/<seq:8> and deleted it when removed: opening such a
// file moves its records into ranges (once, in the opening transaction).
// A file of a newer format is refused.
var (
	bucketConsumers = []byte("consumers")
	bucketEntries   = []byte("entries")
	bucketMeta      = []byte("meta")
	keyFormat       = []byte("format")
	keyDone         = []byte("done")
)

const storeFormat = 2

func rangeKey(start uint64) []byte {
	var k [9]byte
	k[0] = 'r'
	binary.BigEndian.PutUint64(k[1:], start)
	return k[:]
}

// boltStore keeps consumers in bbolt.
type boltStore struct {
	db     *bolt.DB
	loaded []Saved
}

// OpenBolt opens (or creates) the consumers' file in dir and loads it.
// noSync skips fsync (serve --sync none).
func OpenBolt(dir string, noSync bool) (Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("data directory %s: %w", dir, err)
	}
	path := filepath.Join(dir, StoreFile)
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, NoSync: noSync, NoFreelistSync: true, FreelistType: bolt.FreelistMapType})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("open consumers %s: another pushctl holds it", path)
		}
		return nil, fmt.Errorf("open consumers %s: %w (if the file is damaged, move it away; nothing is deleted automatically)", path, err)
	}
	s := &boltStore{db: db}
	if err := s.load(); err != nil {
		db.Close()
		return nil, fmt.Errorf("open consumers %s: %w", path, err)
	}
	return s, nil
}

func (s *boltStore) load() error {
	return s.db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		if v := meta.Get(keyFormat); v != nil && (len(v) != 1 || v[0] != storeFormat) {
			return fmt.Errorf("consumers file format %v is not one this pushctl reads (a newer pushctl wrote it)", v)
		}
		if err := meta.Put(keyFormat, []byte{storeFormat}); err != nil {
			return err
		}
		cb, err := tx.CreateBucketIfNotExists(bucketConsumers)
		if err != nil {
			return err
		}
		eb, err := tx.CreateBucketIfNotExists(bucketEntries)
		if err != nil {
			return err
		}
		return cb.ForEach(func(k, v []byte) error {
			sv := Saved{Name: string(k)}
			if err := json.Unmarshal(v, &sv.Meta); err != nil {
				return fmt.Errorf("consumer %q: damaged settings: %v", k, err)
			}
			if err := ValidateName(sv.Name); err != nil {
				return fmt.Errorf("consumer %q: %v", k, err)
			}
			if err := sv.Meta.Config.Validate(); err != nil {
				return fmt.Errorf("consumer %q: %v", k, err)
			}
			if b := eb.Bucket(k); b != nil {
				if err := loadEntries(b, &sv); err != nil {
					return fmt.Errorf("consumer %q: %v", sv.Name, err)
				}
			}
			s.loaded = append(s.loaded, sv)
			return nil
		})
	})
}

// loadEntries reads a consumer's entries (b is entries/<name>), moving
// format 1 records into their ranges.
func loadEntries(b *bolt.Bucket, sv *Saved) error {
	var old []SavedEntry
	var ranges [][]byte
	err := b.ForEach(func(k, v []byte) error {
		switch {
		case v != nil && len(k) == 8: // format 1
			e, err := decodeEntry(k, v)
			if err != nil {
				return err
			}
			old = append(old, e)
		case v == nil && len(k) == 9 && k[0] == 'r':
			ranges = append(ranges, append([]byte(nil), k...))
		default:
			return errDamaged
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, k := range ranges {
		start := binary.BigEndian.Uint64(k[1:])
		rb := b.Bucket(k)
		if start != rangeStart(start) {
			return errDamaged
		}
		var done []byte
		if d := rb.Get(keyDone); d != nil {
			if len(d) != rangeSpan/8 {
				return errDamaged
			}
			done = append([]byte(nil), d...)
			if sv.Done == nil {
				sv.Done = map[uint64][]byte{}
			}
			sv.Done[start] = done
		}
		err := rb.ForEach(func(k, v []byte) error {
			if bytes.Equal(k, keyDone) {
				return nil
			}
			e, err := decodeEntry(k, v)
			if err != nil {
				return err
			}
			if rangeStart(e.Seq) != start {
				return errDamaged
			}
			if done == nil || !doneBit(done, start, e.Seq) {
				sv.Entries = append(sv.Entries, e)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	for _, e := range old {
		rb, err := b.CreateBucketIfNotExists(rangeKey(rangeStart(e.Seq)))
		if err != nil {
			return err
		}
		if err := rb.Put(seqKey(e.Seq), encodeEntry(e)); err != nil {
			return err
		}
		if err := b.Delete(seqKey(e.Seq)); err != nil {
			return err
		}
		sv.Entries = append(sv.Entries, e)
	}
	return nil
}

func (s *boltStore) Loaded() []Saved { return s.loaded }

func (s *boltStore) Save(changes []Change) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		cb := tx.Bucket(bucketConsumers)
		eb := tx.Bucket(bucketEntries)
		for _, ch := range changes {
			meta, err := json.Marshal(ch.Meta)
			if err != nil {
				return err
			}
			if err := cb.Put([]byte(ch.Name), meta); err != nil {
				return err
			}
			b, err := eb.CreateBucketIfNotExists([]byte(ch.Name))
			if err != nil {
				return err
			}
			for _, start := range ch.Drop {
				if err := b.DeleteBucket(rangeKey(start)); err != nil && !errors.Is(err, bolt.ErrBucketNotFound) {
					return err
				}
			}
			// rb is the bucket of the range beginning at rstart (1: none
			// yet, no range begins there).
			var rb *bolt.Bucket
			rstart := uint64(1)
			bucket := func(start uint64) (err error) {
				if start != rstart {
					rb, err = b.CreateBucketIfNotExists(rangeKey(start))
					rstart = start
				}
				return err
			}
			for _, e := range ch.Puts {
				if err := bucket(rangeStart(e.Seq)); err != nil {
					return err
				}
				if err := rb.Put(seqKey(e.Seq), encodeEntry(e)); err != nil {
					return err
				}
			}
			for _, d := range ch.Done {
				if err := bucket(d.Start); err != nil {
					return err
				}
				if err := rb.Put(keyDone, d.Bits); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

func (s *boltStore) Drop(name string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketConsumers).Delete([]byte(name)); err != nil {
			return err
		}
		err := tx.Bucket(bucketEntries).DeleteBucket([]byte(name))
		if errors.Is(err, bolt.ErrBucketNotFound) {
			return nil
		}
		return err
	})
}

func (s *boltStore) Close() error { return s.db.Close() }

func seqKey(seq uint64) []byte {
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], seq)
	return k[:]
}

// An entry's record: a version byte, the delivery count (uvarint), then a
// message (kind 'm': channel, epoch, seq, event, data kind, time, data) or
// a gap (kind 'g': channel, from, to, lost), strings length-prefixed.
const entryV1 = 1

func encodeEntry(e SavedEntry) []byte {
	b := []byte{entryV1}
	b = binary.AppendUvarint(b, uint64(e.Count))
	str := func(s string) { b = binary.AppendUvarint(b, uint64(len(s))); b = append(b, s...) }
	if e.Gap != nil {
		b = append(b, 'g')
		str(e.Gap.Channel)
		str(e.Gap.From.Epoch)
		b = binary.AppendUvarint(b, e.Gap.From.Seq)
		str(e.Gap.To.Epoch)
		b = binary.AppendUvarint(b, e.Gap.To.Seq)
		return binary.AppendUvarint(b, e.Lost)
	}
	m := e.Msg
	b = append(b, 'm')
	str(m.Channel)
	str(m.Epoch)
	b = binary.AppendUvarint(b, m.Seq)
	str(m.Event)
	b = append(b, byte(m.Kind))
	b = binary.AppendVarint(b, m.Time.UnixNano())
	str(string(m.Data))
	return b
}

var errDamaged = errors.New("damaged entry record")

func decodeEntry(k, v []byte) (SavedEntry, error) {
	if len(k) != 8 || len(v) < 3 || v[0] != entryV1 {
		return SavedEntry{}, errDamaged
	}
	e := SavedEntry{Seq: binary.BigEndian.Uint64(k)}
	p := v[1:]
	bad := false
	uv := func() uint64 {
		x, n := binary.Uvarint(p)
		if n <= 0 {
			bad = true
			return 0
		}
		p = p[n:]
		return x
	}
	str := func() string {
		n := uv()
		if bad || n > uint64(len(p)) {
			bad = true
			return ""
		}
		s := string(p[:n])
		p = p[n:]
		return s
	}
	byt := func() byte {
		if len(p) == 0 {
			bad = true
			return 0
		}
		c := p[0]
		p = p[1:]
		return c
	}
	e.Count = int(uv())
	switch byt() {
	case 'g':
		g := &broker.Gap{Channel: str()}
		g.From.Epoch = str()
		g.From.Seq = uv()
		g.To.Epoch = str()
		g.To.Seq = uv()
		e.Lost = uv()
		e.Gap = g
	case 'm':
		m := &broker.Message{Channel: str(), Epoch: str()}
		m.Seq = uv()
		m.Event = str()
		m.Kind = broker.Kind(byt())
		t, n := binary.Varint(p)
		if n <= 0 {
			bad = true
		} else {
			p = p[n:]
		}
		m.Time = time.Unix(0, t).UTC()
		m.Data = []byte(str())
		e.Msg = m
	default:
		bad = true
	}
	if bad || len(p) != 0 || e.Count < 0 {
		return SavedEntry{}, errDamaged
	}
	return e, nil
}
