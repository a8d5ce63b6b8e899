package sub

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/client"
	"github.com/pushctl/pushctl/internal/cmdutil"
	"github.com/pushctl/pushctl/internal/consumer"
	"github.com/pushctl/pushctl/internal/wire"
	"github.com/spf13/cobra"
)

// durableWait is how long one fetch waits for a delivery.
const durableWait = 30 * time.Second

// retryDelay is how long a message whose --exec failed waits before it
// is delivered again: 1s after the first delivery, doubling, up to a
// minute.
func retryDelay(count int) time.Duration {
	d := time.Second
	for i := 1; i < count && d < time.Minute; i++ {
		d *= 2
	}
	return min(d, time.Minute)
}

// durable consumes through the broker's durable consumer o.Durable: every
// message is acknowledged once printed, or once --exec exited 0, and
// refused (delivered again with backoff) when --exec failed. Up to
// --max-inflight messages are handled at once.
type durable struct {
	o  *Options
	p  *printer
	c  *client.Client
	co client.ConsumerOptions

	mu      sync.Mutex // the printer and the counts
	running int        // deliveries held: fetched, their ack or nack not yet sent
	started int        // messages handed to a handler (for --count)
	free    chan struct{}
	acks    chan []string // delivery ids to acknowledge, a handled batch at a time
	failed  error
	wg      sync.WaitGroup
}

func runDurable(ctx, sctx context.Context, o *Options, p *printer, c *client.Client) error {
	d := &durable{o: o, p: p, c: c, free: make(chan struct{}, 1), acks: make(chan []string, 1024),
		co: client.ConsumerOptions{Channel: o.Channels[0], AckWait: o.AckWait, MaxDeliveries: o.MaxDeliveries}}
	if o.Ordered {
		d.co.MaxInflight = 1
	}
	if o.Since == "all" {
		d.co.Start = "all"
	}
	ackDone := make(chan error, 1)
	actx, acancel := context.WithCancel(context.Background())
	go func() { ackDone <- d.acker(actx) }()
	err := d.loop(sctx)
	d.wg.Wait()
	close(d.acks)
	aerr := <-ackDone
	acancel()
	if err == nil {
		err = aerr
	}
	if d.failed != nil {
		err = d.failed
	}
	if ctx.Err() != nil {
		// A service manager's stop (SIGTERM) is a clean end: exit 0;
		// Ctrl-C is 130. Deliveries not acknowledged come back.
		p.out.Flush()
		return cmdutil.Stopped(ctx)
	}
	return p.finish(ctx, err)
}

