package consumer

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/broker/boltlog"
)

// pendingSeqs lists the messages (channel seqs) a consumer keeps.
func pendingSeqs(c *Consumer) []uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []uint64
	c.entries.each(func(e *entry) {
		if e.msg != nil {
			out = append(out, e.msg.Seq)
		}
	})
	slices.Sort(out)
	return out
}

// rangesOnDisk lists the range buckets of consumer name in dir's file.
func rangesOnDisk(t *testing.T, dir, name string) []uint64 {
	t.Helper()
	db, err := bolt.Open(filepath.Join(dir, StoreFile), 0o600, &bolt.Options{Timeout: time.Second, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var out []uint64
	db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketEntries).Bucket([]byte(name))
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			if v == nil && len(k) == 9 {
				out = append(out, binary.BigEndian.Uint64(k[1:]))
			}
			return nil
		})
	})
	return out
}

// Acknowledged messages stay acknowledged across restarts, however they
// fall in the store's ranges: a range whose messages are all done goes
// from the file, a range with a few left keeps the others marked done,
// and a second restart (its bitmaps read back and written again) loses
// nothing and brings back nothing. The channel keeps 100 messages only:
// what the consumer holds comes from its own store.
func TestRangesSurviveRestarts(t *testing.T) {
	dir := t.TempDir()
	const total = 3*rangeSpan + 500 // seqs 1..12788: four ranges
	openAll := func() (broker.Broker, *Manager, *Consumer) {
		b, err := boltlog.OpenBroker(boltlog.Options{Dir: dir, Sync: "none",
			MemoryOptions: broker.MemoryOptions{Retention: broker.Retention{HistorySize: 100}}})
		if err != nil {
			t.Fatal(err)
		}
		st, err := OpenBolt(dir, true)
		if err != nil {
			t.Fatal(err)
		}
		m := NewManager(b, Options{Store: st})
		c, err := m.Open("w", Config{Filter: "jobs", MaxPending: 100000, MaxInflight: 100000}, true)
		if err != nil {
			t.Fatal(err)
		}
		return b, m, c
	}
	b, m, c := openAll()
	for i := 1; i <= total; i++ {
		if _, _, err := b.Publish(context.Background(), &broker.Message{Channel: "jobs", Data: []byte(fmt.Sprint(i))}); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.Wait(ctx, func(i Info) bool { return i.Pending == total }); err != nil {
		t.Fatalf("kept %d of %d", c.Info().Pending, total)
	}
	if err := c.Synced(ctx); err != nil {
		t.Fatal(err)
	}
	// Deliver everything; acknowledge all of range 4096 (seqs 4096-8191),
	// all of range 0 but 7, every third of range 8192 and none of the
	// last.
	var acks []string
	want := map[uint64]bool{}
	for got := 0; got < total; {
		ds, err := c.Fetch(ctx, 1000, time.Second)
		if err != nil || len(ds) == 0 {
			t.Fatalf("fetch after %d: %v", got, err)
		}
		for _, d := range ds {
			s := d.Msg.Seq
			if s < 2*rangeSpan && s != 7 || s >= 2*rangeSpan && s < 3*rangeSpan && s%3 == 0 {
				acks = append(acks, d.ID)
			} else {
				want[s] = true
			}
		}
		got += len(ds)
	}
	if n, err := c.Ack(acks); err != nil || n != len(acks) {
		t.Fatalf("acked %d of %d: %v", n, len(acks), err)
	}
	if err := c.Synced(ctx); err != nil {
		t.Fatal(err)
	}
	m.Close()
	b.Close()
	if r := rangesOnDisk(t, dir, "w"); fmt.Sprint(r) != fmt.Sprint([]uint64{0, 2 * rangeSpan, 3 * rangeSpan}) {
		t.Errorf("ranges on disk %v: the one all acknowledged should be gone", r)
	}

	check := func(c *Consumer) {
		t.Helper()
		got := pendingSeqs(c)
		var w []uint64
		for s := range want {
			w = append(w, s)
		}
		slices.Sort(w)
		if !slices.Equal(got, w) {
			t.Fatalf("after restart %d pending (first %v), want %d (first %v)", len(got), got[:min(5, len(got))], len(w), w[:min(5, len(w))])
		}
	}
	b, m, c = openAll()
	check(c)
	// Acknowledge 7 (range 0 goes) and one more of range 8192; restart
	// again.
	ds, err := c.Fetch(ctx, 1000, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	acks = acks[:0]
	for _, d := range ds {
		if s := d.Msg.Seq; s == 7 || s == 2*rangeSpan+2 {
			acks = append(acks, d.ID)
			delete(want, s)
		}
	}
	if n, _ := c.Ack(acks); n != 2 {
		t.Fatalf("acked %d of 2 (%v)", n, acks)
	}
	if err := c.Synced(ctx); err != nil {
		t.Fatal(err)
	}
	m.Close()
	b.Close()
	if r := rangesOnDisk(t, dir, "w"); fmt.Sprint(r) != fmt.Sprint([]uint64{2 * rangeSpan, 3 * rangeSpan}) {
		t.Errorf("ranges on disk %v: range 0, all acknowledged, should be gone", r)
	}
	b, m, c = openAll()
	defer b.Close()
	defer m.Close()
	check(c)
}

// writeFormat1 writes a consumers file as pushctl before ranges did:
// each entry its own record under entries/<name>, no format mark.
func writeFormat1(t *testing.T, dir string, name string, meta Meta, es []SavedEntry) {
	t.Helper()
	db, err := bolt.Open(filepath.Join(dir, StoreFile), 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		cb, _ := tx.CreateBucketIfNotExists(bucketConsumers)
		eb, _ := tx.CreateBucketIfNotExists(bucketEntries)
		mj, _ := json.Marshal(meta)
		if err := cb.Put([]byte(name), mj); err != nil {
			return err
		}
		b, err := eb.CreateBucketIfNotExists([]byte(name))
		if err != nil {
			return err
		}
		for _, e := range es {
			if err := b.Put(seqKey(e.Seq), encodeEntry(e)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A consumers file of the format before ranges opens: its entries are
// moved into ranges once, with their delivery counts, and what is then
// acknowledged stays so across another restart.
func TestFormat1FileOpens(t *testing.T) {
	dir := t.TempDir()
	msg := func(seq uint64) *broker.Message {
		return &broker.Message{Channel: "jobs", Epoch: "e1", Seq: seq, Event: "message", Kind: broker.KindText,
			Time: time.Unix(1700000000, 0).UTC(), Data: []byte(fmt.Sprint("m", seq))}
	}
	var es []SavedEntry
	for _, s := range []uint64{3, 4, 4100, 4101, 9000} {
		es = append(es, SavedEntry{Seq: s, Count: int(s % 2), Msg: msg(s)})
	}
	es = append(es, SavedEntry{Seq: 9001, Count: 0, Gap: &broker.Gap{Channel: "jobs", From: broker.Position{Epoch: "e1", Seq: 9}, To: broker.Position{Epoch: "e1", Seq: 12}}, Lost: 3})
	meta := Meta{Config: Config{Filter: "jobs"}.WithDefaults(), Created: time.Unix(1700000000, 0).UTC(), Next: 9002,
		Cursor: broker.Cursor{"jobs": {Epoch: "e1", Seq: 12}}}
	writeFormat1(t, dir, "old", meta, es)

	st, err := OpenBolt(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	loaded := st.Loaded()
	if len(loaded) != 1 || loaded[0].Name != "old" || len(loaded[0].Entries) != len(es) {
		t.Fatalf("loaded %+v", loaded)
	}
	got := map[uint64]SavedEntry{}
	for _, e := range loaded[0].Entries {
		got[e.Seq] = e
	}
	for _, e := range es {
		g := got[e.Seq]
		if fmt.Sprint(g.Count, g.Msg, g.Gap, g.Lost) != fmt.Sprint(e.Count, e.Msg, e.Gap, e.Lost) {
			t.Errorf("seq %d loaded as %+v, was %+v", e.Seq, g, e)
		}
	}
	b := broker.NewMemory(broker.MemoryOptions{})
	defer b.Close()
	m := NewManager(b, Options{Store: st})
	c, err := m.Open("old", Config{}, false)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ds, err := c.Fetch(ctx, 10, 0)
	if err != nil {
		t.Fatal(err)
	}
	var acks []string
	for _, d := range ds {
		if d.Msg != nil && (d.Msg.Seq == 3 || d.Msg.Seq == 4101) {
			acks = append(acks, d.ID)
		}
	}
	if n, err := c.Ack(acks); n != 2 || err != nil {
		t.Fatalf("acked %d: %v", n, err)
	}
	if err := c.Synced(ctx); err != nil {
		t.Fatal(err)
	}
	m.Close()
	if r := rangesOnDisk(t, dir, "old"); fmt.Sprint(r) != "[0 4096 8192]" {
		t.Errorf("ranges on disk %v", r)
	}
	st, err = OpenBolt(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var seqs []uint64
	for _, e := range st.Loaded()[0].Entries {
		if e.Msg != nil { // (the gap 9001 was delivered; the memory broker's new epoch made another)
			seqs = append(seqs, e.Seq)
		}
	}
	slices.Sort(seqs)
	if fmt.Sprint(seqs) != "[4 4100 9000]" {
		t.Fatalf("after acking 3 and 4101 and a restart: %v", seqs)
	}
}

// A consumers file of a format this pushctl does not know is refused
// with an error saying so, and left as it is.
func TestNewerFormatRefused(t *testing.T) {
	dir := t.TempDir()
	db, err := bolt.Open(filepath.Join(dir, StoreFile), 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *bolt.Tx) error {
		b, _ := tx.CreateBucketIfNotExists(bucketMeta)
		return b.Put(keyFormat, []byte{storeFormat + 1})
	})
	db.Close()
	_, err = OpenBolt(dir, true)
	if err == nil || !strings.Contains(err.Error(), "format") || !strings.Contains(err.Error(), "newer pushctl") {
		t.Fatalf("opening a newer format: %v", err)
	}
}
