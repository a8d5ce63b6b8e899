package boltlog

import (
	"bytes"
	"testing"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
)

// FuzzRecord: the durable store's record decoder fails cleanly on damage
// and what it decodes encodes to the same bytes.
func FuzzRecord(f *testing.F) {
	m := &broker.Message{Kind: broker.KindJSON, Event: "deploy", Data: []byte(`{"v":1}`), Time: time.Unix(0, 1764000000000000000)}
	f.Add(encodeRecord(m), uint64(7))
	f.Add(encodeRecord(&broker.Message{Kind: broker.KindText, Data: []byte("once"), Key: "deploy-42", Time: time.Unix(0, 1764000000000000000)}), uint64(8))
	f.Add([]byte{}, uint64(0))
	f.Add([]byte{1, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff}, uint64(1))
	f.Fuzz(func(t *testing.T, v []byte, seq uint64) {
		got, err := decodeRecord("c", "k", seqKey(seq), v)
		if err != nil {
			return
		}
		if got.Seq != seq || got.Channel != "c" || got.Epoch != "k" {
			t.Fatalf("decoded %+v", got)
		}
		if again := encodeRecord(got); !bytes.Equal(again, v) {
			t.Fatalf("record %x decodes and encodes as %x", v, again)
		}
	})
}
