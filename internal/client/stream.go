package client

import (
	"context"
	crand "crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/pushctl/pushctl/internal/wire"
)

// Stream publishes many messages over one WebSocket connection, in order,
// with a bounded number awaiting their acks.
//
// Frames are written by a goroutine of the stream's own, all that queued
// up while it wrote in one system call: a publisher faster than the
// network sends few large writes, a slow one each frame at once. gorilla
// only reads (and sends the closing frame once nothing else writes); the
// pongs to the broker's pings go through the same queue.
type Stream struct {
	conn   *websocket.Conn
	window chan struct{}
	onAck  func(Ack)
	onErr  func(line int, err *APIError)

	wmu     sync.Mutex
	idle    *sync.Cond // signalled after each write and when the writer stops
	pending []byte     // masked frames waiting for the writer
	spare   []byte
	writing bool
	closing bool // the closing frame is gorilla's to write: no more frames
	werr    error
	masks   *rand.ChaCha8 // mask keys (RFC 6455 §5.3: unpredictable)
	frame   []byte        // scratch for one publish frame's JSON

	mu       sync.Mutex
	tooBig   bool // the broker closed with 1009: write errors are its echo
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
	return c.OpenStreamReplies(ctx, onAck, nil)
}

// OpenStreamReplies is OpenStream with onErr, if set, called for each
// message the broker refused (its line: the message's number, from 1),
// in order with the acks.
func (c *Client) OpenStreamReplies(ctx context.Context, onAck func(Ack), onErr func(line int, err *APIError)) (*Stream, error) {
	for tries := 1; ; tries++ {
		i := c.cur.Load()
		s, err := c.openStream(ctx, c.bases[i], onAck, onErr)
		if err == nil || !movable(err) || tries >= len(c.bases) || ctx.Err() != nil {
			return s, err
		}
		c.failover(i)
	}
}

func (c *Client) openStream(ctx context.Context, base *url.URL, onAck func(Ack), onErr func(int, *APIError)) (*Stream, error) {
	u := *base
	u.Path += "/ws"
	if u.Scheme == "https" {
		u.Scheme = "wss"
	} else {
		u.Scheme = "ws"
	}
	d := *websocket.DefaultDialer
	d.TLSClientConfig = c.tlsCfg
	d.NetDialContext = (&net.Dialer{Timeout: c.connectTimeout}).DialContext
	d.HandshakeTimeout = c.connectTimeout
	conn, resp, err := d.DialContext(ctx, u.String(), c.header())
	if err != nil {
		if resp != nil {
			defer resp.Body.Close()
			return nil, readAPIError(resp)
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, unreachable(base, err)
	}
	var seed [32]byte
	crand.Read(seed[:])
	s := &Stream{conn: conn, window: make(chan struct{}, StreamWindow), onAck: onAck, onErr: onErr, done: make(chan struct{}), masks: rand.NewChaCha8(seed)}
	s.idle = sync.NewCond(&s.wmu)
	conn.SetPingHandler(func(data string) error {
		s.queue(websocket.PongMessage, []byte(data))
		return nil
	})
	go s.readAcks()
	return s, nil
}

// queue adds one masked frame for the writer, starting it when it is not
// running.
func (s *Stream) queue(op byte, payload []byte) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.queueLocked(op, payload)
}

func (s *Stream) queueLocked(op byte, payload []byte) error {
	var key [4]byte
	if s.werr != nil {
		return s.werr
	}
	if s.closing {
		return net.ErrClosed
	}
	binary.LittleEndian.PutUint32(key[:], uint32(s.masks.Uint64()))
	s.pending = wire.AppendMaskedWSFrame(s.pending, op, payload, key)
	if !s.writing {
		s.writing = true
		go s.write()
	}
	return nil
}

// write sends what is queued, in as few writes as it can, until nothing is.
func (s *Stream) write() {
	nc := s.conn.NetConn()
	s.wmu.Lock()
	for len(s.pending) > 0 {
		buf := s.pending
		s.pending, s.spare = s.spare[:0], nil
		s.wmu.Unlock()
		_, err := nc.Write(buf)
		s.wmu.Lock()
		s.idle.Broadcast() // room for publishers waiting on maxPending
		if cap(buf) <= 1<<20 {
			s.spare = buf[:0]
		}
		if err != nil {
			s.werr = fmt.Errorf("sending: %w", err)
			s.pending = nil
			// The reader ends too, and with it waiting for acks; it may
			// first read why the broker stopped reading (a close frame
			// such as 1009, message too big), so only the sending half
			// closes, with a deadline for the rest.
			if cw, ok := nc.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
				nc.SetReadDeadline(time.Now().Add(2 * time.Second))
			} else {
				nc.Close()
			}
		}
	}
	s.writing = false
	s.idle.Broadcast()
	s.wmu.Unlock()
}

func (s *Stream) readAcks() {
	defer close(s.done)
	for {
		_, data, err := s.conn.ReadMessage()
		if err != nil {
			s.mu.Lock()
			switch n := s.sent - s.acked - s.failed; {
			case websocket.IsCloseError(err, websocket.CloseMessageTooBig):
				s.tooBig = true
				s.readErr = &APIError{Status: 413, Code: wire.CodeTooLarge, Message: fmt.Sprintf(
					"a message was larger than the broker's limit: it closed the connection (WebSocket 1009) with %s unacknowledged", plural(n, "message"))}
			case n > 0:
				s.readErr = fmt.Errorf("connection lost with %s unacknowledged: %w", plural(n, "message"), err)
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
			ae := &APIError{Status: 400, Code: f.Code, Message: f.Reason}
			s.mu.Lock()
			s.failed++
			if s.firstErr == nil {
				s.firstErr = fmt.Errorf("message %s: %w", f.Ref, ae)
			}
			s.mu.Unlock()
			if f.Ref != "" {
				if line, err := strconv.Atoi(f.Ref); err == nil && s.onErr != nil {
					s.onErr(line, ae)
				}
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
	s.wmu.Lock()
	defer s.wmu.Unlock()
	// Bound what waits in memory (the window bounds messages, not bytes):
	// past maxPending, wait for the writer as a blocking write would.
	for len(s.pending) >= maxPending && s.writing && s.werr == nil {
		s.idle.Wait()
	}
	s.frame = wire.AppendPublishFrame(s.frame[:0], ref, channel, event, data)
	return s.queueLocked(websocket.TextMessage, s.frame)
}

// maxPending bounds the bytes of frames queued for the writer.
const maxPending = 4 << 20

func (s *Stream) err() error {
	s.wmu.Lock()
	werr := s.werr
	s.wmu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tooBig {
		werr = nil // "broken pipe": the broker stopped reading the oversized frame
	}
	return errors.Join(werr, s.readErr, s.firstErr)
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.Itoa(n) + " " + noun + "s"
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
			<-s.done // the reader has made its last callback
			return s.ackedSoFar(), ctx.Err()
		}
	}
	// The closing frame is gorilla's to write, once the writer is done.
	s.wmu.Lock()
	s.closing = true
	for s.writing {
		s.idle.Wait()
	}
	s.wmu.Unlock()
	s.conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
	s.conn.Close()
	<-s.done
	return s.ackedSoFar(), s.err()
}

func (s *Stream) ackedSoFar() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.acked
}
