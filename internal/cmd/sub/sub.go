// Package sub implements `pushctl sub`.
package sub

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"text/template"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/client"
	"github.com/pushctl/pushctl/internal/cmd/channels"
	"github.com/pushctl/pushctl/internal/cmdutil"
	"github.com/pushctl/pushctl/internal/wire"
	"github.com/spf13/cobra"
)

// Options are the flags of sub and its dependencies.
type Options struct {
	IO      *cmdutil.IOStreams
	Factory *cmdutil.Factory

	Channels  []string
	Server    string
	Format    string
	Template  string
	Count     int
	Timeout   time.Duration
	Since     string
	Last      int
	Exec      string
	NoTUI     bool
	FailOnGap bool
	Quiet     bool
	ZMQ       cmdutil.ZMQClientFlags
	// TUI is set when stdout is a terminal and no plain-output option
	// was given; TUIBuffer bounds the messages it keeps.
	TUI       bool
	TUIBuffer int
}

// NewCmdSub returns the sub command.
func NewCmdSub(f *cmdutil.Factory, runF func(context.Context, *Options) error) *cobra.Command {
	opts := &Options{IO: f.IO, Factory: f}
	cmd := &cobra.Command{
		Use:   "sub CHANNEL...",
		Short: "Subscribe to channels and print their messages",
		Long: `Subscribe to channels (or patterns: news.* matches one segment, news.>
any tail) and print each message on standard output.

On a terminal it opens a live UI (filter with /, details with enter, publish
with p, ? for keys); piped, or with --no-tui, --format, --template, --exec,
--count or --timeout, it prints plain lines.

Lost connections are retried with backoff and resume after the last message
printed, so nothing still in the broker's history is lost or repeated. When
the position is no longer retained a warning goes to stderr (--fail-on-gap
makes it an error).

Exit status: 0 when done, 1 on error, 2 on bad usage, 124 when --timeout
passed before --count messages (or, without --count, before any message),
130 when interrupted.`,
		Example: `  pushctl sub news
  pushctl sub news --count 1 --timeout 10s      # CI smoke test
  pushctl sub 'builds.>' --format json | jq .data
  pushctl sub news --last 10 --template '{{.Time}} {{.Channel}} {{.Data}}'
  pushctl sub alerts --exec 'notify-send "$PUSHCTL_CHANNEL" "$(cat)"'
  pushctl sub --zmq tcp://10.0.0.5:5556 'sensors.>'    # any libzmq PUB socket`,
		Args:              cmdutil.MinimumArgs(1, "CHANNEL"),
		ValidArgsFunction: channels.CompleteChannels(f, &opts.Server),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Channels = args
			for _, ch := range args {
				if err := broker.ValidatePattern(ch); err != nil {
					return &cmdutil.FlagError{Err: err}
				}
			}
			switch opts.Format {
			case "raw", "json", "sse":
			default:
				return cmdutil.FlagErrorf("--format %q: want raw, json or sse", opts.Format)
			}
			if opts.Count < 0 || opts.Last < 0 {
				return cmdutil.FlagErrorf("--count and --last must not be negative")
			}
			if opts.TUIBuffer < 100 {
				return cmdutil.FlagErrorf("--tui-buffer must be at least 100")
			}
			// The terminal UI is for watching; options that shape output or
			// end the command (smoke tests) mean plain lines.
			opts.TUI = opts.IO.OutTTY && !opts.NoTUI && !cmd.Flags().Changed("format") && opts.Template == "" &&
				opts.Exec == "" && opts.Count == 0 && opts.Timeout == 0
			if runF != nil {
				return runF(cmd.Context(), opts)
			}
			return Run(cmd.Context(), opts)
		},
	}
	fl := cmd.Flags()
	f.AddServerFlags(cmd, &opts.Server)
	fl.StringVarP(&opts.Format, "format", "o", "raw", "output: raw (data only), json (one envelope per line) or sse")
	fl.StringVar(&opts.Template, "template", "", "Go template per message: .Channel .ID .Seq .Event .Data .Time, and .JSON for JSON data")
	fl.IntVarP(&opts.Count, "count", "n", 0, "exit after this many messages")
	fl.DurationVar(&opts.Timeout, "timeout", 0, "give up after this long (exit 124 unless --count messages, or any without --count, arrived)")
	fl.StringVar(&opts.Since, "since", "", "replay from: all, a message id, ch=id,…, an RFC 3339 time or a duration ago (5m)")
	fl.IntVar(&opts.Last, "last", 0, "replay the last N retained messages of each channel first")
	fl.StringVar(&opts.Exec, "exec", "", "run this shell command per message, with the data on its stdin and PUSHCTL_CHANNEL, _ID, _SEQ, _EVENT, _TIME set")
	fl.BoolVar(&opts.NoTUI, "no-tui", false, "print plain lines even on a terminal")
	fl.IntVar(&opts.TUIBuffer, "tui-buffer", 10000, "messages the terminal UI keeps for scrolling and filtering")
	fl.BoolVar(&opts.FailOnGap, "fail-on-gap", false, "exit 1 when messages were lost from history instead of warning")
	fl.BoolVarP(&opts.Quiet, "quiet", "q", false, "no status lines on stderr")
	cmdutil.AddZMQClientFlags(cmd, &opts.ZMQ, "SUB")
	return cmd
}

