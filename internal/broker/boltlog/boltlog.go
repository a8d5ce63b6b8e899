// Package boltlog is the durable log: every channel's messages in one
// bbolt file, with a memory cache (broker.Cache) serving reads. An
// acknowledged publish is on disk (with Sync "always", fsync'd).
package boltlog

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
	bolt "go.etcd.io/bbolt"
)

// Options configure the bbolt log.
type Options struct {
	// MemoryOptions configure retention and the cache (and, for
	// OpenBroker, the hub's queues).
	broker.MemoryOptions
	// Dir holds the store (one bbolt file, store.db).
	Dir string
	// Sync is "always" (a publish is acknowledged once fsync'd; concurrent
	// publishes share one fsync) or "none" (acknowledged once written to
	// the operating system: survives a crash of pushctl, not of the
	// machine).
	Sync string
	// SyncDelay lets a batch gather for up to this long before it is
	// written (0: write as soon as the previous write finished).
	SyncDelay time.Duration
	// MemoryOnly, when set, names channels kept in memory only (a
	// namespace's durable: false): their messages are never written to
	// disk, in order with the others all the same, and after a restart
	// they start a new epoch (a resuming subscriber is told of the gap).
	MemoryOnly func(channel string) bool
}

const (
	storeFile = "store.db"
	maxBatch  = 4096
	// queueLen bounds the operations waiting for the writer; publishers
	// wait beyond it (a slow disk).
	queueLen     = 65536
	formatV1     = 1
	formatV2     = 2 // records may carry an idempotency key
	recordHeader = 1 + 8 + 2
	keyFlag      = 0x80 // in a record's kind byte: a key follows the event
)

// Layout: meta/format; chanmeta/<channel> = [1][seq:8][epoch];
// channels/<channel>/<seq:8> = [kind:1][unix nanos:8][event length:2][event][data],
// or, with keyFlag in the kind byte (format 2),
// [kind|keyFlag:1][unix nanos:8][event length:2][event][key length:1][key][data].
// A format 1 file is marked 2 when opened (pushctl before 2 refuses it).
var (
	bucketChannels = []byte("channels")
	bucketChanMeta = []byte("chanmeta")
	bucketMeta     = []byte("meta")
	keyFormat      = []byte("format")
)

// store is the durable log: bbolt on disk, with a memory cache for reads. One goroutine, the writer, assigns positions, writes batches
// (group commit) and then commits them to memory and the sink, in order,
// so an acknowledged message is always on disk and a subscriber never sees
// one that is not.
type store struct {
	b     *broker.Cache
	db    *bolt.DB
	opts  Options
	queue chan *op
	done  chan struct{}
	trim  map[string]uint64 // channel -> delete disk keys below this seq (writer only)

	mu     sync.RWMutex // submitters hold it shared; close takes it
	closed bool
}

type opKind int

const (
	opPublish opKind = iota
	opDelete
	opTrim
	opCreate
)

type op struct {
	kind opKind
	m    *broker.Message
	name string
	res  chan opResult
}

type opResult struct {
	m   *broker.Message
	n   int
	err error
}

// OpenBroker opens (or creates) the store in o.Dir, loads what it retains
// and returns a running broker. The directory is locked for this process.
func OpenBroker(o Options) (*broker.Core, error) {
	hub := broker.NewHub()
	l, err := Open(o, hub)
	if err != nil {
		return nil, err
	}
	return broker.New(hub, l, broker.CoreOptions{QueueSize: o.QueueSize, QueueBytes: o.QueueBytes}), nil
}

