package pub

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/pushctl/pushctl/internal/bridge"
	"github.com/pushctl/pushctl/internal/cmdutil"
)

// Appending to a Durable Stream of any server (ds://HOST:PORT/PATH,
// dss:// for HTTPS): each message is one append, made as an idempotent
// producer (a retried append is stored once); a stream that does not
// exist is created with --content-type (default
// application/octet-stream).

// isJSON reports whether a content type is JSON's.
func isJSON(ct string) bool {
	mt, _, _ := strings.Cut(strings.ToLower(ct), ";")
	mt = strings.TrimSpace(mt)
	return mt == "application/json" || strings.HasSuffix(mt, "+json")
}

// checkStream refuses the flags that have no meaning for a Durable Stream.
func (o *Options) checkStream(cmd interface{ Changed(string) bool }) error {
	u, err := url.Parse(o.Channel)
	if err != nil || u.Host == "" || u.Path == "" || u.Path == "/" {
		return cmdutil.FlagErrorf("%q: want ds://HOST:PORT/PATH (dss:// for HTTPS), such as ds://127.0.0.1:7070/v1/stream/chat", o.Channel)
	}
	for _, f := range []string{"wait-subscribers", "event", "via", "zmq", "zmq-legacy"} {
		if cmd.Changed(f) {
			return cmdutil.FlagErrorf("--%s: not for a Durable Stream (a stream has no events or subscribers to wait for; appends go over HTTP)", f)
		}
	}
	return nil
}

// publishStream appends the message, or each line with --lines.
func publishStream(ctx context.Context, in io.Reader, o *Options) error {
	raw := o.Channel
	if o.ContentType != "" {
		u, _ := url.Parse(raw)
		q := u.Query()
		q.Set("content-type", o.ContentType)
		u.RawQuery = q.Encode()
		raw = u.String()
	}
	hdr := http.Header{}
	if o.Factory.Token != "" {
		hdr.Set("Authorization", "Bearer "+o.Factory.Token)
	}
	env := &bridge.Env{Counters: &bridge.Counters{}, ConnectTimeout: o.Factory.ConnectTimeout, Warn: func(format string, args ...any) {
		fmt.Fprintf(o.IO.ErrOut, "pushctl: "+format+"\n", args...)
	}}
	sink, err := bridge.ParseSink(raw, bridge.EndpointOptions{Headers: hdr, CAFile: o.Factory.CAFile, ConnectTimeout: o.Factory.ConnectTimeout}, env)
	if err != nil {
		return &cmdutil.FlagError{Err: err}
	}
	n := 0
	// --timeout bounds each append (with its retries), not the whole
	// input, which --lines may make long.
	send := func(data []byte) error {
		actx, cancel := context.WithTimeout(ctx, o.Timeout)
		defer cancel()
		if err := sink.Send(actx, bridge.Message{Data: data}); err != nil {
			return err
		}
		n++
		return nil
	}
	switch {
	case o.Lines:
		// A byte stream has no message boundaries: its lines keep their
		// newline, so the stream holds the input as it was. A JSON
		// stream's lines are its values.
		nl := !isJSON(o.ContentType)
		sc := bufio.NewScanner(in)
		sc.Buffer(make([]byte, 64<<10), 64<<20)
		for err == nil && sc.Scan() {
			line := append([]byte(nil), sc.Bytes()...)
			if nl {
				line = append(line, '\n')
			}
			err = send(line)
		}
		if err == nil {
			err = sc.Err()
		}
	case in != nil:
		var data []byte
		if data, err = io.ReadAll(io.LimitReader(in, 1<<30)); err == nil {
			err = send(data)
		}
	default:
		err = send([]byte(strings.Join(o.Args, " ")))
	}
	sink.Close(ctx)
	switch {
	case err == nil:
	case ctx.Err() != nil:
		fmt.Fprintf(o.IO.ErrOut, "pushctl: interrupted: %s appended to %s\n", cmdutil.Plural(n, "message"), o.Channel)
		return cmdutil.ErrInterrupted
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%w: append to %s: %d appended, then no answer within --timeout %s", cmdutil.ErrTimeout, o.Channel, n, o.Timeout)
	default:
		return fmt.Errorf("append to %s (%d appended): %w", o.Channel, n, err)
	}
	if o.JSON {
		_, err := fmt.Fprintf(o.IO.Out, "{\"stream\":%q,\"appended\":%d}\n", o.Channel, n)
		return err
	}
	_, err = fmt.Fprintf(o.IO.Out, "%s appended=%d\n", o.Channel, n)
	return err
}
