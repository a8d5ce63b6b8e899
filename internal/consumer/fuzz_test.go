package consumer

import (
	"bytes"
	"testing"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
)

// FuzzDecodeEntry: a stored record, however damaged, decodes to an entry
// or to an error, never a panic; what decodes encodes back to the same
// bytes.
func FuzzDecodeEntry(f *testing.F) {
	m := &broker.Message{Channel: "jobs", Epoch: "e1", Seq: 9, Event: "message", Kind: broker.KindJSON, Data: []byte(`{"a":1}`), Time: time.Unix(5, 6).UTC()}
	f.Add(encodeEntry(SavedEntry{Seq: 1, Count: 2, Msg: m}))
	f.Add(encodeEntry(SavedEntry{Seq: 2, Gap: &broker.Gap{Channel: "jobs", From: broker.Position{Epoch: "e1", Seq: 3}, To: broker.Position{Epoch: "e2", Seq: 0}}, Lost: 4}))
	f.Add([]byte{1, 0, 'm', 0xff})
	f.Fuzz(func(t *testing.T, v []byte) {
		e, err := decodeEntry(seqKey(1), v)
		if err != nil {
			return
		}
		// Varints may be written longer than needed; the entry is the same.
		enc := encodeEntry(e)
		again, err := decodeEntry(seqKey(1), enc)
		if err != nil || !bytes.Equal(encodeEntry(again), enc) {
			t.Fatalf("%x decodes to %+v, which encodes to %x (%v)", v, e, enc, err)
		}
	})
}

// FuzzParseDeliveryID: an id is <seq>.<count> with both positive, or an
// invalid_delivery error.
func FuzzParseDeliveryID(f *testing.F) {
	for _, s := range []string{"1.1", "0.1", "1.0", "18446744073709551615.2147483647", "1.-1", "1..1", "", ".", "a.b", "1.1.1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		seq, count, err := ParseDeliveryID(id)
		if err != nil {
			return
		}
		if seq == 0 || count <= 0 || deliveryID(seq, count) != id {
			t.Fatalf("%q parses to %d.%d", id, seq, count)
		}
	})
}