// Open opens (or creates) the store in o.Dir as a Log handing commits to
// sink.
func Open(o Options, sink broker.Sink) (broker.Log, error) {
	switch o.Sync {
	case "", "always":
		o.Sync = "always"
	case "none":
	default:
		return nil, fmt.Errorf("sync policy %q: want always or none", o.Sync)
	}
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("data directory %s: %w", o.Dir, err)
	}
	probe := filepath.Join(o.Dir, ".write-test")
	if err := os.WriteFile(probe, nil, 0o600); err != nil {
		return nil, fmt.Errorf("data directory %s is not writable: %w", o.Dir, err)
	}
	os.Remove(probe)
	path := filepath.Join(o.Dir, storeFile)
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, NoSync: o.Sync == "none", NoFreelistSync: true})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("open store %s: another pushctl holds it", path)
		}
		return nil, fmt.Errorf("open store %s: %w (if the file is damaged, move it away; nothing is deleted automatically)", path, err)
	}
	s := &store{db: db, opts: o, queue: make(chan *op, queueLen), done: make(chan struct{}), trim: map[string]uint64{}}
	s.b = broker.NewCache(o.MemoryOptions, sink, broker.CacheHooks{Created: s.created, Evicted: s.requestTrim})
	if err := s.load(); err != nil {
		db.Close()
		return nil, err
	}
	go s.writer()
	s.b.Start()
	return s, nil
}

// load checks the format and restores every channel's epoch, sequence and
// retained messages.
func (s *store) load() error {
	return s.db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		if v := meta.Get(keyFormat); v == nil || (len(v) == 1 && v[0] == formatV1) {
			meta.Put(keyFormat, []byte{formatV2})
		} else if len(v) != 1 || v[0] != formatV2 {
			return fmt.Errorf("store format %v is not one this pushctl reads", v)
		}
		chans, err := tx.CreateBucketIfNotExists(bucketChannels)
		if err != nil {
			return err
		}
		cmeta, err := tx.CreateBucketIfNotExists(bucketChanMeta)
		if err != nil {
			return err
		}
		// Channels now kept in memory only leave the disk: what is there
		// would come back at the next start behind what memory went on to.
		var dropped [][]byte
		err = cmeta.ForEach(func(name, mv []byte) error {
			if s.memoryOnly(string(name)) {
				dropped = append(dropped, append([]byte(nil), name...))
				return nil
			}
			if len(mv) < 10 || mv[0] != 1 {
				return fmt.Errorf("store: channel %q has damaged metadata", name)
			}
			ch := name // the bucket's key, valid in this transaction
			epoch, seq := string(mv[9:]), binary.BigEndian.Uint64(mv[1:9])
			cb := chans.Bucket(name)
			if cb == nil {
				if cb, err = chans.CreateBucket(name); err != nil {
					return err
				}
			}
			if err := broker.ValidateChannel(string(ch)); err != nil {
				return fmt.Errorf("store: %w", err)
			}
			// Newest first, up to the history size, then in order.
			size := s.b.RetentionOf(string(ch)).HistorySize
			var msgs []*broker.Message
			c := cb.Cursor()
			for k, v := c.Last(); k != nil && len(msgs) < size; k, v = c.Prev() {
				if len(k) != 8 {
					return fmt.Errorf("store: damaged key in channel %q", name)
				}
				m, err := decodeRecord(string(ch), epoch, k, v)
				if err != nil {
					return err
				}
				msgs = append(msgs, m)
			}
			sort.Slice(msgs, func(i, j int) bool { return msgs[i].Seq < msgs[j].Seq })
			if len(msgs) > 0 && msgs[len(msgs)-1].Seq != seq {
				return fmt.Errorf("store: channel %q ends at %d but says %d; the file is damaged", name, msgs[len(msgs)-1].Seq, seq)
			}
			for i, m := range msgs {
				if i > 0 && m.Seq != msgs[i-1].Seq+1 {
					return fmt.Errorf("store: channel %q misses messages between %d and %d; the file is damaged", name, msgs[i-1].Seq, m.Seq)
				}
			}
			if oldest, ok := s.b.Restore(string(ch), epoch, seq, msgs); ok {
				s.trim[string(ch)] = oldest
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, name := range dropped {
			if err := cmeta.Delete(name); err != nil {
				return err
			}
			if err := chans.DeleteBucket(name); err != nil && !errors.Is(err, bolt.ErrBucketNotFound) {
				return err
			}
		}
		return nil
	})
}

func decodeRecord(name, epoch string, k, v []byte) (*broker.Message, error) {
	if len(v) < recordHeader {
		return nil, fmt.Errorf("store: damaged record in channel %q", name)
	}
	el := int(binary.BigEndian.Uint16(v[9:11]))
	if len(v) < recordHeader+el {
		return nil, fmt.Errorf("store: damaged record in channel %q", name)
	}
	m := &broker.Message{
		Channel: name, Epoch: epoch, Seq: binary.BigEndian.Uint64(k),
		Kind: broker.Kind(v[0] &^ keyFlag), Time: time.Unix(0, int64(binary.BigEndian.Uint64(v[1:9]))).UTC(),
		Event: string(v[11 : 11+el]),
	}
	rest := v[11+el:]
	if v[0]&keyFlag != 0 {
		if len(rest) < 1 || len(rest) < 1+int(rest[0]) {
			return nil, fmt.Errorf("store: damaged record in channel %q", name)
		}
		m.Key, rest = string(rest[1:1+int(rest[0])]), rest[1+int(rest[0]):]
		if !broker.StoredKeyOK(m.Key) {
			return nil, fmt.Errorf("store: damaged record in channel %q", name)
		}
	}
	if m.Kind > broker.KindBinary {
		return nil, fmt.Errorf("store: damaged record in channel %q", name)
	}
	m.Data = append([]byte(nil), rest...)
	return m, nil
}

func encodeRecord(m *broker.Message) []byte {
	kl := 0
	if broker.StoredKeyOK(m.Key) { // (the door validates keys; one that is not is not stored)
		kl = 1 + len(m.Key)
	}
	v := make([]byte, recordHeader+len(m.Event)+kl+len(m.Data))
	v[0] = byte(m.Kind)
	binary.BigEndian.PutUint64(v[1:9], uint64(m.Time.UnixNano()))
	binary.BigEndian.PutUint16(v[9:11], uint16(len(m.Event)))
	n := 11 + copy(v[11:], m.Event)
	if kl > 0 {
		v[0] |= keyFlag
		v[n] = byte(len(m.Key))
		n += 1 + copy(v[n+1:], m.Key)
	}
	copy(v[n:], m.Data)
	return v
}

func seqKey(seq uint64) []byte {
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], seq)
	return k[:]
}

