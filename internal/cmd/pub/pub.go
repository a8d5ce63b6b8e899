// Package pub implements `pushctl pub`.
package pub

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/pushctl/pushctl/internal/bridge"
	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/client"
	"github.com/pushctl/pushctl/internal/cmdutil"
	"github.com/pushctl/pushctl/internal/wire"
	"github.com/spf13/cobra"
)

// Options are the flags of pub and its dependencies.
type Options struct {
	IO      *cmdutil.IOStreams
	Factory *cmdutil.Factory

	Channel         string
	Args            []string
	Server          string
	File            string
	Lines           bool
	Event           string
	ContentType     string
	WaitSubscribers int
	Timeout         time.Duration
	JSON            bool
	Via             string
	Key             string
	ZMQ             cmdutil.ZMQClientFlags
	ZMQLegacy       bool
}

// NewCmdPub returns the pub command.
func NewCmdPub(f *cmdutil.Factory, runF func(context.Context, *Options) error) *cobra.Command {
	opts := &Options{IO: f.IO, Factory: f}
	cmd := &cobra.Command{
		Use:   "pub CHANNEL [MESSAGE...]",
		Short: "Publish messages to a channel",
		Long: `Publish a message to a channel and print the broker's acknowledgement.

The message is the arguments joined by spaces, the contents of --file, or
all of standard input. With --lines every line of the input is a message of
its own, streamed over one connection in order; a summary goes to stderr.

CHANNEL may instead be a Durable Stream of any server (ds://HOST:PORT/PATH,
dss:// for HTTPS; docs/durable-streams.md): each message is one append, made
as an idempotent producer so a retried append is stored once, and a stream
that does not exist is created with --content-type.`,
		Example: `  pushctl pub news hello
  echo '{"build":42,"ok":true}' | pushctl pub builds --event finished
  seq 1 100000 | pushctl pub news --lines
  pushctl pub news --wait-subscribers 2 --timeout 30s 'deploy done'
  pushctl pub deploys --key deploy-42 'v42 is out'                     # stored once, however often it runs
  seq 10 | pushctl pub sensors.t1 --lines --zmq tcp://127.0.0.1:7071   # into a broker's --zmq-in
  pushctl pub ds://127.0.0.1:7070/v1/stream/chat/room-1 hello          # append to a Durable Stream`,
		Args: cmdutil.MinimumArgs(1, "CHANNEL"),
		ValidArgsFunction: func(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
			if len(args) > 0 {
				return nil, cobra.ShellCompDirectiveNoFileComp
			}
			return cmdutil.CompleteChannels(f, &opts.Server)(cmd, args, toComplete)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Channel, opts.Args = args[0], args[1:]
			if bridge.IsDurableStream(opts.Channel) {
				if err := opts.checkStream(cmd.Flags()); err != nil {
					return err
				}
			} else if err := broker.ValidateChannel(opts.Channel); err != nil {
				return &cmdutil.FlagError{Err: err}
			}
			if len(opts.Args) > 0 && opts.File != "" {
				return cmdutil.FlagErrorf("give the message as arguments or with --file, not both")
			}
			if opts.Lines && len(opts.Args) > 0 {
				return cmdutil.FlagErrorf("--lines reads standard input or --file, not arguments")
			}
			switch opts.Via {
			case "http", "ws":
			default:
				return cmdutil.FlagErrorf("--via %q: want http or ws", opts.Via)
			}
			if opts.Key != "" {
				if err := broker.ValidateKey(opts.Key); err != nil {
					return cmdutil.FlagErrorf("--key: 1 to %d printable ASCII characters without spaces", broker.MaxKeyLen)
				}
				for _, f := range []string{"lines", "zmq"} {
					if cmd.Flags().Changed(f) {
						return cmdutil.FlagErrorf("--key names one message published over HTTP; it cannot go with --%s", f)
					}
				}
				if opts.Via != "http" {
					return cmdutil.FlagErrorf("--key names one message published over HTTP; it cannot go with --via %s", opts.Via)
				}
				if bridge.IsDurableStream(opts.Channel) {
					return cmdutil.FlagErrorf("--key is for a pushctl channel; a Durable Stream append is already made as an idempotent producer")
				}
			}
			if runF != nil {
				return runF(cmd.Context(), opts)
			}
			return Run(cmd.Context(), opts)
		},
	}
	fl := cmd.Flags()
	f.AddServerFlags(cmd, &opts.Server)
	fl.StringVarP(&opts.File, "file", "f", "", "read the message from this file (- for stdin)")
	fl.BoolVarP(&opts.Lines, "lines", "L", false, "publish each input line as a message, over one connection")
	fl.StringVarP(&opts.Event, "event", "e", "", "event name (default \"message\")")
	fl.StringVarP(&opts.ContentType, "content-type", "t", "", "content type of the data (application/json, application/octet-stream, text/plain)")
	fl.IntVarP(&opts.WaitSubscribers, "wait-subscribers", "w", 0, "wait until the channel has this many subscribers before publishing")
	fl.DurationVar(&opts.Timeout, "timeout", 30*time.Second, "give up after this long (exit 124 while waiting for subscribers)")
	fl.BoolVar(&opts.JSON, "json", false, "print acknowledgements as JSON (with --lines, each refused line too)")
	fl.StringVar(&opts.Key, "key", "", "idempotency key: the channel stores one message per key within two minutes, so a script run twice publishes once")
	fl.StringVar(&opts.Via, "via", "http", "transport for single messages: http or ws (--lines always streams over ws)")
	cmdutil.AddZMQClientFlags(cmd, &opts.ZMQ, "PUB")
	fl.BoolVar(&opts.ZMQLegacy, "zmq-legacy", false, "send single-frame \"channel<sep>payload\" messages for legacy subscribers")
	return cmd
}

