package client

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/wire"
)

// SubscribeOptions select what to receive.
type SubscribeOptions struct {
	Channels []string
	// Since is where to start: "all", a message id, a cursor, an RFC 3339
	// time or a duration ago. Empty: live messages only.
	Since string
	// Last replays up to that many retained messages per channel.
	Last int
	// NoReconnect returns the first connection error instead of retrying.
	NoReconnect bool
	// MaxBackoff caps the wait between reconnects (default 5s).
	MaxBackoff time.Duration
	// IdleTimeout reconnects when nothing, not even a keepalive, arrived
	// for this long (default 45s).
	IdleTimeout time.Duration
	// ConnectTimeout bounds the wait for a broker that never answered:
	// until one node answers once, failed attempts are retried quietly
	// and, after this long (default DefaultConnectTimeout), Subscribe
	// returns the UnreachableError. Once a broker answered, lost
	// connections are retried until ctx ends.
	ConnectTimeout time.Duration
	// RefreshToken, when set, is asked for a new token when the broker
	// ends the subscription because the token expired (token_expired);
	// the subscription goes on with it from where it was, losing nothing.
	// Without it, token_expired ends the subscription.
	RefreshToken func(context.Context) (string, error)
	// OnStatus is told about connection changes.
	OnStatus func(Status)
}

// State is a subscription's connection state.
type State string

// Connection states reported through OnStatus.
const (
	StateConnecting   State = "connecting"
	StateLive         State = "live"
	StateReconnecting State = "reconnecting"
	// StateTokenRefreshed: the token expired and RefreshToken gave a new
	// one; the subscription reconnects with it at once.
	StateTokenRefreshed State = "token-refreshed"
)

// Status is a connection change.
type Status struct {
	State   State
	Attempt int    // reconnect attempt, from 1
	Err     error  // why the connection was lost
	Cursor  string // position resumed from
}

// Event is a delivered message, or a gap notice.
type Event struct {
	Msg *broker.Message
	Gap *Gap
	// More is set when more events are already buffered: a consumer can
	// delay flushing its output until an event without it.
	More bool
}

// Gap says that messages of Channel after From are unavailable; the
// stream continues after To.
type Gap struct {
	Channel, From, To string
}

// ErrStop may be returned by a subscribe callback to end cleanly.
var ErrStop = errors.New("stop")

// retryable reports whether a subscribe error warrants reconnecting.
func retryable(err error) bool {
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.Status >= 500 || ae.Status == http.StatusRequestTimeout || ae.Status == http.StatusTooManyRequests
	}
	return true
}

// IsTokenExpired reports whether err is the broker saying the token expired.
func IsTokenExpired(err error) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.Code == wire.CodeTokenExpired
}

// TokenRefreshError is a failed RefreshToken.
type TokenRefreshError struct{ Err error }

func (e *TokenRefreshError) Error() string {
	return "the token expired and getting a new one failed: " + e.Err.Error()
}

func (e *TokenRefreshError) Unwrap() error { return e.Err }

// Subscribe streams events to fn until ctx ends, fn returns an error
// (ErrStop ends with nil) or a non-retryable error occurs. Lost
// connections are retried with backoff, resuming after the last message
// handed to fn so nothing still retained is lost or repeated.
func (c *Client) Subscribe(ctx context.Context, o SubscribeOptions, fn func(Event) error) error {
	if len(o.Channels) == 0 {
		return errors.New("no channel given")
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = 5 * time.Second
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = 45 * time.Second
	}
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = DefaultConnectTimeout
	}
	status := o.OnStatus
	if status == nil {
		status = func(Status) {}
	}
	// The one resume rule: a position per channel seen, and the time (on
	// the broker's clock) from which channels not seen yet are replayed.
	cursor := broker.Cursor{}
	var since time.Time
	attempt := 0
	backoff := 100 * time.Millisecond
	// Until a broker answers once, failures are quiet and bounded by
	// ConnectTimeout: "cannot reach" is an outcome of its own, not a
	// connection lost.
	start := time.Now()
	answered := false
	var lastErr error
	refreshes := 0
	for {
		q := url.Values{"format": {"ndjson"}}
		switch {
		case len(cursor) > 0 || !since.IsZero():
			q.Set("since", broker.FormatResume(cursor, since))
		case o.Since != "":
			q.Set("since", o.Since)
		}
		if o.Last > 0 && len(cursor) == 0 {
			q.Set("last", strconv.Itoa(o.Last))
		}
		if attempt == 0 && !answered {
			status(Status{State: StateConnecting})
		}
		delivered, live, err := c.subscribeOnce(ctx, o, q, cursor, &since, status, attempt, fn)
		if errors.Is(err, ErrStop) {
			return nil
		}
		if live {
			answered, refreshes = true, 0
		}
		if ctx.Err() != nil {
			if !answered && errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return c.neverAnswered(err, lastErr, start)
			}
			return ctx.Err()
		}
		if err == nil {
			err = errors.New("stream ended")
		}
		var fnErr *callbackError
		if errors.As(err, &fnErr) {
			return fnErr.err
		}
		if !errors.Is(err, ErrUnreachable) {
			answered = true
		}
		if IsTokenExpired(err) {
			if o.RefreshToken == nil || refreshes >= 3 {
				return err
			}
			refreshes++
			tok, rerr := o.RefreshToken(ctx)
			if rerr != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				return &TokenRefreshError{rerr}
			}
			c.SetToken(tok)
			status(Status{State: StateTokenRefreshed, Cursor: cursor.String()})
			continue
		}
		if o.NoReconnect || !retryable(err) {
			return err
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		if !answered {
			lastErr = err
			left := o.ConnectTimeout - time.Since(start)
			if left <= 0 {
				return err
			}
			wait = min(wait, left)
		} else {
			if delivered {
				backoff = 100 * time.Millisecond
			}
			attempt++
			status(Status{State: StateReconnecting, Attempt: attempt, Err: err, Cursor: cursor.String()})
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			if !answered && errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return c.neverAnswered(nil, lastErr, start)
			}
			return ctx.Err()
		}
		backoff = min(backoff*2, o.MaxBackoff)
	}
}