func channelMeta(epoch string, seq uint64) []byte {
	v := make([]byte, 9+len(epoch))
	v[0] = 1
	binary.BigEndian.PutUint64(v[1:9], seq)
	copy(v[9:], epoch)
	return v
}

// submit queues an op; the queue bounds memory when the disk is slow
// (publishers then wait).
func (s *store) submit(ctx context.Context, o *op) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return broker.ErrClosed
	}
	select {
	case s.queue <- o:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Append implements Log: it queues m for the writer and returns the wait
// for its outcome. Once queued the write happens whatever the caller does.
func (s *store) Append(ctx context.Context, m *broker.Message) (func() (int, error), error) {
	if len(m.Event) > 0xffff {
		return nil, fmt.Errorf("event name too long")
	}
	o := &op{kind: opPublish, m: m, res: make(chan opResult, 1)}
	if err := s.submit(ctx, o); err != nil {
		return nil, err
	}
	return func() (int, error) {
		r := <-o.res
		return r.n, r.err
	}, nil
}

// Read implements Log.
func (s *store) Read(ctx context.Context, name string, req broker.ReadRequest) (broker.ReadResult, error) {
	return s.b.Read(ctx, name, req)
}

// Info implements Log.
func (s *store) Info(ctx context.Context, name string) (broker.ChannelInfo, error) {
	return s.b.Info(ctx, name)
}

// List implements Log.
func (s *store) List(ctx context.Context) ([]broker.ChannelInfo, error) { return s.b.List(ctx) }

// ChannelCount says how many channels there are.
func (s *store) ChannelCount() int { return s.b.ChannelCount() }

// Delete implements Log.
func (s *store) Delete(ctx context.Context, name string) error {
	o := &op{kind: opDelete, name: name, res: make(chan opResult, 1)}
	if err := s.submit(ctx, o); err != nil {
		return err
	}
	return (<-o.res).err
}

// created persists a channel made by a subscriber, so its epoch survives
// a restart; best effort, without waiting.
func (s *store) created(name string) {
	if !s.memoryOnly(name) {
		s.try(&op{kind: opCreate, name: name})
	}
}

// memoryOnly reports whether channel is never written to disk.
func (s *store) memoryOnly(channel string) bool {
	return s.opts.MemoryOnly != nil && s.opts.MemoryOnly(channel)
}

// requestTrim asks the writer to delete what memory no longer retains.
func (s *store) requestTrim() { s.try(&op{kind: opTrim}) }

// try queues o unless the queue is full or closed.
func (s *store) try(o *op) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return
	}
	select {
	case s.queue <- o:
	default:
	}
}

