// Package sub implements `pushctl sub`.
package sub

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"text/template"
	"time"

	"github.com/pushctl/pushctl/internal/bridge"
	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/client"
	"github.com/pushctl/pushctl/internal/cmdutil"
	"github.com/pushctl/pushctl/internal/wire"
	"github.com/spf13/cobra"
)

// Options are the flags of sub and its dependencies.
type Options struct {
	IO      *cmdutil.IOStreams
	Factory *cmdutil.Factory

	Channels     []string
	Server       string
	Format       string
	Template     string
	Count        int
	Timeout      time.Duration
	Since        string
	Last         int
	Exec         string
	OnExecError  string
	TokenCommand string
	Filter       cmdutil.FilterFlags
	NoTUI        bool
	FailOnGap    bool
	Quiet        bool
	ZMQ          cmdutil.ZMQClientFlags
	// Durable names the broker's durable consumer to read through
	// (durable.go), with its settings.
	Durable       string
	MaxInflight   int
	AckWait       time.Duration
	MaxDeliveries int
	Ordered       bool
	// TUI is set when stdout is a terminal and no plain-output option
	// was given; TUIBuffer bounds the messages it keeps.
	TUI       bool
	TUIBuffer int
	// Print says whether messages go to stdout: always, except with
	// --exec when neither --format nor --template asks for them too.
	Print bool

	tmpl   *template.Template
	filter *cmdutil.Filter
}

// Exec failure policies (--on-exec-error).
const (
	ExecStop  = "stop"
	ExecRetry = "retry"
	ExecSkip  = "skip"
)

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
--count or --timeout, it prints plain lines: the data alone for one channel,
the channel, a tab and the data (--format line) for patterns and several
channels.

--where keeps the messages whose JSON data makes a jq expression true, and
--match those whose data matches a regular expression; --count counts the
messages kept, so --count 1 ends at the first match.

--exec runs a shell command per message, with the data on its standard
input; the messages are not printed unless --format or --template is also
given. When the command fails, --on-exec-error decides: stop (the default)
exits 1 naming the message and the --since that resumes at it; retry runs
it again with backoff until it succeeds; skip warns and goes on.

A broker that does not answer within --connect-timeout is an error of its
own: exit 1 "cannot reach …". Once connected, lost connections are retried
with backoff and resume after the last message handled, so nothing still in
the broker's history is lost or repeated. When the position is no longer
retained a warning goes to stderr (and a gap record to --format json;
--fail-on-gap makes it an error). When the token expires, sub stops with
that reason, or with --token-command gets a new one and goes on.

A Durable Stream of any server (ds://HOST:PORT/PATH, dss:// for HTTPS;
docs/durable-streams.md) is read by long-poll from now, from its start with
--since all, or from --since OFFSET, resuming from the last offset read
after a lost connection; it ends when the stream is closed.

