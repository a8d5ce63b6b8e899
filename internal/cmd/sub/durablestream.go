package sub

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/pushctl/pushctl/internal/bridge"
	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/cmdutil"
)

// A Durable Stream of any server (ds://HOST:PORT/PATH, dss:// for HTTPS)
// is tailed by long-poll, resuming from the offset of the last read after
// a lost connection. Its messages are what each append carried (each
// value of a JSON stream); they are numbered from 1 in the order read:
// .ID is "ds-N", not the stream's offset.

// checkStream validates a ds:// argument and the flags that go with it.
func (o *Options) checkStream() error {
	if len(o.Channels) != 1 {
		return cmdutil.FlagErrorf("a Durable Stream URL is read alone: give one ds:// URL and no channels")
	}
	u, err := url.Parse(o.Channels[0])
	if err != nil || u.Host == "" || u.Path == "" || u.Path == "/" {
		return cmdutil.FlagErrorf("%q: want ds://HOST:PORT/PATH (dss:// for HTTPS), such as ds://127.0.0.1:7070/v1/stream/chat", o.Channels[0])
	}
	switch {
	case o.Last > 0:
		return cmdutil.FlagErrorf("--last: a Durable Stream is read from an offset; use --since all or --since OFFSET")
	case o.Durable != "":
		return cmdutil.FlagErrorf("--durable: durable consumers are a pushctl broker's; a Durable Stream is resumed by offset (--since OFFSET)")
	case o.ZMQ.Endpoint != "":
		return cmdutil.FlagErrorf("--zmq reads a ZeroMQ publisher, not a Durable Stream")
	case o.TokenCommand != "":
		return cmdutil.FlagErrorf("--token-command: give a Durable Stream's token with --token")
	}
	if u.Query().Get("offset") != "" && o.Since != "" {
		return cmdutil.FlagErrorf("--since %q: the URL already gives ?offset=", o.Since)
	}
	return nil
}

// streamURL is the ds:// URL to read: --since all is offset -1 (the
// start), another --since is the offset itself; none, from now.
func (o *Options) streamURL() string {
	u, _ := url.Parse(o.Channels[0])
	q := u.Query()
	switch o.Since {
	case "":
	case "all":
		q.Set("offset", "-1")
	default:
		q.Set("offset", o.Since)
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// subscribeStream tails a Durable Stream.
func subscribeStream(ctx, sctx context.Context, p *printer) error {
	o := p.o
	raw := o.streamURL()
	hdr := http.Header{}
	if o.Factory.Token != "" {
		hdr.Set("Authorization", "Bearer "+o.Factory.Token)
	}
	env := &bridge.Env{Counters: &bridge.Counters{}, ConnectTimeout: o.Factory.ConnectTimeout, Warn: func(format string, args ...any) {
		if !o.Quiet {
			fmt.Fprintf(o.IO.ErrOut, "pushctl: "+format+"\n", args...)
		}
	}}
	src, err := bridge.ParseSource(raw, bridge.EndpointOptions{Headers: hdr, CAFile: o.Factory.CAFile, ConnectTimeout: o.Factory.ConnectTimeout}, env)
	if err != nil {
		return &cmdutil.FlagError{Err: err}
	}
	u, _ := url.Parse(raw)
	name := u.Path
	var seq uint64
	err = src.Run(sctx, func(m bridge.Message) error {
		seq++
		kind, _ := broker.ClassifyData("", m.Data)
		bm := &broker.Message{Channel: name, Epoch: "ds", Seq: seq, Event: broker.DefaultEvent, Kind: kind, Data: m.Data, Time: time.Now().UTC()}
		return p.message(bm, false)
	})
	return p.finish(ctx, err)
}