// Close implements Log: it writes what is queued, then closes the file.
func (s *store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.queue)
	s.mu.Unlock()
	<-s.done
	err := s.db.Close()
	s.b.Close()
	return err
}

// writer is the only goroutine that writes: it takes what is queued,
// writes it in one transaction and commits it to memory in order.
func (s *store) writer() {
	defer close(s.done)
	defer func() {
		// Trims are applied with the next write; at shutdown there is none,
		// so the disk is made to keep what memory keeps now.
		if len(s.trim) > 0 {
			s.db.Update(func(tx *bolt.Tx) error { return s.trimTx(tx.Bucket(bucketChannels)) })
		}
	}()
	for first := range s.queue {
		if d := s.opts.SyncDelay; d > 0 {
			time.Sleep(d) // let a batch gather, as configured
		}
		batch := []*op{first}
	gather:
		for len(batch) < maxBatch {
			select {
			case o, ok := <-s.queue:
				if !ok {
					break gather
				}
				batch = append(batch, o)
			default:
				break gather
			}
		}
		// Publishes run in groups between other ops, keeping order.
		for len(batch) > 0 {
			i := 0
			for i < len(batch) && batch[i].kind == opPublish {
				i++
			}
			if i > 0 {
				s.writePublishes(batch[:i])
				batch = batch[i:]
				continue
			}
			s.writeOther(batch[0])
			batch = batch[1:]
		}
	}
}

type pending struct {
	ch    *broker.CachedChannel
	epoch string
	seq   uint64
}

func (s *store) writePublishes(ops []*op) {
	b := s.b
	now := b.Options().Now().UTC()
	next := map[string]*pending{}
	type keyOf struct{ channel, key string }
	var batchKeys map[keyOf]*broker.Message
	var copies []*op
	for _, o := range ops {
		p := next[o.m.Channel]
		if p == nil {
			ch, err := b.Channel(o.m.Channel, true)
			if err != nil {
				o.res <- opResult{err: err}
				o.kind = -1
				continue
			}
			epoch, seq, _, _ := ch.State()
			p = &pending{ch: ch, epoch: epoch, seq: seq}
			next[o.m.Channel] = p
		}
		if o.m.Key != "" {
			// A key seen before, in this batch or within the window:
			// answered with the first message's position, not stored.
			// A copy of one in this batch shares its outcome.
			k := keyOf{o.m.Channel, o.m.Key}
			if first := batchKeys[k]; first != nil {
				o.m.Epoch, o.m.Seq, o.m.Time, o.m.Duplicate = first.Epoch, first.Seq, first.Time, true
				o.kind = -1 // neither written nor committed
				copies = append(copies, o)
				continue
			}
			if p.ch.Duplicate(o.m, now) {
				o.kind = -1
				o.res <- opResult{m: o.m}
				continue
			}
			if batchKeys == nil {
				batchKeys = map[keyOf]*broker.Message{}
			}
			batchKeys[k] = o.m
		}
		p.seq++
		o.m.Epoch, o.m.Seq, o.m.Time = p.epoch, p.seq, now
	}
	onDisk := false
	for name := range next {
		if !s.memoryOnly(name) {
			onDisk = true
			break
		}
	}
	var err error
	if onDisk || len(s.trim) > 0 {
		err = s.db.Update(func(tx *bolt.Tx) error {
			chans, cmeta := tx.Bucket(bucketChannels), tx.Bucket(bucketChanMeta)
			for name, p := range next {
				if s.memoryOnly(name) {
					continue
				}
				if _, err := chans.CreateBucketIfNotExists([]byte(name)); err != nil {
					return err
				}
				if err := cmeta.Put([]byte(name), channelMeta(p.epoch, p.seq)); err != nil {
					return err
				}
			}
			for _, o := range ops {
				if o.kind != opPublish || s.memoryOnly(o.m.Channel) {
					continue
				}
				cb := chans.Bucket([]byte(o.m.Channel))
				if err := cb.Put(seqKey(o.m.Seq), encodeRecord(o.m)); err != nil {
					return err
				}
			}
			return s.trimTx(chans)
		})
	}
	if err != nil {
		err = fmt.Errorf("%w: %v", broker.ErrStore, err)
		for _, o := range ops {
			if o.kind == opPublish {
				o.res <- opResult{err: err}
			}
		}
		for _, o := range copies {
			o.res <- opResult{err: err}
		}
		return
	}
	defer func() { // after the messages they copy are committed
		for _, o := range copies {
			o.res <- opResult{m: o.m}
		}
	}()
	for _, o := range ops {
		if o.kind != opPublish {
			continue
		}
		n, oldest := next[o.m.Channel].ch.Commit(o.m)
		if !s.memoryOnly(o.m.Channel) {
			s.trim[o.m.Channel] = oldest
		}
		o.res <- opResult{m: o.m, n: n}
	}
}

