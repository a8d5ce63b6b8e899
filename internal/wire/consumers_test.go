package wire

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
)

// FuzzParseFetch: any query either parses into values within the
// documented bounds or is refused with a 400 and a stable code.
func FuzzParseFetch(f *testing.F) {
	for _, s := range []string{"", "max=10&wait=30s", "wait=2.5", "max=0", "max=1001", "wait=-1s", "wait=NaN", "wait=1e300",
		"channel=jobs&ack_wait=1m&max_deliveries=3&max_inflight=1&max_pending=10&start=all", "channel=a..b", "start=x", "max_deliveries=99999999999999999999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, query string) {
		q, err := url.ParseQuery(query)
		if err != nil {
			return
		}
		p, err := ParseFetch(q)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || e.Status != http.StatusBadRequest || e.Code == "" {
				t.Fatalf("%q: error %v is not a 400 with a code", query, err)
			}
			return
		}
		if p.Max < 1 || p.Max > MaxFetch || p.Wait < 0 || p.Wait > MaxFetchWait || p.AckWait < 0 || p.AckWait > 24*time.Hour ||
			p.MaxDeliveries < 0 || p.MaxDeliveries > 1000 || p.MaxInflight < 0 || p.MaxPending < 0 {
			t.Fatalf("%q: out of bounds %+v", query, p)
		}
		if p.Channel != "" && broker.ValidatePattern(p.Channel) != nil {
			t.Fatalf("%q: invalid channel %q accepted", query, p.Channel)
		}
		if p.Start != "" && p.Start != "new" && p.Start != "all" {
			t.Fatalf("%q: start %q accepted", query, p.Start)
		}
	})
}

// FuzzParseDeliveryIDs: bodies and id parameters split into ids of digits
// and dots only, at most MaxAckIDs, or a 400 with a code.
func FuzzParseDeliveryIDs(f *testing.F) {
	f.Add([]byte("1.1\n2.1\n"), "3.2")
	f.Add([]byte("1.1, 2.1 3.1"), "")
	f.Add([]byte(""), "")
	f.Add([]byte("x"), "1.1")
	f.Add([]byte(strings.Repeat("1.1\n", MaxAckIDs+1)), "")
	f.Fuzz(func(t *testing.T, body []byte, param string) {
		ids, err := ParseDeliveryIDs(body, []string{param})
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || e.Status != http.StatusBadRequest || e.Code == "" {
				t.Fatalf("error %v is not a 400 with a code", err)
			}
			return
		}
		if len(ids) == 0 || len(ids) > MaxAckIDs {
			t.Fatalf("%d ids", len(ids))
		}
		for _, id := range ids {
			if id == "" || strings.Trim(id, "0123456789.") != "" {
				t.Fatalf("id %q accepted", id)
			}
		}
	})
}

// FuzzAppendDelivery: a delivery line is one line of valid JSON that
// decodes back to the delivery and the message as published.
func FuzzAppendDelivery(f *testing.F) {
	f.Add("workers", "12.3", 3, "jobs", "ev", []byte("hello"))
	f.Add("w", "1.1", 1, "a.b", "", []byte(`{"x":[1,2]}`))
	f.Add("w", "1.1", 1, "c", "e\"", []byte{0xff, 0, '\n'})
	f.Fuzz(func(t *testing.T, consumer, id string, count int, channel, event string, data []byte) {
		if strings.Trim(id, "0123456789.") != "" {
			return // ids are the consumer's, digits and dots
		}
		kind, _ := broker.ClassifyData("", data)
		m := &broker.Message{Channel: channel, Epoch: "e", Seq: 7, Event: event, Kind: kind, Data: data, Time: time.Unix(1, 0).UTC()}
		line := AppendDelivery(nil, consumer, id, count, m)
		if strings.Count(string(line), "\n") != 1 || line[len(line)-1] != '\n' {
			t.Fatalf("not one line: %q", line)
		}
		var d DeliveryFrame
		if err := json.Unmarshal(line, &d); err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		fast, err := DecodeDeliveryFrame(line)
		if err != nil || !reflect.DeepEqual(*fast, d) {
			t.Fatalf("%q: DecodeDeliveryFrame gives %+v (%v), encoding/json %+v", line, fast, err, d)
		}
		if d.Type != TypeDelivery || d.Delivery != id || d.Deliveries != count {
			t.Fatalf("%q decodes to %+v", line, d)
		}
		env := d.Envelope
		env.Type = TypeMessage
		got, err := env.Message()
		if err != nil {
			t.Fatal(err)
		}
		want, err := DecodeEnvelope(JSON(m))
		if err != nil {
			t.Fatal(err)
		}
		// Once m's envelope is encoded (above, as for a subscriber), the line is
		// made from that encoding, and is the same.
		if again := AppendDelivery(nil, consumer, id, count, m); string(again) != string(line) {
			t.Fatalf("with m's envelope encoded: %q, before %q", again, line)
		}
		wm, _ := want.Message()
		if !reflect.DeepEqual(got, wm) {
			t.Fatalf("delivery gives %+v, the message envelope %+v", got, wm)
		}
		var dl map[string]any
		if err := json.Unmarshal(AppendDeadLetter(nil, consumer, count, m), &dl); err != nil {
			t.Fatalf("dead letter: %v", err)
		}
	})
}

