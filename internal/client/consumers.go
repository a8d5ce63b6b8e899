package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/consumer"
	"github.com/pushctl/pushctl/internal/wire"
)

// ConsumerOptions create a durable consumer on its first fetch; an
// existing consumer keeps its own settings (Channel, when given, must be
// its channel).
type ConsumerOptions struct {
	Channel       string
	AckWait       time.Duration
	MaxDeliveries int
	MaxInflight   int
	MaxPending    int
	// MaxPendingBytes bounds the data the consumer keeps.
	MaxPendingBytes int64
	// Start is "new" (default) or "all" (also what the channel retains).
	Start string
}

// Delivery is one message fetched from a consumer, to acknowledge with
// Ack (or refuse with Nack) by its ID, or a gap notice (Gap set) that
// needs no acknowledgement.
type Delivery struct {
	Consumer string
	ID       string
	Count    int
	Msg      *broker.Message
	Gap      *Gap
	Lost     uint64
}

// consumerQuery is the query of o's settings.
func consumerQuery(o ConsumerOptions) url.Values {
	q := url.Values{}
	if o.Channel != "" {
		q.Set("channel", o.Channel)
	}
	if o.AckWait > 0 {
		q.Set("ack_wait", o.AckWait.String())
	}
	for k, v := range map[string]int{"max_deliveries": o.MaxDeliveries, "max_inflight": o.MaxInflight, "max_pending": o.MaxPending} {
		if v > 0 {
			q.Set(k, strconv.Itoa(v))
		}
	}
	if o.MaxPendingBytes > 0 {
		q.Set("max_pending_bytes", strconv.FormatInt(o.MaxPendingBytes, 10))
	}
	if o.Start != "" {
		q.Set("start", o.Start)
	}
	return q
}

// CreateConsumer creates consumer name with o's settings (an existing one
// keeps its own; o.Channel must be its channel) and describes it.
func (c *Client) CreateConsumer(ctx context.Context, name string, o ConsumerOptions) (*consumer.Info, error) {
	var info consumer.Info
	return &info, c.call(ctx, "PUT", "/consumers/"+url.PathEscape(name), consumerQuery(o), &info)
}

// Fetch takes up to max deliveries from consumer name, waiting up to wait
// for the first; none when wait passes without any.
func (c *Client) Fetch(ctx context.Context, name string, max int, wait time.Duration, o ConsumerOptions) ([]Delivery, error) {
	r, err := c.FetchBegin(ctx, name, max, wait, o)
	if err != nil {
		return nil, err
	}
	return r.Read()
}

// FetchReply is a fetch whose reply has begun: the broker has taken its
// deliveries (a fetch sent now gets later ones), and Next decodes them
// as they arrive. Read it to the end or Close it.
type FetchReply struct {
	resp *http.Response
	br   *bufio.Reader
	f    wire.DeliveryFrame
	long []byte // a line longer than br's buffer
	err  error  // what ended the reply (io.EOF: its end)
}

// FetchBegin sends a fetch as Fetch does and returns once its reply
// begins, before its deliveries are read: a client may send the next
// fetch while it reads this one, and the deliveries of the next come
// after these.
func (c *Client) FetchBegin(ctx context.Context, name string, max int, wait time.Duration, o ConsumerOptions) (*FetchReply, error) {
	q := consumerQuery(o)
	q.Set("max", strconv.Itoa(max))
	q.Set("wait", wait.String())
	req, err := http.NewRequestWithContext(ctx, "POST", c.url("/consumers/"+url.PathEscape(name)+"/fetch", q), http.NoBody)
	if err != nil {
		return nil, err
	}
	req.GetBody = func() (io.ReadCloser, error) { return http.NoBody, nil }
	resp, err := c.do(req)
	if err != nil {
		return nil, err
	}
	br := readers.Get().(*bufio.Reader)
	br.Reset(resp.Body)
	return &FetchReply{resp: resp, br: br}, nil
}

// Close drops what was not read: those deliveries are delivered again
// after the ack wait.
func (r *FetchReply) Close() {
	if r.br == nil {
		return
	}
	r.resp.Body.Close()
	r.br.Reset(nil)
	readers.Put(r.br)
	r.br = nil
	if r.err == nil {
		r.err = io.EOF
	}
}

// Read reads and decodes the rest of the reply's deliveries, and closes
// it. On an error it returns those read before it.
func (r *FetchReply) Read() ([]Delivery, error) {
	var out []Delivery
	for {
		ds, err := r.Next(wire.MaxFetch)
		out = append(out, ds...)
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
	}
}