Exit status: 0 when done, 1 on error (broker unreachable, --exec failed,
token expired), 2 on bad usage, 124 when connected but --timeout passed
before --count messages (or, without --count, before any message), 130
when interrupted.`,
		Example: `  pushctl sub news
  pushctl sub news --count 1 --timeout 10s      # CI smoke test
  pushctl sub deploys --where '.status == "done" and .env == "prod"' --count 1 --timeout 10m
  pushctl sub 'builds.>' --format json | jq .data
  pushctl sub news --last 10 --template '{{.Time}} {{.Channel}} {{.Data}}'
  pushctl sub alerts --exec 'notify-send "$PUSHCTL_CHANNEL" "$(cat)"' --on-exec-error skip
  pushctl sub orders --token-command 'vault read -field=token secret/pushctl'
  pushctl sub --zmq tcp://10.0.0.5:5556 'sensors.>'    # any libzmq PUB socket
  pushctl sub ds://127.0.0.1:7070/v1/stream/chat/room-1 --since all   # a Durable Stream`,
		Args:              cmdutil.MinimumArgs(1, "CHANNEL"),
		ValidArgsFunction: cmdutil.CompleteChannels(f, &opts.Server),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Channels = args
			if err := opts.validate(cmd); err != nil {
				return err
			}
			if runF != nil {
				return runF(cmd.Context(), opts)
			}
			return Run(cmd.Context(), opts)
		},
	}
	fl := cmd.Flags()
	f.AddServerFlags(cmd, &opts.Server)
	fl.StringVarP(&opts.Format, "format", "o", "", "output: raw (data only; the default for one channel), line (the channel, a tab, the data; the default for patterns and several channels), json (one envelope per line, gap records too) or sse")
	fl.StringVar(&opts.Template, "template", "", "Go template per message: .Channel .ID .Seq .Event .Data .Time (RFC 3339) .TimeUnixMilli, and .JSON for JSON data")
	fl.IntVarP(&opts.Count, "count", "n", 0, "exit after this many messages (those kept by --where and --match)")
	fl.DurationVar(&opts.Timeout, "timeout", 0, "give up after this long (exit 124 unless --count messages, or any without --count, arrived)")
	fl.StringVar(&opts.Since, "since", "", "replay from: all, a message id, ch=id,…, an RFC 3339 time or a duration ago (5m)")
	fl.IntVar(&opts.Last, "last", 0, "replay the last N retained messages of each channel first")
	fl.StringVar(&opts.Exec, "exec", "", "run this shell command per message, with the data on its stdin and PUSHCTL_CHANNEL, _ID, _SEQ, _EVENT, _TIME set (messages are then not printed unless --format or --template is given)")
	fl.StringVar(&opts.OnExecError, "on-exec-error", ExecStop, "when --exec fails: stop (exit 1 naming the message), retry (with backoff until it succeeds) or skip (warn and go on)")
	fl.StringVar(&opts.TokenCommand, "token-command", "", "shell command whose standard output is a token: run at start when --token is not given, and whenever the token expires")
	cmdutil.AddFilterFlags(cmd, &opts.Filter)
	fl.BoolVar(&opts.NoTUI, "no-tui", false, "print plain lines even on a terminal")
	fl.IntVar(&opts.TUIBuffer, "tui-buffer", 10000, "messages the terminal UI keeps for scrolling and filtering")
	fl.BoolVar(&opts.FailOnGap, "fail-on-gap", false, "exit 1 when messages were lost from history instead of warning")
	fl.BoolVarP(&opts.Quiet, "quiet", "q", false, "no status lines on stderr")
	cmdutil.AddZMQClientFlags(cmd, &opts.ZMQ, "SUB")
	addDurableFlags(cmd, opts)
	return cmd
}

