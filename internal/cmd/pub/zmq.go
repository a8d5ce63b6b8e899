package pub

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/pushctl/pushctl/internal/cmdutil"
	"github.com/pushctl/pushctl/internal/zmq"
)

// publishZMQ sends the messages on a ZeroMQ PUB socket. It waits for
// subscribers first (sending into none would lose everything), waits
// instead of dropping when a subscriber is slow, and on exit gives queued
// messages up to --zmq-linger to leave.
func publishZMQ(ctx context.Context, in io.Reader, o *Options) error {
	ep, sopts, sep, err := o.ZMQ.Config()
	if err != nil {
		return err
	}
	if o.Event != "" {
		return cmdutil.FlagErrorf("--event has no place in ZeroMQ framing")
	}
	wait := o.WaitSubscribers
	if wait == 0 {
		wait = 1
	}
	// Messages come from a reader goroutine, so an interrupt is noticed
	// even while standard input is quiet.
	msgs := make(chan []byte, 1024)
	readErr := make(chan error, 1)
	go func() {
		defer close(msgs)
		switch {
		case in == nil:
			msgs <- []byte(strings.Join(o.Args, " "))
		case o.Lines:
			sc := bufio.NewScanner(in)
			sc.Buffer(make([]byte, 64<<10), 64<<20)
			for sc.Scan() {
				select {
				case msgs <- append([]byte(nil), sc.Bytes()...):
				case <-ctx.Done():
					return
				}
			}
			readErr <- sc.Err()
		default:
			b, err := io.ReadAll(io.LimitReader(in, 1<<30))
			if err != nil {
				readErr <- err
				return
			}
			msgs <- b
		}
	}()
	var st zmq.PubStats
	seq := uint64(0)
	err = zmq.RunPub(ctx, zmq.PubConfig{
		Endpoint: ep, SocketOptions: sopts, Block: true, Legacy: o.ZMQLegacy, Sep: sep,
		WaitSubscribers: wait, WaitTimeout: o.Timeout,
	}, &st, func(ctx context.Context) ([]zmq.Out, error) {
		select {
		case m, ok := <-msgs:
			if !ok {
				return nil, io.EOF
			}
			seq++
			batch := []zmq.Out{{Channel: o.Channel, Payload: m, Seq: seq}}
			for len(batch) < 256 { // take what is already read
				select {
				case m, ok := <-msgs:
					if !ok {
						return batch, io.EOF
					}
					seq++
					batch = append(batch, zmq.Out{Channel: o.Channel, Payload: m, Seq: seq})
				default:
					return batch, nil
				}
			}
			return batch, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	})
	zmq.Shutdown() // delivers what is queued, within the linger
	sent := st.Sent.Load()
	switch {
	case errors.Is(err, zmq.ErrCurveRefused):
		return err
	case errors.Is(err, zmq.ErrNoSubscribers):
		return fmt.Errorf("%w: %v", cmdutil.ErrTimeout, err)
	case ctx.Err() != nil:
		fmt.Fprintf(o.IO.ErrOut, "pushctl: interrupted after sending %s to %s\n", cmdutil.Plural(int(sent), "message"), ep.Addr)
		return cmdutil.ErrInterrupted
	case err != nil && !errors.Is(err, io.EOF):
		return fmt.Errorf("ZeroMQ %s: %w", ep.Addr, err)
	}
	select {
	case err := <-readErr:
		if err != nil {
			return fmt.Errorf("reading input after %s: %w", cmdutil.Plural(int(sent), "message"), err)
		}
	default:
	}
	if o.JSON {
		return json.NewEncoder(o.IO.Out).Encode(map[string]any{"endpoint": ep.Addr, "channel": o.Channel, "sent": sent, "dropped": st.Dropped.Load()})
	}
	fmt.Fprintf(o.IO.ErrOut, "pushctl: sent %s to %s on %s\n", cmdutil.Plural(int(sent), "message"), o.Channel, ep.Addr)
	return nil
}