// Next reads and decodes up to max more deliveries as they arrive. At
// the end of the reply it returns io.EOF (with the last deliveries, or
// none) and closes it; on another error, the deliveries read before it
// (those not read are delivered again after the ack wait).
func (r *FetchReply) Next(max int) ([]Delivery, error) {
	if r.err != nil {
		return nil, r.err
	}
	var out []Delivery
	for len(out) < max {
		line, err := r.br.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			r.long = append(r.long[:0], line...)
			for err == bufio.ErrBufferFull {
				line, err = r.br.ReadSlice('\n')
				r.long = append(r.long, line...)
			}
			line = r.long
		}
		if len(bytes.TrimSpace(line)) > 0 {
			d, derr := decodeDelivery(&r.f, line)
			if derr != nil {
				r.err = derr
				r.Close()
				return out, derr
			}
			out = append(out, d)
		}
		if err == io.EOF {
			r.err = io.EOF
			r.Close()
			return out, io.EOF
		}
		if err != nil {
			r.err = fmt.Errorf("reading deliveries: %w", err)
			r.Close()
			return out, r.err
		}
	}
	return out, nil
}

// readers read fetch replies: one 64 KiB buffer per fetch was a good
// part of what a busy consumer allocated.
var readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 64<<10) }}

// decodeDelivery decodes one line of a fetch with f (reused from line to
// line: the strings of a delivery do not point into it).
func decodeDelivery(f *wire.DeliveryFrame, line []byte) (Delivery, error) {
	if err := f.Decode(line); err != nil {
		return Delivery{}, err
	}
	d := Delivery{Consumer: f.Consumer, ID: f.Delivery, Count: f.Deliveries, Lost: f.Lost}
	switch f.Type {
	case wire.TypeGap:
		d.Gap = &Gap{Channel: f.Channel, From: f.From, To: f.To}
		return d, nil
	case wire.TypeDelivery:
		env := f.Envelope
		env.Type = wire.TypeMessage
		m, err := env.Message()
		if err != nil {
			return Delivery{}, err
		}
		d.Msg = m
		return d, nil
	}
	return Delivery{}, fmt.Errorf("%w: unexpected %q line in a fetch", wire.ErrBadFrame, f.Type)
}

// Ack acknowledges deliveries of consumer name; it returns how many
// messages this removed (an id acknowledged before is not an error).
func (c *Client) Ack(ctx context.Context, name string, ids []string) (int, error) {
	var out struct {
		Acked int `json:"acked"`
	}
	return out.Acked, c.postIDs(ctx, "/consumers/"+url.PathEscape(name)+"/ack", nil, ids, &out)
}

// Nack refuses deliveries of consumer name: delivered again after delay
// (or dead-lettered when out of deliveries). It returns how many were
// still current, and how many of them went to the dead-letter channel.
func (c *Client) Nack(ctx context.Context, name string, ids []string, delay time.Duration) (nacked, dead int, err error) {
	var out struct {
		Nacked int `json:"nacked"`
		Dead   int `json:"dead_lettered"`
	}
	q := url.Values{}
	if delay > 0 {
		q.Set("delay", delay.String())
	}
	err = c.postIDs(ctx, "/consumers/"+url.PathEscape(name)+"/nack", q, ids, &out)
	return out.Nacked, out.Dead, err
}

func (c *Client) postIDs(ctx context.Context, path string, q url.Values, ids []string, v any) error {
	body := []byte(strings.Join(ids, "\n"))
	req, err := http.NewRequestWithContext(ctx, "POST", c.url(path, q), bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "text/plain")
	resp, err := c.do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10)) // all of it: the connection is reused
	if err != nil {
		return fmt.Errorf("reading the broker's reply: %w", err)
	}
	return json.Unmarshal(b, v)
}

// Consumers lists the broker's durable consumers.
func (c *Client) Consumers(ctx context.Context) ([]consumer.Info, error) {
	var out struct {
		Consumers []consumer.Info `json:"consumers"`
	}
	return out.Consumers, c.call(ctx, "GET", "/consumers", nil, &out)
}

// Consumer describes one durable consumer.
func (c *Client) Consumer(ctx context.Context, name string) (*consumer.Info, error) {
	var info consumer.Info
	return &info, c.call(ctx, "GET", "/consumers/"+url.PathEscape(name), nil, &info)
}

// DeleteConsumer deletes a durable consumer and what it kept.
func (c *Client) DeleteConsumer(ctx context.Context, name string) error {
	return c.call(ctx, "DELETE", "/consumers/"+url.PathEscape(name), nil, nil)
}
