package wire

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
)

// TestPublishAckIsAckJSON: the hand-written HTTP publish ack is the JSON
// encoding/json makes of the PublishAck, byte for byte where encoding/json does
// not escape HTML characters, and decodes to the same PublishAck everywhere.
// (Moved here from internal/server with the encoder.).
func TestPublishAckIsAckJSON(t *testing.T) {
	east := time.FixedZone("east", 5*3600+1800)
	for _, m := range []*broker.Message{
		{Channel: "news", Epoch: "dn3y97p1lq46", Seq: 1, Time: time.Date(2026, 11, 25, 2, 3, 4, 0, time.UTC)},
		{Channel: "a.b-c_d", Epoch: "e", Seq: 18446744073709551615, Time: time.Date(2026, 1, 2, 3, 4, 5, 123456789, east)},
		{Channel: "q<&>\"é", Epoch: "x", Seq: 7, Time: time.Now()},
		{Channel: "again", Epoch: "x", Seq: 9, Time: time.Now(), Duplicate: true},
	} {
		for _, n := range []int{0, 3, 1 << 40} {
			got := AppendPublishAck(nil, m, n)
			var want bytes.Buffer
			json.NewEncoder(&want).Encode(AckOf(m, n))
			if !strings.ContainsAny(m.Channel, "<&>") && !bytes.Equal(got, want.Bytes()) {
				t.Errorf("ack %s, encoding/json %s", got, want.Bytes())
			}
			var a, b PublishAck
			if err := json.Unmarshal(got, &a); err != nil {
				t.Fatalf("%s: %v", got, err)
			}
			json.Unmarshal(want.Bytes(), &b)
			if !a.Time.Equal(b.Time) || a.ID != b.ID || a.Channel != b.Channel || a.Seq != b.Seq || a.Subscribers != b.Subscribers || a.Duplicate != b.Duplicate || a.Duplicate != m.Duplicate {
				t.Errorf("ack %s reads as %+v, encoding/json's as %+v", got, a, b)
			}
		}
	}
}
