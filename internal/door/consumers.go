package door

import (
	"context"
	"errors"
	"net/http"
	"strings"

	"github.com/pushctl/pushctl/internal/consumer"
	"github.com/pushctl/pushctl/internal/wire"
)

// Durable consumers through the door: fetching from a consumer is a
// subscription to its channel or pattern, so it passes the same checks
// (name, grant or the namespace's anonymous subscribe, the subscribe
// hook); acknowledging, inspecting and deleting need the grant.

// Consume admits c to consumer name and returns it, creating it with cfg
// when it does not exist (cfg.Filter is then required). Each fetch asks
// it, as each subscribe does.
func (d *Door) Consume(ctx context.Context, c Caller, name string, cfg consumer.Config) (consumer.Handle, error) {
	filter, err := d.consumerFilter(name, cfg.Filter)
	if err != nil {
		return nil, err
	}
	if err := d.CheckSubscribe(c, []string{filter}); err != nil {
		return nil, err
	}
	if err := d.askSubscribe(ctx, c, filter); err != nil {
		return nil, err
	}
	cfg.Filter = filter
	if err := d.boundConsumer(name, &cfg); err != nil {
		return nil, err
	}
	return d.consumers.Open(name, cfg, true)
}

// boundConsumer applies the namespaces' consumer bounds to the config of
// a consumer about to be created (an existing one keeps its own): the
// strictest bound of every namespace that holds a channel the filter can
// match, as the default, and as the most it may ask for.
func (d *Door) boundConsumer(name string, cfg *consumer.Config) error {
	if _, err := d.consumers.Open(name, consumer.Config{}, false); err == nil {
		return nil
	}
	var maxN int
	var maxB int64
	var from, fromB string
	for i := range d.namespaces {
		ns := &d.namespaces[i]
		if !ns.holdsSome(cfg.Filter) {
			continue
		}
		if n := ns.Rules.ConsumerMaxPending; n > 0 && (maxN == 0 || n < maxN) {
			maxN, from = n, ns.Name
		}
		if b := ns.Rules.ConsumerMaxPendingBytes; b > 0 && (maxB == 0 || b < maxB) {
			maxB, fromB = b, ns.Name
		}
	}
	switch {
	case maxN > 0 && cfg.MaxPending > maxN:
		return wire.Errorf(http.StatusBadRequest, wire.CodeInvalidParameter,
			"max_pending %d: namespace %s keeps at most %d messages for a consumer (consumer-max-pending)", cfg.MaxPending, from, maxN)
	case maxB > 0 && cfg.MaxPendingBytes > maxB:
		return wire.Errorf(http.StatusBadRequest, wire.CodeInvalidParameter,
			"max_pending_bytes %d: namespace %s keeps at most %d bytes for a consumer (consumer-max-pending-bytes)", cfg.MaxPendingBytes, fromB, maxB)
	}
	if cfg.MaxPending == 0 && maxN > 0 {
		cfg.MaxPending = min(maxN, consumer.DefaultMaxPending)
	}
	if cfg.MaxPendingBytes == 0 && maxB > 0 {
		cfg.MaxPendingBytes = min(maxB, consumer.DefaultMaxPendingBytes)
	}
	return nil
}

// ConsumerOf returns existing consumer name for c, who must be allowed to
// subscribe to its channel (acks, nacks, inspecting, deleting).
func (d *Door) ConsumerOf(c Caller, name string) (consumer.Handle, error) {
	cons, err := d.consumers.Open(name, consumer.Config{}, false)
	if err != nil {
		return nil, ConsumerError(err)
	}
	if err := d.CheckSubscribe(c, []string{cons.Config().Filter}); err != nil {
		return nil, err
	}
	return cons, nil
}

// consumerFilter is the filter of consumer name: its own when it exists
// (want, when given, must be it), else want, which is then required.
func (d *Door) consumerFilter(name, want string) (string, error) {
	cons, err := d.consumers.Open(name, consumer.Config{Filter: want}, false)
	switch {
	case err == nil:
		return cons.Config().Filter, nil
	case !errors.Is(err, consumer.ErrNotFound):
		return "", ConsumerError(err)
	case want == "":
		return "", wire.Errorf(http.StatusNotFound, wire.CodeConsumerNotFound,
			"no consumer %s; name its channel to create it (channel=… or pushctl sub CHANNEL --durable %s)", name, name)
	}
	return want, nil
}

// Consumers lists every consumer (the caller checks access to listings).
func (d *Door) Consumers(ctx context.Context) ([]consumer.Info, error) {
	l, err := d.consumers.List(ctx)
	return l, ConsumerError(err)
}

// DeleteConsumer deletes consumer name for c, who must be allowed to
// subscribe to its channel.
func (d *Door) DeleteConsumer(c Caller, name string) error {
	if _, err := d.ConsumerOf(c, name); err != nil {
		return err
	}
	return ConsumerError(d.consumers.Delete(name))
}

// ConsumerError maps a consumer error to its reply (others unchanged).
func ConsumerError(err error) error {
	switch {
	case errors.Is(err, consumer.ErrNotFound):
		return wire.Errorf(http.StatusNotFound, wire.CodeConsumerNotFound, "%s", err.Error())
	case errors.Is(err, consumer.ErrClosed):
		return wire.Errorf(http.StatusServiceUnavailable, wire.CodeShuttingDown, "the broker is shutting down; fetch again from another node or later")
	}
	return err
}

// checkDeadLetter refuses a publish to a dead-letter channel by anyone but
// the broker itself.
func (d *Door) checkDeadLetter(c Caller, channel string) error {
	if c.system || !strings.HasPrefix(channel, consumer.DeadLetterPrefix) {
		return nil
	}
	d.refuse("dead_letter")
	return wire.Errorf(http.StatusForbidden, wire.CodeForbidden, "%s is a dead-letter channel: only the broker publishes to channels beginning with %s", channel, consumer.DeadLetterPrefix)
}