// neverAnswered is the error of a subscription whose deadline passed
// before any broker answered: the last attempt's, or an earlier one's.
func (c *Client) neverAnswered(err, lastErr error, start time.Time) error {
	switch {
	case errors.Is(err, ErrUnreachable):
		return err
	case lastErr != nil:
		return lastErr
	}
	return &UnreachableError{URL: c.URL(), Err: fmt.Errorf("no answer within %s", time.Since(start).Round(time.Millisecond))}
}

type callbackError struct{ err error }

func (e *callbackError) Error() string { return e.err.Error() }

// subscribeOnce runs one connection. It reports whether any event was
// delivered and whether the stream went live, and keeps cursor up to date.
func (c *Client) subscribeOnce(ctx context.Context, o SubscribeOptions, q url.Values, cursor broker.Cursor, since *time.Time, status func(Status), attempt int, fn func(Event) error) (delivered, live bool, err error) {
	delivered, err = c.stream(ctx, o, q, cursor, since, status, attempt, func() { live = true }, fn)
	return delivered, live, err
}

func (c *Client) stream(ctx context.Context, o SubscribeOptions, q url.Values, cursor broker.Cursor, since *time.Time, status func(Status), attempt int, onLive func(), fn func(Event) error) (bool, error) {
	// Channel names go into Path as they are; URL.String escapes them.
	paths := o.Channels
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req, err := http.NewRequestWithContext(cctx, "GET", c.url("/sub/"+strings.Join(paths, ","), q), nil)
	if err != nil {
		return false, err
	}
	req.Header.Set("Accept", "application/x-ndjson")
	resp, err := c.do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	if start := resp.Header.Get("Pushctl-Cursor"); start != "" {
		if sc, t, err := broker.ParseResume(start, o.Channels); err == nil {
			for ch, p := range sc {
				if _, ok := cursor[ch]; !ok {
					cursor[ch] = p
				}
			}
			if since.IsZero() || !t.IsZero() && t.Before(*since) {
				*since = t
			}
		}
	}
	onLive()
	st := Status{State: StateLive, Attempt: attempt}
	if attempt > 0 {
		st.Cursor = cursor.String()
	}
	status(st)

	// A watchdog ends a connection that went silent (no keepalive).
	var mu sync.Mutex
	idle := false
	timer := time.AfterFunc(o.IdleTimeout, func() { mu.Lock(); idle = true; mu.Unlock(); cancel() })
	defer timer.Stop()

	br := bufio.NewReaderSize(resp.Body, 64<<10)
	delivered := false
	var line []byte
	for {
		line, err = readLine(br, line[:0], maxLine)
		if err != nil {
			break
		}
		timer.Reset(o.IdleTimeout)
		if len(line) == 0 {
			continue // keepalive
		}
		env, err := wire.DecodeEnvelope(line)
		if err != nil {
			return delivered, fmt.Errorf("broker sent a bad line: %w", err)
		}
		var ev Event
		switch env.Type {
		case wire.TypeMessage, "":
			m, err := env.Message()
			if err != nil {
				return delivered, fmt.Errorf("broker sent a bad message: %w", err)
			}
			if p, ok := cursor[m.Channel]; ok && p.Epoch == m.Epoch && m.Seq <= p.Seq {
				continue // already delivered before a reconnect
			}
			ev.Msg = m
		case wire.TypeGap:
			ev.Gap = &Gap{Channel: env.Channel, From: env.From, To: env.To}
		case wire.TypeError:
			var ae APIError
			json.Unmarshal(line, &ae) // an unreadable reason still ends the stream
			ae.Status = http.StatusServiceUnavailable
			if ae.Code == wire.CodeTokenExpired {
				ae.Status = http.StatusUnauthorized // not worth retrying with the same token
			}
			return delivered, &ae
		default:
			continue // unknown control lines are for newer clients
		}
		ev.More = br.Buffered() > 0
		if err := fn(ev); err != nil {
			if errors.Is(err, ErrStop) {
				updateCursor(cursor, ev)
				return true, err
			}
			return delivered, &callbackError{err}
		}
		updateCursor(cursor, ev)
		delivered = true
	}
	if err == io.EOF {
		err = nil
	}
	mu.Lock()
	if idle {
		err = fmt.Errorf("no data or keepalive for %s", o.IdleTimeout)
	}
	mu.Unlock()
	if err == nil {
		err = errors.New("broker closed the stream")
	}
	return delivered, err
}

// maxLine bounds one NDJSON line from the broker.
const maxLine = 64 << 20

// readLine reads one line without its newline into buf.
func readLine(br *bufio.Reader, buf []byte, max int) ([]byte, error) {
	for {
		chunk, err := br.ReadSlice('\n')
		buf = append(buf, chunk...)
		if n := len(buf); n > max && !(n == max+1 && buf[n-1] == '\n') {
			return nil, fmt.Errorf("line longer than %d bytes", max)
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil {
			return buf, err
		}
		return buf[:len(buf)-1], nil
	}
}

func updateCursor(cursor broker.Cursor, ev Event) {
	switch {
	case ev.Msg != nil:
		cursor[ev.Msg.Channel] = ev.Msg.Position()
	case ev.Gap != nil:
		if p, err := broker.ParsePosition(ev.Gap.To); err == nil {
			cursor[ev.Gap.Channel] = p
		}
	}
}