// templateData is what --template sees.
type templateData struct {
	Channel string
	ID      string
	Seq     uint64
	Event   string
	Data    string
	Time    time.Time
	JSON    any
}

// printer writes messages in the chosen format and counts them.
type printer struct {
	ctx  context.Context
	o    *Options
	out  *bufio.Writer
	tmpl *template.Template
	got  int
}

// message prints m; it returns client.ErrStop once --count is reached.
// more says that further messages are already waiting.
func (p *printer) message(m *broker.Message, more bool) error {
	if err := write(p.out, p.o, p.tmpl, m); err != nil {
		return err
	}
	if p.o.Exec != "" {
		p.out.Flush()
		runExec(p.ctx, p.o, m)
	}
	p.got++
	if p.o.Count > 0 && p.got >= p.o.Count {
		return client.ErrStop
	}
	// Flush once nothing more is buffered, so a pipe reader sees each
	// message at once and bursts cost one write.
	if more {
		return nil
	}
	return p.out.Flush()
}

// gap reports lost messages; with --fail-on-gap it is an error.
func (p *printer) gap(msg string) error {
	if p.o.FailOnGap {
		return &gapError{msg}
	}
	if !p.o.Quiet {
		fmt.Fprintf(p.o.IO.ErrOut, "pushctl: warning: %s\n", msg)
	}
	return nil
}

type gapError struct{ msg string }

func (e *gapError) Error() string { return e.msg }

// finish flushes the output and maps how the subscription ended to the
// command's result.
func (p *printer) finish(ctx context.Context, err error) error {
	p.out.Flush()
	return p.result(ctx, err)
}

// result maps how the subscription ended to the command's result.
func (p *printer) result(ctx context.Context, err error) error {
	var ge *gapError
	switch {
	case err == nil || errors.Is(err, client.ErrStop):
		return nil
	case errors.As(err, &ge):
		return err
	case errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil:
		if p.o.Count > 0 && p.got < p.o.Count || p.o.Count == 0 && p.got == 0 {
			return fmt.Errorf("%w after %s: %d of %s messages", cmdutil.ErrTimeout, p.o.Timeout, p.got, want(p.o.Count))
		}
		return nil
	case ctx.Err() != nil:
		return cmdutil.ErrInterrupted
	}
	return fmt.Errorf("subscribe to %s: %w", p.what(), err)
}

func (p *printer) what() string {
	if p.o.ZMQ.Endpoint != "" {
		return p.o.ZMQ.Endpoint
	}
	return strings.Join(p.o.Channels, ",")
}