// validate checks every flag before anything connects, as usage errors
// that name the flag and say what it accepts.
func (o *Options) validate(cmd *cobra.Command) error {
	stream := false
	for _, ch := range o.Channels {
		if bridge.IsDurableStream(ch) {
			stream = true
			continue
		}
		if err := broker.ValidatePattern(ch); err != nil {
			return &cmdutil.FlagError{Err: err}
		}
	}
	if stream {
		if err := o.checkStream(); err != nil {
			return err
		}
	}
	formatGiven := cmd.Flags().Changed("format") || o.Format != ""
	switch o.Format {
	case "":
		o.Format = "raw"
		if len(o.Channels) > 1 || broker.IsPattern(o.Channels[0]) {
			o.Format = "line"
		}
	case "raw", "line", "json", "sse":
	default:
		return cmdutil.FlagErrorf("--format %q: want raw, line, json or sse", o.Format)
	}
	if o.Count < 0 {
		return cmdutil.FlagErrorf("--count %d: want 0 or more", o.Count)
	}
	if o.Last < 0 {
		return cmdutil.FlagErrorf("--last %d: want 0 or more", o.Last)
	}
	if o.Timeout < 0 {
		return cmdutil.FlagErrorf("--timeout %s: want a positive duration such as 30s", o.Timeout)
	}
	if o.TUIBuffer < 100 {
		return cmdutil.FlagErrorf("--tui-buffer %d: want at least 100", o.TUIBuffer)
	}
	switch o.OnExecError {
	case ExecStop, ExecRetry, ExecSkip:
	default:
		return cmdutil.FlagErrorf("--on-exec-error %q: want stop, retry or skip", o.OnExecError)
	}
	if err := o.validateDurable(cmd); err != nil {
		return err
	}
	if o.Since != "" && o.ZMQ.Endpoint == "" && !stream {
		if err := checkSince(o.Since, o.Channels); err != nil {
			return err
		}
	}
	if o.Template != "" {
		t, err := parseTemplate(o.Template)
		if err != nil {
			return err
		}
		o.tmpl = t
	}
	flt, err := o.Filter.Compile()
	if err != nil {
		return err
	}
	o.filter = flt
	o.Print = o.Exec == "" || formatGiven || o.Template != ""
	// The terminal UI is for watching; options that shape output or
	// end the command (smoke tests) mean plain lines.
	o.TUI = o.IO.OutTTY && !o.NoTUI && !formatGiven && o.Template == "" &&
		o.Exec == "" && o.Count == 0 && o.Timeout == 0 && o.Durable == "" && !stream
	return nil
}

// checkSince accepts what the broker does for since: all, a message id or
// cursor, an RFC 3339 time, or a duration ago.
func checkSince(v string, chans []string) error {
	switch {
	case v == "all" || v == "0":
		return nil
	case strings.Contains(v, "=") || strings.Contains(v, "-") && !strings.Contains(v, ":"):
		if _, _, err := broker.ParseResume(v, chans); err != nil {
			return cmdutil.FlagErrorf("--since: %v", err)
		}
		return nil
	}
	if _, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return nil
	}
	if d, err := time.ParseDuration(v); err == nil && d > 0 {
		return nil
	}
	return cmdutil.FlagErrorf("--since %q: want all, a message id, ch=<id>,…, an RFC 3339 time or a duration such as 5m", v)
}

// templateData is what --template sees.
type templateData struct {
	Channel       string
	ID            string
	Seq           uint64
	Event         string
	Data          string
	Time          templateTime
	TimeUnixMilli int64
	JSON          any
}

// templateTime prints as RFC 3339 ({{.Time}}) and keeps time.Time's
// methods ({{.Time.Format "15:04"}}).
type templateTime struct{ time.Time }

func (t templateTime) String() string { return t.Time.Format(time.RFC3339Nano) }

const templateFields = ".Channel .ID .Seq .Event .Data .Time .TimeUnixMilli .JSON"

// parseTemplate parses --template and tries it on a sample message, so a
// field that does not exist is a usage error before connecting.
func parseTemplate(text string) (*template.Template, error) {
	t, err := template.New("message").Funcs(template.FuncMap{
		"json": func(v any) (string, error) { b, err := json.Marshal(v); return string(b), err },
	}).Parse(text)
	if err != nil {
		return nil, cmdutil.FlagErrorf("--template: %s", templateError(err))
	}
	sample := templateData{Channel: "news", ID: "e-1", Seq: 1, Event: broker.DefaultEvent, Data: "{}",
		Time: templateTime{time.Unix(0, 0).UTC()}, JSON: map[string]any{}}
	if err := t.Execute(io.Discard, sample); err != nil && fieldError.MatchString(err.Error()) {
		return nil, cmdutil.FlagErrorf("--template: %s", templateError(err))
	}
	return t, nil
}

var fieldError = regexp.MustCompile(`can't evaluate field (\w+) in type \S+`)

