package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/pushctl/pushctl/internal/wire"
)

// Stream publishes many messages over one WebSocket connection, in order,
// with a bounded number awaiting their acks.
type Stream struct {
	conn   *websocket.Conn
	window chan struct{}
	onAck  func(Ack)

	mu       sync.Mutex
	sent     int
	acked    int
	failed   int
	firstErr error
	readErr  error
	done     chan struct{}
}

// StreamWindow is how many messages may await their acks at once.
const StreamWindow = 1024

// OpenStream dials the broker's WebSocket endpoint. onAck, if set, is
// called for each ack in order.
func (c *Client) OpenStream(ctx context.Context, onAck func(Ack)) (*Stream, error) {
	for tries := 1; ; tries++ {
		i := c.cur.Load()
		s, err := c.openStream(ctx, c.bases[i], onAck)
		if err == nil || !movable(err) || tries >= len(c.bases) || ctx.Err() != nil {
			return s, err
		}
		c.failover(i)
	}
}

func (c *Client) openStream(ctx context.Context, base *url.URL, onAck func(Ack)) (*Stream, error) {
	u := *base
	u.Path += "/ws"
	if u.Scheme == "https" {
		u.Scheme = "wss"
	} else {
		u.Scheme = "ws"
	}
	d := *websocket.DefaultDialer
	d.TLSClientConfig = c.tlsCfg
	conn, resp, err := d.DialContext(ctx, u.String(), c.header())
	if err != nil {
		if resp != nil {
			defer resp.Body.Close()
			return nil, readAPIError(resp)
		}
		return nil, fmt.Errorf("%w at %s: %v", ErrUnreachable, base, err)
	}
	s := &Stream{conn: conn, window: make(chan struct{}, StreamWindow), onAck: onAck, done: make(chan struct{})}
	go s.readAcks()
	return s, nil
}

func (s *Stream) readAcks() {
	defer close(s.done)
	for {
		_, data, err := s.conn.ReadMessage()
		if err != nil {
			s.mu.Lock()
			if s.acked+s.failed < s.sent {
				s.readErr = fmt.Errorf("connection lost with %d messages unacknowledged: %w", s.sent-s.acked-s.failed, err)
			}
			s.mu.Unlock()
			return // closing done frees blocked senders
		}
		f, err := wire.DecodeEnvelope(data)
		if err != nil {
			continue
		}
		switch f.Type {
		case wire.TypeAck:
			line, _ := strconv.Atoi(f.Ref)
			s.mu.Lock()
			s.acked++
			s.mu.Unlock()
			if s.onAck != nil {
				s.onAck(Ack{Line: line, ID: f.ID, Channel: f.Channel, Seq: f.Seq, Subscribers: f.Subscribers})
			}
			<-s.window
		case wire.TypeError:
			s.mu.Lock()
			s.failed++
			if s.firstErr == nil {
				s.firstErr = fmt.Errorf("message %s: %w", f.Ref, &APIError{Status: 400, Code: f.Code, Message: f.Reason})
			}
			s.mu.Unlock()
			if f.Ref != "" {
				<-s.window
			}
		}
	}
}

// Publish sends one message; it blocks while StreamWindow messages await
// their acks.
func (s *Stream) Publish(ctx context.Context, channel, event string, data []byte) error {
	select {
	case s.window <- struct{}{}:
	case <-s.done:
		return s.err()
	case <-ctx.Done():
		return ctx.Err()
	}
	s.mu.Lock()
	s.sent++
	ref := strconv.Itoa(s.sent)
	s.mu.Unlock()
	b, err := json.Marshal(wire.NewPublishFrame(ref, channel, event, data))
	if err != nil {
		return err
	}
	if err := s.conn.WriteMessage(websocket.TextMessage, b); err != nil {
		return fmt.Errorf("sending: %w", err)
	}
	return nil
}

func (s *Stream) err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return errors.Join(s.readErr, s.firstErr)
}

// Close waits for every ack, closes the connection and returns the first
// error: a rejected message or a lost connection.
func (s *Stream) Close(ctx context.Context) (acked int, err error) {
	// Fill the window: once every slot is ours, every message is acked.
	for i := 0; i < StreamWindow; i++ {
		select {
		case s.window <- struct{}{}:
		case <-s.done:
			i = StreamWindow
		case <-ctx.Done():
			s.conn.Close()
			return s.acked, ctx.Err()
		}
	}
	s.conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
	s.conn.Close()
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.acked, errors.Join(s.readErr, s.firstErr)
}
