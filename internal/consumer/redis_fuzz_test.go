package consumer

import (
	"testing"

	"github.com/pushctl/pushctl/internal/broker"
)

// FuzzDecodeDelivery: whatever a fetch script's reply holds (a damaged
// or foreign value in Redis), decoding it never panics, and what it
// accepts is a delivery with an id ParseDeliveryID reads back.
func FuzzDecodeDelivery(f *testing.F) {
	f.Add("3", int64(1), string(encodeEntry(SavedEntry{Msg: &broker.Message{Channel: "jobs", Epoch: "e1", Seq: 3, Data: []byte("x")}})))
	f.Add("4", int64(0), `{"c":"jobs","fe":"e1","fs":"2","te":"e1","ts":"5","l":"3"}`)
	f.Add("0", int64(2), "")
	f.Add("7", int64(0), `{"c":1}`)
	f.Fuzz(func(t *testing.T, seq string, count int64, rec string) {
		d, err := decodeDelivery([]any{seq, count, rec})
		if err != nil {
			return
		}
		if _, c, err := ParseDeliveryID(d.ID); err != nil || c != d.Count {
			t.Fatalf("accepted %q %d %q as %+v: id %v", seq, count, rec, d, err)
		}
		if (d.Msg == nil) == (d.Gap == nil) {
			t.Fatalf("accepted %q %d %q as neither or both a message and a gap", seq, count, rec)
		}
	})
}
