package sub

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
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
//
// Three goroutines keep the deliveries flowing: one sends fetches while
// there is room, the next as soon as the reply of the one before began
// (so the broker prepares it while that one is read); the handler reads
// the replies in that order, prints, and hands the ids of what it flushed
// to stdout to the acker, a chunk at a time; the acker sends them without
// waiting for the answers to earlier ones (up to maxAcksInFlight requests
// at once). A delivery holds its slot of --max-inflight from its fetch
// until its acknowledgement was answered.
type durable struct {
	o  *Options
	p  *printer
	c  *client.Client
	co client.ConsumerOptions

	mu      sync.Mutex // the counts (the handler alone writes to stdout)
	running int        // deliveries held: fetched, their ack or nack not yet answered
	asked   int        // deliveries asked for by fetches whose reply was not read yet
	queued  int        // messages fetched and not yet handed to a handler (for --count)
	started int        // messages handed to a handler (for --count)
	free    chan struct{}
	acks    chan []string // delivery ids to acknowledge, a handled chunk at a time
	failed  error
	wg      sync.WaitGroup
}

// ackChunk is how many printed messages are flushed and acknowledged
// together: the broker can hand out their slots again while the rest of
// a fetch is printed.
const ackChunk = 250

// maxAcksInFlight bounds the acknowledgement requests sent and not yet
// answered (with --data-dir each answer waits for a commit, which the
// broker shares between the requests that came meanwhile).
const maxAcksInFlight = 4

