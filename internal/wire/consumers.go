package wire

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
)

// Error codes of durable consumers (docs/errors.md).
const (
	CodeInvalidConsumer  = "invalid_consumer"
	CodeConsumerNotFound = "consumer_not_found"
	CodeConsumerMismatch = "consumer_mismatch"
	CodeInvalidDelivery  = "invalid_delivery"
	// CodeConsumersUnavailable: this broker cannot keep durable consumers
	// (a node on Redis, where they are not shared between nodes yet).
	CodeConsumersUnavailable = "consumers_unavailable"
)

// Frame types of durable consumers: a fetch's reply lines are deliveries
// (and gaps).
const TypeDelivery = "delivery"

// DeliveryFrame is one line of a fetch's reply: a message envelope with
// the delivery that acknowledges it, or a gap notice (Type "gap") with how
// many messages it lost when known.
type DeliveryFrame struct {
	Envelope
	Consumer   string `json:"consumer,omitempty"`
	Delivery   string `json:"delivery,omitempty"`
	Deliveries int    `json:"deliveries,omitempty"`
	Lost       uint64 `json:"lost,omitempty"`
}

// AppendDelivery appends the line of delivery id (its count-th) of m by
// consumer: m's envelope with "type":"delivery" and the delivery fields.
//
// m's envelope is written straight into b unless m has it encoded already:
// a consumer's message is rarely sent to anyone else, and keeping its
// encoding with it until it is acknowledged was an allocation per
// delivery and a second copy of every message held.
func AppendDelivery(b []byte, consumer, id string, count int, m *broker.Message) []byte {
	b = append(b, `{"type":"delivery","consumer":`...)
	b = AppendString(b, consumer)
	b = append(b, `,"delivery":"`...)
	b = append(b, id...)
	b = append(b, `","deliveries":`...)
	b = strconv.AppendInt(b, int64(count), 10)
	if env := m.EncodedAlready(broker.EncJSON); env != nil { // {"type":"message",…}\n
		return append(b, env[len(`{"type":"message"`):]...)
	}
	return appendJSONFields(b, m)
}

// AppendDeliveryGap appends the line of a gap notice of consumer: lost
// (0: unknown) messages of g.Channel after g.From are not kept for it.
func AppendDeliveryGap(b []byte, consumer string, g *broker.Gap, lost uint64) []byte {
	b = append(b, `{"type":"gap","consumer":`...)
	b = AppendString(b, consumer)
	b = append(b, `,"channel":`...)
	b = AppendString(b, g.Channel)
	b = append(b, `,"from":`...)
	b = AppendString(b, g.From.String())
	b = append(b, `,"to":`...)
	b = AppendString(b, g.To.String())
	if lost > 0 {
		b = append(b, `,"lost":`...)
		b = strconv.AppendUint(b, lost, 10)
	}
	return append(b, "}\n"...)
}

// AppendDeadLetter appends the data of a dead-letter message: which
// consumer gave up on m after how many deliveries, and m's envelope.
func AppendDeadLetter(b []byte, consumer string, deliveries int, m *broker.Message) []byte {
	b = append(b, `{"consumer":`...)
	b = AppendString(b, consumer)
	b = append(b, `,"deliveries":`...)
	b = strconv.AppendInt(b, int64(deliveries), 10)
	b = append(b, `,"message":`...)
	b = append(b, bytes.TrimSuffix(JSON(m), []byte("\n"))...)
	return append(b, '}')
}

// FetchParams are a fetch's query parameters: how many deliveries and how
// long to wait for the first, and, for a consumer created by this fetch,
// its settings.
type FetchParams struct {
	Max  int
	Wait time.Duration
	// Channel is the consumer's channel or pattern (required to create
	// it; when given for an existing one it must be its own).
	Channel       string
	AckWait       time.Duration
	MaxDeliveries int
	MaxInflight   int
	MaxPending    int
	// MaxPendingBytes bounds the data a consumer keeps (bytes).
	MaxPendingBytes int64
	Start           string
}

// Bounds of a fetch.
const (
	MaxFetch     = 1000
	MaxFetchWait = 5 * time.Minute
)