// loop fetches while there is room, until --count messages were handled,
// ctx ends or fetching fails for good.
func (d *durable) loop(ctx context.Context) error {
	backoff := 100 * time.Millisecond
	warned := false
	for {
		d.mu.Lock()
		room := max(d.o.MaxInflight-d.running, 0)
		if d.o.Count > 0 {
			room = min(room, d.o.Count-d.started)
		}
		failed, finished := d.failed, d.o.Count > 0 && d.started >= d.o.Count && d.running == 0
		d.mu.Unlock()
		if failed != nil {
			return failed
		}
		if finished {
			return client.ErrStop
		}
		if room <= 0 {
			select {
			case <-d.free:
				continue
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		ds, err := d.c.Fetch(ctx, d.o.Durable, min(room, consumer.MaxFetch), durableWait, d.co)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			var ae *client.APIError
			if errors.As(err, &ae) && (ae.Status < 500 && ae.Status != 408 && ae.Status != 429 || ae.Status == 501) {
				return fmt.Errorf("consume %s as %s: %w", d.o.Channels[0], d.o.Durable, err)
			}
			if !d.o.Quiet && !warned {
				fmt.Fprintf(d.o.IO.ErrOut, "pushctl: fetching from consumer %s failed (%v); retrying\n", d.o.Durable, err)
				warned = true
			}
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			}
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		if warned && !d.o.Quiet {
			fmt.Fprintf(d.o.IO.ErrOut, "pushctl: fetching from consumer %s again\n", d.o.Durable)
		}
		backoff, warned = 100*time.Millisecond, false
		held := 0
		for _, dv := range ds {
			if dv.Gap == nil {
				held++
			}
		}
		d.mu.Lock()
		d.running += held // until their ack or nack is sent
		d.mu.Unlock()
		if err := d.handle(ctx, ds); err != nil {
			return err
		}
	}
}

// handle prints the deliveries and then acknowledges them, or starts
// --exec for each.
func (d *durable) handle(ctx context.Context, ds []client.Delivery) error {
	var done []string // printed (flushed before they are acknowledged) or not kept
	defer func() {
		d.mu.Lock()
		d.p.out.Flush()
		d.mu.Unlock()
		if len(done) > 0 {
			d.acks <- done
		}
	}()
	for _, dv := range ds {
		if dv.Gap != nil {
			g := dv.Gap
			lost := "some"
			if dv.Lost > 0 {
				lost = fmt.Sprint(dv.Lost)
			}
			d.mu.Lock()
			err := d.p.gap(g, fmt.Sprintf("consumer %s could not keep %s messages of %s after %s (max pending, or history gone); continuing after %s", d.o.Durable, lost, g.Channel, g.From, g.To))
			d.mu.Unlock()
			if err != nil {
				return err
			}
			continue
		}
		keep, err := d.p.o.filter.Keep(ctx, dv.Msg.Data, dv.Msg.Kind == broker.KindJSON)
		if err != nil || !keep {
			done = append(done, dv.ID) // not for us: done with it
			continue
		}
		d.mu.Lock()
		d.started++
		if d.o.Print {
			if err := write(d.p.out, d.o, dv.Msg); err != nil {
				d.mu.Unlock()
				return err
			}
		}
		if d.o.Exec == "" {
			d.p.got++
			d.mu.Unlock()
			done = append(done, dv.ID)
			continue
		}
		d.p.out.Flush()
		d.mu.Unlock()
		d.wg.Add(1)
		go d.exec(ctx, dv)
	}
	return nil
}

// exec runs --exec for one delivery and acks or nacks it.
func (d *durable) exec(ctx context.Context, dv client.Delivery) {
	defer d.wg.Done()
	err := runExec(ctx, d.o, dv.Msg)
	if err == nil {
		d.acks <- []string{dv.ID}
	} else if ctx.Err() == nil {
		delay := retryDelay(dv.Count)
		nctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, dead, nerr := d.c.Nack(nctx, d.o.Durable, []string{dv.ID}, delay)
		cancel()
		if !d.o.Quiet {
			what := fmt.Sprintf("delivered again in %s", delay)
			switch {
			case nerr != nil:
				what = fmt.Sprintf("the nack failed (%v): delivered again after the ack wait", nerr)
			case dead > 0:
				what = "out of deliveries: sent to the dead-letter channel _dead." + d.o.Durable
			}
			fmt.Fprintf(d.o.IO.ErrOut, "pushctl: --exec failed for message %s on %s (%v), delivery %d; %s\n", dv.Msg.ID(), dv.Msg.Channel, err, dv.Count, what)
		}
	}
	// Interrupted: the message is delivered again after the ack wait.
	d.mu.Lock()
	if err == nil {
		d.p.got++
	} else {
		d.started-- // it comes back
	}
	d.mu.Unlock()
	if err != nil {
		d.release(1)
	}
}

// release frees n slots of --max-inflight: deliveries whose ack or nack
// was sent (or that will come back after the ack wait).
func (d *durable) release(n int) {
	d.mu.Lock()
	d.running -= n
	d.mu.Unlock()
	select {
	case d.free <- struct{}{}:
	default:
	}
}

// acker sends acknowledgements in batches: whatever gathered while the
// previous batch was sent goes in one request.
func (d *durable) acker(ctx context.Context) error {
	var batch []string
	for ids := range d.acks {
		batch = append(batch[:0], ids...)
	drain:
		for len(batch) < wire.MaxAckIDs-consumer.MaxFetch {
			select {
			case ids, ok := <-d.acks:
				if !ok {
					break drain
				}
				batch = append(batch, ids...)
			default:
				break drain
			}
		}
		if err := d.sendAcks(ctx, batch); err != nil {
			d.mu.Lock()
			if d.failed == nil {
				d.failed = err
			}
			d.mu.Unlock()
			d.release(0)       // the fetch loop sees the failure
			for range d.acks { // let handlers finish
			}
			return err
		}
		d.release(len(batch))
	}
	return nil
}

// sendAcks posts one batch, retrying while the broker cannot be reached
// (up to a minute: after that the messages are delivered again anyway).
func (d *durable) sendAcks(ctx context.Context, ids []string) error {
	wait := 100 * time.Millisecond
	deadline := time.Now().Add(time.Minute)
	for {
		_, err := d.c.Ack(ctx, d.o.Durable, ids)
		if err == nil {
			return nil
		}
		var ae *client.APIError
		if errors.As(err, &ae) && ae.Status < 500 || time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("acknowledge %s on consumer %s: %w", cmdutil.Plural(len(ids), "message"), d.o.Durable, err)
		}
		if wait == 100*time.Millisecond && !d.o.Quiet {
			fmt.Fprintf(d.o.IO.ErrOut, "pushctl: acknowledging %s on consumer %s failed (%v); retrying\n", cmdutil.Plural(len(ids), "message"), d.o.Durable, err)
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
		wait = min(wait*2, 2*time.Second)
	}
}

func addDurableFlags(cmd *cobra.Command, o *Options) {
	fl := cmd.Flags()
	fl.StringVar(&o.Durable, "durable", "", "read through the broker's durable consumer of this name (created on first use): resumes where it left off, acknowledges each message once printed or once --exec exits 0, and has it delivered again with backoff when --exec fails")
	fl.IntVar(&o.MaxInflight, "max-inflight", 0, "with --durable: messages held at once, delivered and not yet acknowledged (default 1 with --exec: one command at a time; 100 when printing); --exec runs that many commands in parallel")
	fl.DurationVar(&o.AckWait, "ack-wait", 0, "with --durable, creating the consumer: how long a delivery may go unacknowledged before it is delivered again (default 30s)")
	fl.IntVar(&o.MaxDeliveries, "max-deliveries", 0, "with --durable, creating the consumer: deliveries of a message before it goes to the dead-letter channel _dead.NAME (default 5)")
	fl.BoolVar(&o.Ordered, "ordered", false, "with --durable, creating the consumer: one message in flight across all its clients, in order")
}

// validateDurable checks --durable and the flags that go with it.
func (o *Options) validateDurable(cmd *cobra.Command) error {
	fl := cmd.Flags()
	if o.Durable == "" {
		for _, f := range []string{"max-inflight", "ack-wait", "max-deliveries", "ordered"} {
			if fl.Changed(f) {
				return cmdutil.FlagErrorf("--%s goes with --durable NAME", f)
			}
		}
		return nil
	}
	if o.MaxInflight == 0 {
		o.MaxInflight = defaultPrintInflight
		if o.Exec != "" {
			o.MaxInflight = 1
		}
	}
	if err := consumer.ValidateName(o.Durable); err != nil {
		return cmdutil.FlagErrorf("--durable %q: %s", o.Durable, consumerNameRule)
	}
	if len(o.Channels) != 1 {
		return cmdutil.FlagErrorf("--durable reads one channel or pattern, not %d", len(o.Channels))
	}
	switch {
	case o.ZMQ.Endpoint != "":
		return cmdutil.FlagErrorf("--durable reads from the broker, not from --zmq")
	case o.Last != 0:
		return cmdutil.FlagErrorf("--durable resumes where the consumer left off; --last does not apply (--since all starts a new consumer at the oldest retained message)")
	case o.Since != "" && o.Since != "all":
		return cmdutil.FlagErrorf("--durable resumes where the consumer left off; only --since all applies (where a new consumer starts)")
	case fl.Changed("on-exec-error"):
		return cmdutil.FlagErrorf("--on-exec-error does not apply with --durable: a failed --exec has its message delivered again with backoff, then dead-lettered after --max-deliveries")
	case o.MaxInflight < 1 || o.MaxInflight > maxInflight:
		return cmdutil.FlagErrorf("--max-inflight %d: want 1 to %d", o.MaxInflight, maxInflight)
	case o.AckWait != 0 && (o.AckWait < 100*time.Millisecond || o.AckWait > 24*time.Hour):
		return cmdutil.FlagErrorf("--ack-wait %s: want 100ms to 24h", o.AckWait)
	case o.MaxDeliveries < 0 || o.MaxDeliveries > 1000:
		return cmdutil.FlagErrorf("--max-deliveries %d: want 1 to 1000", o.MaxDeliveries)
	}
	return nil
}

// defaultPrintInflight is --max-inflight when printing: enough for a
// fetch to carry many messages, few to print again after a crash.
const defaultPrintInflight = 100

// maxInflight bounds --max-inflight (a fetch takes up to consumer.MaxFetch
// of them at a time).
const maxInflight = 10000

const consumerNameRule = "a consumer name is 1 to 64 letters, digits, _ and -"
