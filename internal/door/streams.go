package door

import (
	"context"
	"errors"
	"math"

	"github.com/pushctl/pushctl/internal/broker"
)

// What the Durable Streams protocol (/v1/stream/…) needs of the door
// besides Publish, StartPublish, Subscribe and DeleteChannel: reading a
// channel's history without subscribing (a catch-up GET), and making a
// channel exist (a PUT of an empty stream). Both check what a
// subscription or a publish would.

// ReadHistory reads channel's history as a new subscriber would be
// replayed it (req: from a position, the last N, …) without subscribing:
// c needs the grant to subscribe (or the namespace's anonymous
// subscribe) and the subscribe hook's yes, like any subscriber.
func (d *Door) ReadHistory(ctx context.Context, c Caller, channel string, req broker.ReadRequest) (broker.ReadResult, error) {
	if err := broker.ValidateChannel(channel); err != nil {
		return broker.ReadResult{}, err
	}
	if err := d.allowSubscribe(c, channel); err != nil {
		return broker.ReadResult{}, err
	}
	if err := d.askSubscribe(ctx, c, channel); err != nil {
		return broker.ReadResult{}, err
	}
	req.Create = false
	return d.read(ctx, channel, req)
}

// CreateChannel makes channel exist (fixing its epoch) when c may publish
// to it, and returns its newest position.
func (d *Door) CreateChannel(ctx context.Context, c Caller, channel string) (broker.Position, error) {
	if err := d.CheckPublish(c, channel); err != nil {
		return broker.Position{}, err
	}
	res, err := d.read(ctx, channel, broker.ReadRequest{Create: true})
	return res.Head, err
}

func (d *Door) read(ctx context.Context, channel string, req broker.ReadRequest) (broker.ReadResult, error) {
	lb, ok := d.b.(interface{ Log() broker.Log })
	if !ok {
		return broker.ReadResult{}, errors.New("door: this broker cannot read history")
	}
	return lb.Log().Read(ctx, channel, req)
}

// Durable Streams channels are kept whole: their namespace keeps every
// message until the stream is deleted or expires, and the state channel
// beside each keeps its newest record.
var streamNamespaces = []Namespace{
	{Name: "durable-streams-state", Patterns: []string{"ds.~.>"}, Rules: Rules{History: &broker.Retention{HistorySize: 1, HistoryAge: -1}}},
	{Name: "durable-streams", Patterns: []string{"ds.>"}, Rules: Rules{History: &broker.Retention{HistorySize: math.MaxInt32, HistoryAge: -1}}},
}

// WithStreamNamespaces returns nss followed by the namespaces of Durable
// Streams channels (ds.> keeps everything, ds.~.> its newest state), each
// unless a namespace of nss already takes all its channels: the
// operator's rules come first.
func WithStreamNamespaces(nss []Namespace) []Namespace {
	out := append([]Namespace(nil), nss...)
	for _, ns := range streamNamespaces {
		taken := false
		for _, have := range nss {
			if have.Name == ns.Name {
				taken = true
			}
		}
		if !taken && coveredBy(out, ns.Patterns[0]) == "" {
			out = append(out, ns)
		}
	}
	return out
}