// ParseFetch reads a fetch's query: max (1 to MaxFetch, default 1), wait
// (a duration up to MaxFetchWait or seconds; default 0: do not wait),
// channel, ack_wait, max_deliveries, max_inflight, max_pending, start.
func ParseFetch(q url.Values) (FetchParams, error) {
	p := FetchParams{Max: 1}
	var err error
	if v := q.Get("max"); v != "" {
		if p.Max, err = strconv.Atoi(v); err != nil || p.Max < 1 || p.Max > MaxFetch {
			return p, Errorf(http.StatusBadRequest, CodeInvalidParameter, "max=%q: want 1 to %d", clip(v), MaxFetch)
		}
	}
	if p.Wait, err = duration(q, "wait", MaxFetchWait); err != nil {
		return p, err
	}
	if p.AckWait, err = duration(q, "ack_wait", 24*time.Hour); err != nil {
		return p, err
	}
	for _, f := range []struct {
		name string
		dst  *int
		max  int
	}{{"max_deliveries", &p.MaxDeliveries, 1000}, {"max_inflight", &p.MaxInflight, 100000}, {"max_pending", &p.MaxPending, 10000000}} {
		if v := q.Get(f.name); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > f.max {
				return p, Errorf(http.StatusBadRequest, CodeInvalidParameter, "%s=%q: want 1 to %d", f.name, clip(v), f.max)
			}
			*f.dst = n
		}
	}
	if v := q.Get("max_pending_bytes"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 1 || n > 1<<40 {
			return p, Errorf(http.StatusBadRequest, CodeInvalidParameter, "max_pending_bytes=%q: want 1 to %d", clip(v), int64(1)<<40)
		}
		p.MaxPendingBytes = n
	}
	if v := q.Get("channel"); v != "" {
		if err := broker.ValidatePattern(v); err != nil {
			return p, Errorf(http.StatusBadRequest, CodeInvalidChannel, "%s", err.Error())
		}
		p.Channel = v
	}
	switch v := q.Get("start"); v {
	case "", "new", "all":
		p.Start = v
	default:
		return p, Errorf(http.StatusBadRequest, CodeInvalidParameter, "start=%q: want new or all", clip(v))
	}
	return p, nil
}

// duration reads a duration parameter: "30s", "1m" or a number of
// seconds, from 0 to max.
func duration(q url.Values, name string, max time.Duration) (time.Duration, error) {
	v := q.Get(name)
	if v == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		secs, err2 := strconv.ParseFloat(v, 64)
		if err2 != nil || secs != secs {
			return 0, Errorf(http.StatusBadRequest, CodeInvalidParameter, "%s=%q: want a duration such as 30s", name, clip(v))
		}
		if secs < 0 || secs > max.Seconds() {
			return 0, Errorf(http.StatusBadRequest, CodeInvalidParameter, "%s=%q: want 0 to %s", name, clip(v), max)
		}
		d = time.Duration(secs * float64(time.Second))
	}
	if d < 0 || d > max {
		return 0, Errorf(http.StatusBadRequest, CodeInvalidParameter, "%s=%q: want 0 to %s", name, clip(v), max)
	}
	return d, nil
}

// MaxAckIDs bounds the delivery ids of one ack or nack.
const MaxAckIDs = 10000

// ParseDeliveryIDs splits an ack or nack body (or id parameters): ids
// separated by newlines, spaces or commas. Each id is checked by the
// consumer; here only their number and characters.
func ParseDeliveryIDs(body []byte, params []string) ([]string, error) {
	var ids []string
	sep := func(c byte) bool { return c == ',' || c == ' ' || c == '\n' || c == '\r' || c == '\t' }
	add := func(s string) error {
		for i := 0; i < len(s); {
			if sep(s[i]) {
				i++
				continue
			}
			j := i
			for j < len(s) && !sep(s[j]) {
				j++
			}
			f := s[i:j]
			i = j
			for k := 0; k < len(f); k++ {
				if (f[k] < '0' || f[k] > '9') && f[k] != '.' {
					return Errorf(http.StatusBadRequest, CodeInvalidDelivery, "delivery id %q: want <seq>.<count> as the delivery carried it", clip(f))
				}
			}
			if len(ids) == MaxAckIDs {
				return Errorf(http.StatusBadRequest, CodeInvalidParameter, "more than %d delivery ids in one request", MaxAckIDs)
			}
			if ids == nil {
				ids = make([]string, 0, min(bytes.Count(body, []byte{'\n'})+1+len(params), MaxAckIDs))
			}
			ids = append(ids, f)
		}
		return nil
	}
	for _, p := range params {
		if err := add(p); err != nil {
			return nil, err
		}
	}
	if err := add(string(body)); err != nil {
		return nil, err
	}
	if len(ids) == 0 {
		return nil, Errorf(http.StatusBadRequest, CodeInvalidParameter, "no delivery id given (send them in the body, one per line, or as ?id=)")
	}
	return ids, nil
}

