package sub

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/aymanbagabas/go-osc52/v2"
	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/lipgloss"
	"github.com/muesli/termenv"
	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/client"
	"github.com/pushctl/pushctl/internal/cmdutil"
	"github.com/pushctl/pushctl/internal/tui"
	"github.com/pushctl/pushctl/internal/zmq"
)

// brokerConn is the client and subscription a broker feed uses.
type brokerConn struct {
	c  *client.Client
	so client.SubscribeOptions
}

func withClient(c *client.Client, so client.SubscribeOptions) brokerConn { return brokerConn{c, so} }

// runTUI shows the subscription in the terminal UI. The network goroutine
// only appends to a bounded store; the UI reads it at its own frame rate,
// so a fast stream never waits for the screen.
func runTUI(ctx, sctx context.Context, o *Options, bc ...brokerConn) error {
	store := tui.NewStore(o.TUIBuffer, 64<<20, nil)
	cfg := tui.Config{Channels: o.Channels, Store: store, Renderer: lipgloss.NewRenderer(o.IO.Out)}
	if os.Getenv("NO_COLOR") != "" {
		cfg.Renderer.SetColorProfile(termenv.Ascii)
	}
	cfg.Copy = func(text string) { osc52.New(text).WriteTo(o.IO.ErrOut) }
	fctx, cancel := context.WithCancel(sctx)
	defer cancel()
	got := 0
	count := func(m *broker.Message) error {
		if keep, _ := o.filter.Keep(fctx, m.Data, m.Kind == broker.KindJSON); !keep {
			return nil
		}
		store.Add(m)
		got++
		if o.Count > 0 && got >= o.Count {
			return client.ErrStop
		}
		return nil
	}
	var feed func() error
	if o.ZMQ.Endpoint != "" {
		ep, sopts, sep, err := o.ZMQ.Config()
		if err != nil {
			return err
		}
		sopts.Linger = 0
		cfg.Source, cfg.Transport = ep.String(), "zeromq"
		feed = func() error {
			store.SetState(tui.State{Phase: "live"})
			last := map[string]uint64{}
			var local uint64
			defer zmq.Shutdown()
			return zmq.RunSub(fctx, zmq.SubConfig{Endpoint: ep, Channels: o.Channels, Sep: sep, SocketOptions: sopts}, nil, func(f zmq.Frame) error {
				local++
				seq := local
				if f.HasSeq {
					seq = f.Seq
					if prev, ok := last[f.Channel]; ok && seq > prev+1 {
						store.Drop(seq - prev - 1)
					}
					last[f.Channel] = seq
				}
				kind, _ := broker.ClassifyData("", f.Payload)
				return count(&broker.Message{Channel: f.Channel, Epoch: "zmq", Seq: seq, Event: broker.DefaultEvent, Kind: kind,
					Data: append([]byte(nil), f.Payload...), Time: time.Now().UTC()})
			})
		}
	} else {
		c, so := bc[0].c, bc[0].so
		cfg.Source, cfg.Transport = c.URL(), "ndjson"
		cfg.Publish = func(ctx context.Context, ch, event string, data []byte) (string, error) {
			ack, err := c.Publish(ctx, ch, data, client.PublishOptions{Event: event})
			if err != nil {
				return "", err
			}
			return ack.ID, nil
		}
		feed = func() error {
			so.OnStatus = func(s client.Status) {
				st := tui.State{Phase: string(s.State), Attempt: s.Attempt}
				if s.Err != nil {
					st.Err = s.Err.Error()
				}
				if s.State == client.StateLive && s.Attempt > 0 {
					st.Phase = "resumed"
				}
				store.SetState(st)
			}
			return c.Subscribe(fctx, so, func(ev client.Event) error {
				if ev.Gap != nil {
					store.Gap()
					if o.FailOnGap {
						return &gapError{fmt.Sprintf("messages lost on %s after %s", ev.Gap.Channel, ev.Gap.From)}
					}
					return nil
				}
				return count(ev.Msg)
			})
		}
	}
	prog := tea.NewProgram(tui.New(cfg), tea.WithAltScreen(), tea.WithInput(o.IO.In), tea.WithOutput(o.IO.Out))
	feedErr := make(chan error, 1)
	go func() {
		err := feed()
		store.SetState(tui.State{Phase: "ended"})
		feedErr <- err
		prog.Send(tui.FeedDone{Err: err})
	}()
	final, runErr := prog.Run()
	cancel()
	err := <-feedErr
	if runErr != nil && !errors.Is(runErr, tea.ErrProgramKilled) {
		return fmt.Errorf("terminal UI: %w", runErr)
	}
	if m, ok := final.(tui.Model); ok {
		if m.Interrupted {
			return cmdutil.ErrInterrupted
		}
		if ended, _ := m.Done(); !ended {
			return nil // the user quit
		}
	}
	p := &printer{o: o, got: got}
	return p.result(ctx, err)
}
