package sub

import (
	"context"
	"fmt"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/cmdutil"
	"github.com/pushctl/pushctl/internal/zmq"
)

// subscribeZMQ tails a ZeroMQ PUB socket. Channels filter exactly (ZeroMQ
// itself only filters by prefix); the sequence frame, when present,
// reveals messages the publisher dropped.
func subscribeZMQ(ctx, sctx context.Context, p *printer) error {
	o := p.o
	ep, sopts, sep, err := o.ZMQ.Config()
	if err != nil {
		return err
	}
	if o.Since != "" || o.Last > 0 {
		return cmdutil.FlagErrorf("--since and --last need a broker; a ZeroMQ publisher keeps no history")
	}
	sopts.Linger = 0
	last := map[string]uint64{}
	var local uint64
	err = zmq.RunSub(sctx, zmq.SubConfig{
		Endpoint: ep, Channels: o.Channels, Sep: sep, SocketOptions: sopts,
		OnMalformed: func(err error) {
			if !o.Quiet {
				fmt.Fprintf(o.IO.ErrOut, "pushctl: skipping a malformed ZeroMQ message: %v\n", err)
			}
		},
	}, nil, func(f zmq.Frame) error {
		local++
		seq := local
		if f.HasSeq {
			seq = f.Seq
			if prev, ok := last[f.Channel]; ok && seq > prev+1 {
				if err := p.gap(nil, fmt.Sprintf("%s missed on %s (sequence %d to %d)", cmdutil.Plural(int(seq-prev-1), "message"), f.Channel, prev, seq)); err != nil {
					return err
				}
			}
			last[f.Channel] = seq
		}
		kind, _ := broker.ClassifyData("", f.Payload)
		m := &broker.Message{Channel: f.Channel, Epoch: "zmq", Seq: seq, Event: broker.DefaultEvent, Kind: kind, Data: f.Payload, Time: time.Now().UTC()}
		return p.message(m, false)
	})
	zmq.Shutdown()
	return p.finish(ctx, err)
}