func clip(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

// ParseNackDelay reads a nack's delay parameter (a duration or seconds,
// up to 24h; default 0: deliver again at once).
func ParseNackDelay(q url.Values) (time.Duration, error) {
	return duration(q, "delay", 24*time.Hour)
}

// WebSocket frames of durable consumers. A client sends "consume" to
// have a consumer's deliveries pushed to it (at most Max unacknowledged at
// once), then "ack" and "nack" frames naming deliveries; the broker
// replies "consuming", "acked" and "nacked" (or "error"), each with the
// frame's ref, and pushes "delivery" and "gap" frames.
const (
	TypeConsume   = "consume"
	TypeConsuming = "consuming"
	TypeAckIDs    = "ack"
	TypeNack      = "nack"
	TypeAcked     = "acked"
	TypeNacked    = "nacked"
	// TypeUnconsume stops a consume: no more deliveries are pushed (those
	// held may still be acked or nacked); the reply is TypeUnconsumed.
	TypeUnconsume  = "unconsume"
	TypeUnconsumed = "unconsumed"
)

// ConsumerFrame is a client's consume, ack or nack frame.
type ConsumerFrame struct {
	Type     string   `json:"type"`
	Ref      string   `json:"ref,omitempty"`
	Consumer string   `json:"consumer"`
	IDs      []string `json:"ids,omitempty"`
	// Max (consume) is how many deliveries the connection holds at once
	// (default 1); Delay (nack) when to deliver again ("5s").
	Max   int    `json:"max,omitempty"`
	Delay string `json:"delay,omitempty"`
	// For a consumer created by consume: as FetchParams.
	Channel         string `json:"channel,omitempty"`
	AckWait         string `json:"ack_wait,omitempty"`
	MaxDeliveries   int    `json:"max_deliveries,omitempty"`
	MaxInflight     int    `json:"max_inflight,omitempty"`
	MaxPending      int    `json:"max_pending,omitempty"`
	MaxPendingBytes int64  `json:"max_pending_bytes,omitempty"`
	Start           string `json:"start,omitempty"`
}

// DecodeConsumerFrame parses and checks a consume, ack or nack frame,
// returning its settings (consume) or delay (nack) as FetchParams.
func DecodeConsumerFrame(data []byte) (*ConsumerFrame, FetchParams, error) {
	var f ConsumerFrame
	if err := decodeObject(data, &f); err != nil {
		return &f, FetchParams{}, err
	}
	if len(f.Ref) > MaxRef {
		f.Ref = ""
		return &f, FetchParams{}, Errorf(http.StatusBadRequest, CodeInvalidFrame, "ref longer than %d bytes", MaxRef)
	}
	if f.Consumer == "" {
		return &f, FetchParams{}, Errorf(http.StatusBadRequest, CodeInvalidFrame, "%s needs \"consumer\"", f.Type)
	}
	q := url.Values{}
	switch f.Type {
	case TypeConsume:
		if f.Max != 0 {
			q.Set("max", strconv.Itoa(f.Max))
		}
		for k, v := range map[string]string{"channel": f.Channel, "ack_wait": f.AckWait, "start": f.Start} {
			if v != "" {
				q.Set(k, v)
			}
		}
		for k, v := range map[string]int{"max_deliveries": f.MaxDeliveries, "max_inflight": f.MaxInflight, "max_pending": f.MaxPending} {
			if v != 0 {
				q.Set(k, strconv.Itoa(v))
			}
		}
		if f.MaxPendingBytes != 0 {
			q.Set("max_pending_bytes", strconv.FormatInt(f.MaxPendingBytes, 10))
		}
		p, err := ParseFetch(q)
		return &f, p, err
	case TypeUnconsume:
		return &f, FetchParams{}, nil
	case TypeAckIDs, TypeNack:
		if len(f.IDs) == 0 {
			return &f, FetchParams{}, Errorf(http.StatusBadRequest, CodeInvalidFrame, "%s needs \"ids\": the deliveries", f.Type)
		}
		if _, err := ParseDeliveryIDs(nil, f.IDs); err != nil {
			return &f, FetchParams{}, err
		}
		var p FetchParams
		if f.Delay != "" {
			q.Set("delay", f.Delay)
			d, err := ParseNackDelay(q)
			if err != nil {
				return &f, p, err
			}
			p.Wait = d
		}
		return &f, p, nil
	}
	return &f, FetchParams{}, Errorf(http.StatusBadRequest, CodeInvalidFrame, "not a consumer frame: %q", clip(f.Type))
}

// AppendConsuming appends the reply to a consume frame (typ
// TypeConsuming) or an unconsume frame (TypeUnconsumed).
func AppendConsuming(b []byte, typ, ref, consumer string) []byte {
	b = appendHead(b, typ, ref)
	b = append(b, `,"consumer":`...)
	b = AppendString(b, consumer)
	return append(b, '}')
}

// AppendAcked appends the reply to an ack (typ TypeAcked: n messages
// removed) or a nack (TypeNacked: n deliveries refused, dead of them
// dead-lettered).
func AppendAcked(b []byte, typ, ref string, n, dead int) []byte {
	b = appendHead(b, typ, ref)
	if typ == TypeNacked {
		b = append(b, `,"nacked":`...)
		b = strconv.AppendInt(b, int64(n), 10)
		b = append(b, `,"dead_lettered":`...)
		b = strconv.AppendInt(b, int64(dead), 10)
	} else {
		b = append(b, `,"acked":`...)
		b = strconv.AppendInt(b, int64(n), 10)
	}
	return append(b, '}')
}

// again is text as a string: last when it says the same (no allocation).
func again(text []byte, last string) string {
	if string(text) == last {
		return last
	}
	return string(text)
}

// DecodeDeliveryFrame parses one line of a fetch (or a delivery or gap
// frame): by a fast scan of the form AppendDelivery writes, else by
// encoding/json.
func DecodeDeliveryFrame(line []byte) (*DeliveryFrame, error) {
	var f DeliveryFrame
	if err := f.Decode(line); err != nil {
		return nil, err
	}
	return &f, nil
}

// Decode parses one delivery or gap line into f, replacing what f held
// (a reader of many lines reuses one frame).
func (f *DeliveryFrame) Decode(line []byte) error {
	// The lines of one fetch name the same consumer, and often the same
	// channel and event: keep the strings of the line before when they
	// repeat.
	consumer, channel, event := f.Consumer, f.Channel, f.Event
	*f = DeliveryFrame{}
	ok := scanObject(line, func(key, raw []byte, plain bool) bool {
		switch string(key) {
		case "consumer":
			if !plain {
				return false
			}
			f.Consumer = again(raw[1:len(raw)-1], consumer)
			return true
		case "channel":
			if !plain {
				return false
			}
			f.Channel = again(raw[1:len(raw)-1], channel)
			return true
		case "event":
			if !plain {
				return false
			}
			f.Event = again(raw[1:len(raw)-1], event)
			return true
		case "delivery":
			if !plain {
				return false
			}
			f.Delivery = string(raw[1 : len(raw)-1])
			return true
		case "deliveries":
			n, err := strconv.ParseInt(string(raw), 10, 0)
			f.Deliveries = int(n)
			return err == nil
		case "lost":
			n, err := strconv.ParseUint(string(raw), 10, 64)
			f.Lost = n
			return err == nil
		}
		return envelopeKey(&f.Envelope, key, raw, plain)
	})
	if ok {
		return nil
	}
	*f = DeliveryFrame{}
	if err := json.Unmarshal(line, f); err != nil {
		return fmt.Errorf("%w: %v", ErrBadFrame, err)
	}
	return nil
}