// Run subscribes until done.
func Run(ctx context.Context, o *Options) error {
	p := &printer{ctx: ctx, o: o, out: bufio.NewWriter(o.IO.Out)}
	if o.Template != "" {
		var err error
		p.tmpl, err = template.New("message").Funcs(template.FuncMap{
			"json": func(v any) (string, error) { b, err := json.Marshal(v); return string(b), err },
		}).Parse(o.Template)
		if err != nil {
			return cmdutil.FlagErrorf("--template: %v", err)
		}
	}
	sctx := ctx
	if o.Timeout > 0 {
		var cancel context.CancelFunc
		sctx, cancel = context.WithTimeout(ctx, o.Timeout)
		defer cancel()
	}
	if o.TUI {
		return runTUI(ctx, sctx, o)
	}
	if o.ZMQ.Endpoint != "" {
		return subscribeZMQ(ctx, sctx, p)
	}
	c, err := o.Factory.Client(o.Server)
	if err != nil {
		return err
	}
	status := func(s client.Status) {
		if o.Quiet {
			return
		}
		switch s.State {
		case client.StateReconnecting:
			fmt.Fprintf(o.IO.ErrOut, "pushctl: connection lost (%v); reconnecting, attempt %d\n", s.Err, s.Attempt)
		case client.StateLive:
			if s.Attempt > 0 {
				fmt.Fprintf(o.IO.ErrOut, "pushctl: reconnected, resuming after %s\n", s.Cursor)
			}
		}
	}
	err = c.Subscribe(sctx, client.SubscribeOptions{
		Channels: o.Channels, Since: o.Since, Last: o.Last, OnStatus: status,
	}, func(ev client.Event) error {
		if ev.Gap != nil {
			return p.gap(fmt.Sprintf("messages lost on %s: history no longer holds those after %s; continuing after %s", ev.Gap.Channel, ev.Gap.From, ev.Gap.To))
		}
		return p.message(ev.Msg, ev.More)
	})
	return p.finish(ctx, err)
}

func want(n int) string {
	if n == 0 {
		return "at least 1"
	}
	return strconv.Itoa(n)
}

func write(out *bufio.Writer, o *Options, tmpl *template.Template, m *broker.Message) error {
	if tmpl != nil {
		td := templateData{Channel: m.Channel, ID: m.ID(), Seq: m.Seq, Event: m.Event, Data: string(m.Data), Time: m.Time}
		if m.Kind == broker.KindJSON {
			json.Unmarshal(m.Data, &td.JSON)
		}
		var buf bytes.Buffer
		if err := tmpl.Execute(&buf, td); err != nil {
			return fmt.Errorf("--template: %w", err)
		}
		if !bytes.HasSuffix(buf.Bytes(), []byte("\n")) {
			buf.WriteByte('\n')
		}
		_, err := out.Write(buf.Bytes())
		return err
	}
	switch o.Format {
	case "json":
		_, err := out.Write(wire.JSON(m))
		return err
	case "sse":
		fmt.Fprintf(out, "id: %s\n", m.ID())
		if m.Event != broker.DefaultEvent {
			fmt.Fprintf(out, "event: %s\n", m.Event)
		}
		fmt.Fprintf(out, "channel: %s\n", m.Channel)
		for _, line := range strings.Split(string(m.Data), "\n") {
			fmt.Fprintf(out, "data: %s\n", line)
		}
		return out.WriteByte('\n')
	}
	out.Write(m.Data)
	return out.WriteByte('\n')
}

func runExec(ctx context.Context, o *Options, m *broker.Message) {
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", o.Exec)
	cmd.Stdin = bytes.NewReader(m.Data)
	cmd.Stdout = o.IO.Out
	cmd.Stderr = o.IO.ErrOut
	cmd.Env = append(os.Environ(),
		"PUSHCTL_CHANNEL="+m.Channel,
		"PUSHCTL_ID="+m.ID(),
		"PUSHCTL_SEQ="+strconv.FormatUint(m.Seq, 10),
		"PUSHCTL_EVENT="+m.Event,
		"PUSHCTL_TIME="+m.Time.Format(time.RFC3339Nano),
	)
	if err := cmd.Run(); err != nil && ctx.Err() == nil && !o.Quiet {
		fmt.Fprintf(o.IO.ErrOut, "pushctl: --exec for %s: %v\n", m.ID(), err)
	}
}