// templateError says what is wrong with a template in pushctl's words,
// not text/template's internal type names.
func templateError(err error) string {
	msg := strings.TrimPrefix(err.Error(), "template: ")
	if m := fieldError.FindStringSubmatch(msg); m != nil {
		return fmt.Sprintf("no field .%s; the fields are %s", m[1], templateFields)
	}
	return msg
}

// printer writes messages in the chosen format and counts them.
type printer struct {
	ctx context.Context
	o   *Options
	out *bufio.Writer
	got int
	// handled is the position of the last message handled per channel,
	// for the --since that resumes after a failure.
	handled broker.Cursor
	// whereErrs counts --where evaluation errors, reported once.
	whereErrs int
}

func newPrinter(ctx context.Context, o *Options) *printer {
	return &printer{ctx: ctx, o: o, out: bufio.NewWriter(o.IO.Out), handled: broker.Cursor{}}
}

// message prints m; it returns client.ErrStop once --count is reached.
// more says that further messages are already waiting.
func (p *printer) message(m *broker.Message, more bool) error {
	keep, err := p.o.filter.Keep(p.ctx, m.Data, m.Kind == broker.KindJSON)
	if err != nil && p.whereErrs == 0 && !p.o.Quiet {
		fmt.Fprintf(p.o.IO.ErrOut, "pushctl: warning: %v on message %s; such messages do not match\n", err, m.ID())
	}
	if err != nil {
		p.whereErrs++
	}
	if !keep {
		p.handled[m.Channel] = m.Position()
		if more {
			return nil
		}
		return p.out.Flush()
	}
	if p.o.Print {
		if err := write(p.out, p.o, m); err != nil {
			return err
		}
	}
	if p.o.Exec != "" {
		p.out.Flush()
		if err := p.exec(m); err != nil {
			return err
		}
	}
	p.handled[m.Channel] = m.Position()
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

// gap reports lost messages; with --fail-on-gap it is an error. With
// --format json (or sse) the notice is also a record on stdout, so a
// consumer of that stream sees it.
func (p *printer) gap(g *client.Gap, msg string) error {
	if g != nil && p.o.Print && p.o.tmpl == nil {
		switch p.o.Format {
		case "json":
			p.out.Write(gapRecord(g))
			p.out.WriteByte('\n')
		case "sse":
			fmt.Fprintf(p.out, "event: pushctl-gap\ndata: %s\n\n", gapRecord(g))
		}
		p.out.Flush()
	}
	if p.o.FailOnGap {
		return &gapError{msg}
	}
	if !p.o.Quiet {
		fmt.Fprintf(p.o.IO.ErrOut, "pushctl: warning: %s\n", msg)
	}
	return nil
}

// gapRecord is the gap notice of the broker's NDJSON stream.
func gapRecord(g *client.Gap) []byte {
	b := []byte(`{"type":"gap","channel":`)
	b = wire.AppendString(b, g.Channel)
	b = append(b, `,"from":`...)
	b = wire.AppendString(b, g.From)
	b = append(b, `,"to":`...)
	b = wire.AppendString(b, g.To)
	return append(b, '}')
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
	var ee *execError
	var ae *client.APIError
	var re *client.TokenRefreshError
	switch {
	case err == nil || errors.Is(err, client.ErrStop):
		return nil
	case errors.As(err, &ge), errors.As(err, &ee):
		return err
	case errors.Is(err, client.ErrUnreachable):
		return err
	case errors.As(err, &re):
		return fmt.Errorf("subscribe to %s: %w (--token-command)", p.what(), err)
	case client.IsTokenExpired(err):
		msg := fmt.Sprintf("subscribe to %s: the token expired (token_expired); give a new one with --token, or --token-command to renew it without stopping", p.what())
		if len(p.handled) > 0 {
			msg += "; resume with --since " + p.resume(nil)
		}
		return errors.New(msg)
	case errors.As(err, &ae) && ae.Status == 400 && ae.Code == wire.CodeInvalidPosition:
		return cmdutil.FlagErrorf("--since %q: %s", p.o.Since, ae.Message)
	case errors.As(err, &ae) && ae.Code == wire.CodeUnavailable:
		return fmt.Errorf("subscribe to %s: %w; retry, or use another node", p.what(), cmdutil.SubscribeErr(err))
	case errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil:
		if p.o.Count > 0 && p.got < p.o.Count || p.o.Count == 0 && p.got == 0 {
			return fmt.Errorf("%w after %s: %d of %s", cmdutil.ErrTimeout, p.o.Timeout, p.got, want(p.o.Count))
		}
		return nil
	case ctx.Err() != nil:
		return cmdutil.ErrInterrupted
	}
	return fmt.Errorf("subscribe to %s: %w", p.what(), err)
}

// resume is the --since that starts right after the messages handled,
// and at failed (not handled) when given.
func (p *printer) resume(failed *broker.Message) string {
	c := broker.Cursor{}
	for ch, pos := range p.handled {
		c[ch] = pos
	}
	if failed != nil {
		c[failed.Channel] = broker.Position{Epoch: failed.Epoch, Seq: failed.Seq - 1}
	}
	if len(c) == 1 && len(p.o.Channels) == 1 && !broker.IsPattern(p.o.Channels[0]) {
		for _, pos := range c {
			return pos.String()
		}
	}
	return c.String()
}

func (p *printer) what() string {
	if p.o.ZMQ.Endpoint != "" {
		return p.o.ZMQ.Endpoint
	}
	return strings.Join(p.o.Channels, ",")
}

// Run subscribes until done, or until the program reading its output
// (sub … | grep -m1 x) has exited.
func Run(ctx context.Context, o *Options) error {
	if !o.TUI {
		var stop func()
		ctx, stop = cmdutil.WhenReaderGone(ctx, o.IO.Out)
		defer stop()
	}
	err := run(ctx, o)
	if errors.Is(context.Cause(ctx), cmdutil.ErrReaderGone) {
		return nil // as a pipeline would have it: the reader has what it wanted
	}
	return err
}

func run(ctx context.Context, o *Options) error {
	p := newPrinter(ctx, o)
	if o.tmpl == nil && o.Template != "" { // Options filled by hand, as in tests
		t, err := parseTemplate(o.Template)
		if err != nil {
			return err
		}
		o.tmpl = t
	}
	sctx := ctx
	if o.Timeout > 0 {
		var cancel context.CancelFunc
		sctx, cancel = context.WithTimeout(ctx, o.Timeout)
		defer cancel()
	}
	if o.ZMQ.Endpoint != "" {
		if o.TUI {
			return runTUI(ctx, sctx, o)
		}
		return subscribeZMQ(ctx, sctx, p)
	}
	if bridge.IsDurableStream(o.Channels[0]) {
		return subscribeStream(ctx, sctx, p)
	}
	c, err := o.Factory.Client(o.Server)
	if err != nil {
		return err
	}
	so := client.SubscribeOptions{Channels: o.Channels, Since: o.Since, Last: o.Last, ConnectTimeout: o.Factory.ConnectTimeout}
	if o.TokenCommand != "" {
		if o.Factory.Token == "" {
			tok, err := runTokenCommand(ctx, o)
			if err != nil {
				return err
			}
			c.SetToken(tok)
		}
		so.RefreshToken = func(ctx context.Context) (string, error) { return runTokenCommand(ctx, o) }
	}
	if o.TUI {
		return runTUI(ctx, sctx, o, withClient(c, so))
	}
	if o.Durable != "" {
		return runDurable(ctx, sctx, o, p, c)
	}
	rec := &cmdutil.Reconnects{W: o.IO.ErrOut, Prefix: "pushctl: "}
	so.OnStatus = func(s client.Status) {
		if o.Quiet {
			return
		}
		if s.State == client.StateTokenRefreshed {
			fmt.Fprintf(o.IO.ErrOut, "pushctl: the token expired; resuming after %s with a new one from --token-command\n", s.Cursor)
			return
		}
		rec.Status(s)
	}
	err = c.Subscribe(sctx, so, func(ev client.Event) error {
		if ev.Gap != nil {
			return p.gap(ev.Gap, fmt.Sprintf("messages lost on %s: history no longer holds those after %s; continuing after %s", ev.Gap.Channel, ev.Gap.From, ev.Gap.To))
		}
		return p.message(ev.Msg, ev.More)
	})
	return p.finish(ctx, err)
}

// runTokenCommand runs --token-command and returns its output, trimmed.
func runTokenCommand(ctx context.Context, o *Options) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", o.TokenCommand)
	cmd.Stderr = o.IO.ErrOut
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("--token-command: %v", err)
	}
	tok := strings.TrimSpace(string(out))
	if tok == "" || strings.ContainsAny(tok, " \n\t") {
		return "", errors.New("--token-command printed no token (want the token alone on standard output)")
	}
	return tok, nil
}