// Run publishes.
func Run(ctx context.Context, o *Options) error {
	var in io.Reader
	switch {
	case o.File == "-" || (o.File == "" && len(o.Args) == 0):
		if o.File == "" && o.IO.InTTY {
			return cmdutil.FlagErrorf("no message: give it as arguments, with --file, or on standard input")
		}
		in = o.IO.In
	case o.File != "":
		f, err := os.Open(o.File)
		if err != nil {
			return err
		}
		defer f.Close()
		in = f
	}
	if o.ZMQ.Endpoint != "" {
		return publishZMQ(ctx, in, o)
	}
	if bridge.IsDurableStream(o.Channel) {
		return publishStream(ctx, in, o)
	}
	c, err := o.Factory.Client(o.Server)
	if err != nil {
		return err
	}
	if o.WaitSubscribers > 0 {
		wctx, cancel := context.WithTimeout(ctx, o.Timeout+5*time.Second)
		err := c.WaitSubscribers(wctx, o.Channel, o.WaitSubscribers, o.Timeout)
		cancel()
		if err != nil {
			return waitError(ctx, err, o)
		}
	}
	if o.Lines {
		return publishLines(ctx, c, in, o)
	}
	var data []byte
	if in != nil {
		if data, err = io.ReadAll(io.LimitReader(in, 1<<30)); err != nil {
			return fmt.Errorf("reading message: %w", err)
		}
	} else {
		data = []byte(strings.Join(o.Args, " "))
	}
	pctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	var ack *client.Ack
	if o.Via == "ws" {
		ack, err = publishOneWS(pctx, c, data, o)
	} else {
		ack, err = c.Publish(pctx, o.Channel, data, client.PublishOptions{Event: o.Event, ContentType: o.ContentType, Key: o.Key})
	}
	if err != nil {
		if ctx.Err() != nil {
			return cmdutil.ErrInterrupted
		}
		return publishError(o.Channel, err)
	}
	return printAck(o, ack)
}

// publishError names the flag that sets the limit a message went over,
// whichever transport said so.
func publishError(channel string, err error) error {
	var ae *client.APIError
	if errors.As(err, &ae) && ae.Code == wire.CodeTooLarge {
		return fmt.Errorf("publish to %s: %w; the broker sets its limit with serve --max-message-size", channel, err)
	}
	return fmt.Errorf("publish to %s: %w", channel, err)
}