// trimTx deletes messages memory no longer retains. Called in a write tx
// by the writer.
func (s *store) trimTx(chans *bolt.Bucket) error {
	for name, below := range s.trim {
		if cb := chans.Bucket([]byte(name)); cb != nil {
			c := cb.Cursor()
			for k, _ := c.First(); k != nil && binary.BigEndian.Uint64(k) < below; k, _ = c.First() {
				if err := c.Delete(); err != nil {
					return err
				}
			}
		}
		delete(s.trim, name)
	}
	return nil
}

func (s *store) writeOther(o *op) {
	b := s.b
	var err error
	switch o.kind {
	case opDelete:
		err = s.db.Update(func(tx *bolt.Tx) error {
			if err := tx.Bucket(bucketChanMeta).Delete([]byte(o.name)); err != nil {
				return err
			}
			err := tx.Bucket(bucketChannels).DeleteBucket([]byte(o.name))
			if errors.Is(err, bolt.ErrBucketNotFound) {
				return nil
			}
			return err
		})
		if err == nil {
			delete(s.trim, o.name)
			err = b.Delete(context.Background(), o.name)
		}
	case opCreate:
		ch, cerr := b.Channel(o.name, false)
		if cerr != nil || ch == nil {
			return
		}
		epoch, seq, deleted, persisted := ch.State()
		if deleted || persisted {
			return
		}
		err = s.db.Update(func(tx *bolt.Tx) error {
			if tx.Bucket(bucketChanMeta).Get([]byte(o.name)) != nil {
				return nil
			}
			if _, err := tx.Bucket(bucketChannels).CreateBucketIfNotExists([]byte(o.name)); err != nil {
				return err
			}
			return tx.Bucket(bucketChanMeta).Put([]byte(o.name), channelMeta(epoch, seq))
		})
		if err == nil {
			ch.SetPersisted()
		}
	case opTrim:
		for name, oldest := range b.Oldest() {
			if !s.memoryOnly(name) {
				s.trim[name] = oldest
			}
		}
		err = s.db.Update(func(tx *bolt.Tx) error { return s.trimTx(tx.Bucket(bucketChannels)) })
	}
	if o.res != nil {
		if err != nil && !errors.Is(err, broker.ErrNotFound) {
			err = fmt.Errorf("%w: %v", broker.ErrStore, err)
		}
		o.res <- opResult{err: err}
	}
}