func runDurable(ctx, sctx context.Context, o *Options, p *printer, c *client.Client) error {
	d := &durable{o: o, p: p, c: c, free: make(chan struct{}, 1), acks: make(chan []string, 1024),
		co: client.ConsumerOptions{Channel: o.Channels[0], AckWait: o.AckWait, MaxDeliveries: o.MaxDeliveries}}
	if o.Ordered {
		d.co.MaxInflight = 1
	}
	if o.Since == "all" {
		d.co.Start = "all"
	}
	// A fetch's lines are written out a chunk at a time, flushed before
	// their acknowledgement goes.
	p.out = bufio.NewWriterSize(o.IO.Out, 64<<10)
	ackDone := make(chan error, 1)
	actx, acancel := context.WithCancel(context.Background())
	go func() { ackDone <- d.acker(actx) }()
	fctx, fcancel := context.WithCancel(sctx)
	replies := make(chan fetching, 1)
	fetchDone := make(chan error, 1)
	go func() { fetchDone <- d.fetch(fctx, replies) }()
	var err error
	for f := range replies {
		if err != nil {
			f.r.Close() // not handled: delivered again after the ack wait
			continue
		}
		if err = d.read(sctx, f); err != nil {
			fcancel()
		}
	}
	if ferr := <-fetchDone; err == nil {
		err = ferr
	}
	fcancel()
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

// fetching is a fetch whose reply began, which asked for max deliveries.
type fetching struct {
	r   *client.FetchReply
	max int
}

// fetch sends fetches while there is room and passes their replies on to
// be read, until --count messages were handled, ctx ends or fetching
// fails for good; it closes out when it returns. The next fetch goes as
// soon as the reply of the one before began, so the broker prepares it
// while that one is read and printed: its deliveries come after them.
func (d *durable) fetch(ctx context.Context, out chan<- fetching) error {
	defer close(out)
	backoff := 100 * time.Millisecond
	warned := false
	for {
		d.mu.Lock()
		room := max(d.o.MaxInflight-d.running-d.asked, 0)
		if d.o.Count > 0 {
			room = min(room, d.o.Count-d.started-d.queued-d.asked)
		}
		failed, finished := d.failed, d.o.Count > 0 && d.started >= d.o.Count && d.running == 0
		n := min(room, consumer.MaxFetch)
		if failed == nil && !finished && n > 0 {
			d.asked += n // until its reply is read
		}
		d.mu.Unlock()
		if failed != nil {
			return failed
		}
		if finished {
			return client.ErrStop
		}
		if n <= 0 {
			select {
			case <-d.free:
				continue
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		r, err := d.c.FetchBegin(ctx, d.o.Durable, n, durableWait, d.co)
		if err != nil {
			d.mu.Lock()
			d.asked -= n
			d.mu.Unlock()
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
		out <- fetching{r, n} // the reader drains out until it is closed
	}
}

// read reads a fetch's deliveries as they arrive and handles them, a
// chunk at a time: the first are acknowledged while the broker still
// sends the rest.
func (d *durable) read(ctx context.Context, f fetching) error {
	lines := 0
	defer func() {
		f.r.Close()
		d.mu.Lock()
		d.asked -= f.max - lines
		d.mu.Unlock()
		d.wake() // what the fetch asked for and did not get is room again
	}()
	for {
		ds, err := f.r.Next(ackChunk)
		held := 0
		for _, dv := range ds {
			if dv.Gap == nil {
				held++
			}
		}
		lines += len(ds)
		d.mu.Lock()
		d.asked -= len(ds)
		d.running += held // until their ack or nack is answered
		d.queued += held  // until handled
		d.mu.Unlock()
		if herr := d.handle(ctx, ds); herr != nil {
			return herr
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			if ctx.Err() == nil && !d.o.Quiet {
				// Those not read come again after the ack wait.
				fmt.Fprintf(d.o.IO.ErrOut, "pushctl: reading a fetch from consumer %s failed (%v); going on\n", d.o.Durable, err)
			}
			return nil
		}
	}
}

// handle prints the deliveries and acknowledges them a chunk at a time,
// each once flushed to stdout, or starts --exec for each. Only the
// handler writes to stdout (d.p.out), so it writes without d.mu: a
// blocked stdout holds up neither the acknowledgement of what was
// flushed before nor the fetcher.
func (d *durable) handle(ctx context.Context, ds []client.Delivery) error {
	var done []string // printed (flushed before they are acknowledged) or not kept
	defer d.wake()    // --count: room for what was not kept
	for _, dv := range ds {
		if dv.Gap != nil {
			g := dv.Gap
			lost := "some"
			if dv.Lost > 0 {
				lost = fmt.Sprint(dv.Lost)
			}
			if err := d.p.gap(g, fmt.Sprintf("consumer %s could not keep %s messages of %s after %s (max pending, or history gone); continuing after %s", d.o.Durable, lost, g.Channel, g.From, g.To)); err != nil {
				return err
			}
			continue
		}
		keep, err := d.p.o.filter.Keep(ctx, dv.Msg.Data, dv.Msg.Kind == broker.KindJSON)
		keep = err == nil && keep
		d.mu.Lock()
		d.queued--
		if keep {
			d.started++
		}
		d.mu.Unlock()
		if !keep {
			done = append(done, dv.ID) // not for us: done with it
			continue
		}
		if d.o.Print {
			if err := write(d.p.out, d.o, dv.Msg); err != nil {
				return err
			}
		}
		if d.o.Exec == "" {
			d.mu.Lock()
			d.p.got++
			d.mu.Unlock()
			done = append(done, dv.ID)
			if len(done) >= ackChunk {
				if err := d.flushed(done); err != nil {
					return err
				}
				done = nil
			}
			continue
		}
		if err := d.p.out.Flush(); err != nil {
			return err
		}
		d.wg.Add(1)
		go d.exec(ctx, dv)
	}
	return d.flushed(done)
}

// flushed flushes what was printed, then has ids acknowledged: a message
// is acknowledged only once written to stdout.
func (d *durable) flushed(ids []string) error {
	if err := d.p.out.Flush(); err != nil {
		return err // not acknowledged: delivered again after the ack wait
	}
	if len(ids) > 0 {
		d.acks <- ids
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
// was answered (or that will come back after the ack wait).
func (d *durable) release(n int) {
	d.mu.Lock()
	d.running -= n
	d.mu.Unlock()
	d.wake()
}

// wake has the fetcher look at its room again.
func (d *durable) wake() {
	select {
	case d.free <- struct{}{}:
	default:
	}
}

// acker sends acknowledgements in batches, up to maxAcksInFlight requests
// at once: whatever gathered while all were out goes in the next one. It
// returns once every request sent was answered.
func (d *durable) acker(ctx context.Context) error {
	slots := make(chan struct{}, maxAcksInFlight)
	var wg sync.WaitGroup
	for {
		slots <- struct{}{}
		ids, ok := <-d.acks
		if !ok {
			wg.Wait()
			d.mu.Lock()
			err := d.failed
			d.mu.Unlock()
			return err
		}
		batch := append(make([]string, 0, len(ids)), ids...)
	drain:
		for len(batch) < wire.MaxAckIDs-consumer.MaxFetch {
			select {
			case ids, ok := <-d.acks:
				if !ok {
					break drain // the next receive sees it closed
				}
				batch = append(batch, ids...)
			default:
				break drain
			}
		}
		d.mu.Lock()
		failed := d.failed != nil
		d.mu.Unlock()
		if failed {
			<-slots // the handlers finish; nothing more is sent
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			if err := d.sendAcks(ctx, batch); err != nil {
				d.mu.Lock()
				if d.failed == nil {
					d.failed = err
				}
				d.mu.Unlock()
				d.release(0) // the fetcher sees the failure
				return
			}
			d.release(len(batch))
		}()
	}
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