func waitError(ctx context.Context, err error, o *Options) error {
	var ae *client.APIError
	if ctx.Err() != nil {
		return cmdutil.ErrInterrupted
	}
	if errors.As(err, &ae) && ae.Code == "wait_timeout" || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%w: fewer than %s on %s after %s", cmdutil.ErrTimeout, cmdutil.Plural(o.WaitSubscribers, "subscriber"), o.Channel, o.Timeout)
	}
	return fmt.Errorf("waiting for subscribers: %w", err)
}

func publishOneWS(ctx context.Context, c *client.Client, data []byte, o *Options) (*client.Ack, error) {
	var got *client.Ack
	s, err := c.OpenStream(ctx, func(a client.Ack) { got = &a })
	if err != nil {
		return nil, err
	}
	if err := s.Publish(ctx, o.Channel, o.Event, data); err != nil {
		if _, cerr := s.Close(ctx); cerr != nil {
			return nil, cerr // why the connection ended, such as 1009
		}
		return nil, err
	}
	if _, err := s.Close(ctx); err != nil {
		return nil, err
	}
	if got == nil {
		return nil, errors.New("no acknowledgement")
	}
	return got, nil
}

func printAck(o *Options, a *client.Ack) error {
	if o.JSON {
		return json.NewEncoder(o.IO.Out).Encode(a)
	}
	if a.Duplicate {
		_, err := fmt.Fprintf(o.IO.Out, "%s %s duplicate (published before with this key)\n", a.Channel, a.ID)
		return err
	}
	_, err := fmt.Fprintf(o.IO.Out, "%s %s subscribers=%d\n", a.Channel, a.ID, a.Subscribers)
	return err
}

// lineError is what --lines --json prints for a line the broker refused.
type lineError struct {
	Line  int           `json:"line"`
	Error lineErrorBody `json:"error"`
}

type lineErrorBody struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func publishLines(ctx context.Context, c *client.Client, in io.Reader, o *Options) error {
	var out *bufio.Writer
	if o.JSON {
		out = bufio.NewWriter(o.IO.Out)
		defer out.Flush()
	}
	enc := json.NewEncoder(out)
	var last client.Ack
	var onErr func(int, *client.APIError)
	if out != nil {
		// Each refused line too, as an NDJSON publish's reply says it.
		onErr = func(line int, e *client.APIError) {
			enc.Encode(lineError{Line: line, Error: lineErrorBody{Code: e.Code, Message: e.Message}})
			out.Flush()
		}
	}
	s, err := c.OpenStreamReplies(ctx, func(a client.Ack) {
		last = a
		if out != nil {
			enc.Encode(a)
			out.Flush() // a reader sees each ack as it comes
		}
	}, onErr)
	if err != nil {
		return fmt.Errorf("publish to %s: %w", o.Channel, err)
	}
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	n := 0
	for sc.Scan() {
		line := sc.Bytes()
		if err := s.Publish(ctx, o.Channel, o.Event, append([]byte(nil), line...)); err != nil {
			break
		}
		n++
	}
	readErr := sc.Err()
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), o.Timeout)
	defer cancel()
	acked, err := s.Close(cctx)
	if ctx.Err() != nil {
		fmt.Fprintf(o.IO.ErrOut, "pushctl: interrupted: %d of %s acknowledged on %s\n", acked, cmdutil.Plural(n, "message"), o.Channel)
		return cmdutil.ErrInterrupted
	}
	if err != nil {
		return publishError(o.Channel, fmt.Errorf("%d of %s acknowledged: %w", acked, cmdutil.Plural(n, "message"), err))
	}
	if readErr != nil {
		return fmt.Errorf("reading input after %s: %w", cmdutil.Plural(n, "message"), readErr)
	}
	if !o.JSON {
		fmt.Fprintf(o.IO.ErrOut, "pushctl: published %s to %s", cmdutil.Plural(acked, "message"), o.Channel)
		if acked > 0 {
			fmt.Fprintf(o.IO.ErrOut, " (last id %s)", last.ID)
		}
		fmt.Fprintln(o.IO.ErrOut)
	}
	return nil
}