func want(n int) string {
	if n == 0 {
		return "at least 1 message"
	}
	return cmdutil.Plural(n, "message")
}

func write(out *bufio.Writer, o *Options, m *broker.Message) error {
	if o.tmpl != nil {
		td := templateData{Channel: m.Channel, ID: m.ID(), Seq: m.Seq, Event: m.Event, Data: string(m.Data),
			Time: templateTime{m.Time}, TimeUnixMilli: m.Time.UnixMilli()}
		if m.Kind == broker.KindJSON {
			json.Unmarshal(m.Data, &td.JSON)
		}
		var buf bytes.Buffer
		if err := o.tmpl.Execute(&buf, td); err != nil {
			return fmt.Errorf("--template: %s", templateError(err))
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
	case "line":
		_, err := out.Write(wire.RawTagged(m))
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

// execError is --exec failing under --on-exec-error stop.
type execError struct {
	m      *broker.Message
	err    error
	resume string
}

func (e *execError) Error() string {
	return fmt.Sprintf("--exec failed for message %s on %s (%v); it and later messages were not handled: resume with --since %s",
		e.m.ID(), e.m.Channel, e.err, e.resume)
}

// exec runs --exec for m under the --on-exec-error policy.
func (p *printer) exec(m *broker.Message) error {
	o := p.o
	wait := 100 * time.Millisecond
	var lastWarn time.Time
	for attempt := 1; ; attempt++ {
		err := runExec(p.ctx, o, m)
		if err == nil {
			if attempt > 1 && !o.Quiet {
				fmt.Fprintf(o.IO.ErrOut, "pushctl: --exec for message %s succeeded on attempt %d\n", m.ID(), attempt)
			}
			return nil
		}
		if p.ctx.Err() != nil {
			return p.ctx.Err()
		}
		switch o.OnExecError {
		case ExecSkip:
			if !o.Quiet {
				fmt.Fprintf(o.IO.ErrOut, "pushctl: warning: --exec failed for message %s on %s (%v); skipped\n", m.ID(), m.Channel, err)
			}
			return nil
		case ExecRetry:
			if !o.Quiet && (attempt == 1 || time.Since(lastWarn) >= 30*time.Second) {
				lastWarn = time.Now()
				fmt.Fprintf(o.IO.ErrOut, "pushctl: --exec failed for message %s on %s (%v); retrying (attempt %d)\n", m.ID(), m.Channel, err, attempt+1)
			}
			t := time.NewTimer(wait/2 + rand.N(wait/2+1))
			select {
			case <-t.C:
			case <-p.ctx.Done():
				t.Stop()
				return p.ctx.Err()
			}
			wait = min(wait*2, 30*time.Second)
		default:
			return &execError{m: m, err: err, resume: p.resume(m)}
		}
	}
}

func runExec(ctx context.Context, o *Options, m *broker.Message) error {
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
	return cmd.Run()
}