// FuzzDecodeConsumerFrame: any frame is a checked consume, ack or nack,
// or an error with a stable code; never a panic.
func FuzzDecodeConsumerFrame(f *testing.F) {
	for _, s := range []string{
		`{"type":"consume","ref":"1","consumer":"w","channel":"jobs","max":10,"ack_wait":"1m","start":"all"}`,
		`{"type":"ack","consumer":"w","ids":["1.1","2.3"]}`,
		`{"type":"nack","consumer":"w","ids":["1.1"],"delay":"5s"}`,
		`{"type":"nack","consumer":"w","ids":["1.1"],"delay":"-1s"}`,
		`{"type":"ack","consumer":"w","ids":"1.1"}`, `{"type":"consume"}`, `[]`, `{"type":"consume","consumer":"w","max":1e9}`,
		`{"type":"unconsume","ref":"2","consumer":"w"}`, `{"type":"unconsume"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fr, p, err := DecodeConsumerFrame(data)
		if fr == nil {
			t.Fatal("nil frame")
		}
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || e.Code == "" || e.Status != http.StatusBadRequest {
				t.Fatalf("%q: error %v", data, err)
			}
			return
		}
		switch fr.Type {
		case TypeConsume:
			if p.Max < 1 || p.Max > MaxFetch {
				t.Fatalf("%q: max %d", data, p.Max)
			}
		case TypeAckIDs, TypeNack:
			if len(fr.IDs) == 0 || p.Wait < 0 || p.Wait > 24*time.Hour {
				t.Fatalf("%q: %+v %+v", data, fr, p)
			}
		case TypeUnconsume:
			if fr.Consumer == "" {
				t.Fatalf("%q: unconsume without a consumer", data)
			}
		default:
			t.Fatalf("%q: type %q accepted", data, fr.Type)
		}
		if fr.Consumer == "" || len(fr.Ref) > MaxRef {
			t.Fatalf("%q: %+v", data, fr)
		}
	})
}

// TestDeliveryFrameDecodeReusesOnlyEqualStrings: a frame decoding line
// after line keeps the consumer, channel and event strings of the line
// before only when they are the same.
func TestDeliveryFrameDecodeReusesOnlyEqualStrings(t *testing.T) {
	var f DeliveryFrame
	for i, c := range []struct{ consumer, channel, event string }{
		{"w", "a", "message"}, {"w", "a", "message"}, {"w", "b", "other"}, {"v", "b", "message"},
	} {
		m := &broker.Message{Channel: c.channel, Epoch: "e", Seq: uint64(i + 1), Event: c.event, Data: []byte("x"), Time: time.Unix(1, 0).UTC()}
		if err := f.Decode(AppendDelivery(nil, c.consumer, fmt.Sprint(i+1, ".1"), 1, m)); err != nil {
			t.Fatal(err)
		}
		if f.Consumer != c.consumer || f.Channel != c.channel || f.Event != c.event || f.Delivery != fmt.Sprint(i+1, ".1") {
			t.Fatalf("line %d decodes to consumer %q, channel %q, event %q, delivery %q; want %+v", i+1, f.Consumer, f.Channel, f.Event, f.Delivery, c)
		}
	}
}
