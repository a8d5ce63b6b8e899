//go:build cgo && !nozmq

package zmq

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	zmq4 "github.com/pebbe/zmq4"
)

// Version returns the linked libzmq version and whether it supports CURVE.
func Version() (string, bool) {
	a, b, c := zmq4.Version()
	return fmt.Sprintf("%d.%d.%d", a, b, c), zmq4.HasCurve()
}

// NewKeypair generates a CURVE key pair (Z85 text).
func NewKeypair() (public, secret string, err error) {
	if !zmq4.HasCurve() {
		return "", "", ErrNoCurve
	}
	return zmq4.NewCurveKeypair()
}

// PublicFromSecret derives the public key of a Z85 secret key.
func PublicFromSecret(secret string) (string, error) {
	if !zmq4.HasCurve() {
		return "", ErrNoCurve
	}
	if len(secret) != 40 {
		return "", errors.New("a CURVE secret key is 40 characters of Z85")
	}
	return zmq4.AuthCurvePublic(secret)
}

var (
	authMu      sync.Mutex
	authStarted bool
	authDomains int
)

// curveDomain starts the ZAP handler (once per process) and registers the
// allowed client keys under a fresh domain for one server socket.
func curveDomain(allowed []string) (string, error) {
	authMu.Lock()
	defer authMu.Unlock()
	if !authStarted {
		if err := zmq4.AuthStart(); err != nil {
			return "", fmt.Errorf("start ZeroMQ authentication: %w", err)
		}
		authStarted = true
	}
	authDomains++
	domain := fmt.Sprintf("pushctl%d", authDomains)
	if len(allowed) == 0 {
		zmq4.AuthCurveAdd(domain, zmq4.CURVE_ALLOW_ANY)
	} else {
		zmq4.AuthCurveAdd(domain, allowed...)
	}
	return domain, nil
}

func open(t zmq4.Type, ep Endpoint, o SocketOptions) (*zmq4.Socket, error) {
	if o.Curve.enabled() && !zmq4.HasCurve() {
		return nil, ErrNoCurve
	}
	s, err := zmq4.NewSocket(t)
	if err != nil {
		return nil, fmt.Errorf("create ZeroMQ socket: %w", err)
	}
	fail := func(err error) (*zmq4.Socket, error) { s.SetLinger(0); s.Close(); return nil, err }
	if err := s.SetLinger(o.Linger); err != nil {
		return fail(err)
	}
	if o.HWM > 0 {
		s.SetSndhwm(o.HWM)
		s.SetRcvhwm(o.HWM)
	}
	if c := o.Curve; c.enabled() {
		if c.ServerSecret != "" {
			domain, err := curveDomain(c.AllowedClients)
			if err != nil {
				return fail(err)
			}
			if err := s.ServerAuthCurve(domain, c.ServerSecret); err != nil {
				return fail(fmt.Errorf("CURVE server key: %w", err))
			}
		} else {
			if c.ClientPublic == "" || c.ClientSecret == "" {
				pub, sec, err := zmq4.NewCurveKeypair()
				if err != nil {
					return fail(err)
				}
				c.ClientPublic, c.ClientSecret = pub, sec
			}
			if err := s.ClientAuthCurve(c.ServerPublic, c.ClientPublic, c.ClientSecret); err != nil {
				return fail(fmt.Errorf("CURVE client keys: %w", err))
			}
		}
	}
	if ep.Bind {
		err = s.Bind(ep.Addr)
	} else {
		err = s.Connect(ep.Addr)
	}
	if err != nil {
		verb := "connect to"
		if ep.Bind {
			verb = "bind"
		}
		return fail(fmt.Errorf("%s %s: %w", verb, ep.Addr, err))
	}
	return s, nil
}

// pollInterval bounds how long an owner goroutine waits in libzmq before
// checking whether it should stop.
const pollInterval = 50 * time.Millisecond

// RunSub receives until ctx ends or fn returns an error, handing each
// message that matches the channels to fn. The socket lives and dies in
// the calling goroutine.
func RunSub(ctx context.Context, c SubConfig, st *SubStats, fn func(Frame) error) error {
	if c.Sep == 0 {
		c.Sep = ' '
	}
	if st == nil {
		st = &SubStats{}
	}
	s, err := open(zmq4.SUB, c.Endpoint, c.SocketOptions)
	if err != nil {
		return err
	}
	defer s.Close()
	prefixes := Prefixes(c.Channels)
	if len(c.Channels) == 0 {
		prefixes = []string{""}
	}
	for _, p := range prefixes {
		if err := s.SetSubscribe(p); err != nil {
			return fmt.Errorf("subscribe %q: %w", p, err)
		}
	}
	if c.Ready != nil {
		addr, _ := s.GetLastEndpoint()
		if addr == "" {
			addr = c.Endpoint.Addr
		}
		c.Ready(addr)
	}
	poller := zmq4.NewPoller()
	poller.Add(s, zmq4.POLLIN)
	for {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		polled, err := poller.Poll(pollInterval)
		if err != nil {
			if zmq4.AsErrno(err) == zmq4.Errno(syscall.EINTR) {
				continue
			}
			return fmt.Errorf("poll: %w", err)
		}
		if len(polled) == 0 {
			continue
		}
		// Drain what is queued without waiting.
		for {
			parts, err := s.RecvMessageBytes(zmq4.DONTWAIT)
			if err != nil {
				if zmq4.AsErrno(err) == zmq4.Errno(syscall.EAGAIN) {
					break
				}
				return fmt.Errorf("receive: %w", err)
			}
			st.Received.Add(1)
			f, err := Decode(parts, c.Sep)
			if err != nil {
				st.Malformed.Add(1)
				if c.OnMalformed != nil {
					c.OnMalformed(err)
				}
				continue
			}
			if len(c.Channels) > 0 && !Filter(c.Channels, f.Channel) {
				st.Filtered.Add(1)
				continue
			}
			if err := fn(f); err != nil {
				return err
			}
		}
	}
}

// Shutdown terminates ZeroMQ: it waits (up to each socket's linger) until
// messages queued on closed sockets are delivered. Call it once, after
// every socket is closed, before the process exits.
func Shutdown() {
	authMu.Lock()
	if authStarted {
		zmq4.AuthStop()
		authStarted = false
	}
	authMu.Unlock()
	zmq4.Term()
}

// RunPub owns an XPUB socket. After waiting for subscribers it sends what
// next returns until next returns an error (io.EOF ends cleanly) or ctx
// ends. next may block; it runs in the calling goroutine.
func RunPub(ctx context.Context, c PubConfig, st *PubStats, next func(context.Context) ([]Out, error)) error {
	if c.Sep == 0 {
		c.Sep = ' '
	}
	if st == nil {
		st = &PubStats{}
	}
	s, err := open(zmq4.XPUB, c.Endpoint, c.SocketOptions)
	if err != nil {
		return err
	}
	defer s.Close()
	// Every peer's subscription is reported, so they can be counted; with
	// NODROP a full queue makes a non-blocking send fail instead of
	// silently dropping, so drops are counted (or waited out).
	s.SetXpubVerbose(1)
	if err := s.SetXpubNodrop(true); err != nil {
		return fmt.Errorf("ZeroMQ XPUB_NODROP: %w", err)
	}
	if c.Ready != nil {
		addr, _ := s.GetLastEndpoint()
		if addr == "" {
			addr = c.Endpoint.Addr
		}
		c.Ready(addr)
	}
	readSubs := func(wait time.Duration) error {
		if wait > 0 {
			poller := zmq4.NewPoller()
			poller.Add(s, zmq4.POLLIN)
			if _, err := poller.Poll(wait); err != nil && zmq4.AsErrno(err) != zmq4.Errno(syscall.EINTR) {
				return err
			}
		}
		for {
			msg, err := s.RecvBytes(zmq4.DONTWAIT)
			if err != nil {
				return nil
			}
			if len(msg) > 0 && msg[0] == 1 {
				st.Subscriptions.Add(1)
			} else if len(msg) > 0 && msg[0] == 0 {
				st.Subscriptions.Add(-1)
			}
		}
	}
	if c.WaitSubscribers > 0 {
		// The handshakes say why no subscriber comes when CURVE is on:
		// a refused key looks like silence otherwise.
		var hs *handshakes
		if c.Curve.enabled() {
			hs = watchHandshakes(s)
			defer hs.stop(s)
		}
		deadline := time.Now().Add(c.WaitTimeout)
		for st.Subscriptions.Load() < int64(c.WaitSubscribers) {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if c.WaitTimeout > 0 && time.Now().After(deadline) {
				err := fmt.Errorf("%w: %d of %d after %s", ErrNoSubscribers, st.Subscriptions.Load(), c.WaitSubscribers, c.WaitTimeout)
				return hs.explain(c.Endpoint.Addr, err)
			}
			if err := readSubs(pollInterval); err != nil {
				return err
			}
			hs.read()
			if hs.keyRefused() {
				// Said at once: waiting on would not change the answer.
				return hs.explain(c.Endpoint.Addr, ErrNoSubscribers)
			}
		}
	}
	for {
		batch, err := next(ctx)
		for _, o := range batch {
			var parts [][]byte
			if c.Legacy {
				parts = EncodeLegacy(o.Channel, o.Payload, c.Sep)
			} else {
				parts = Encode(o.Channel, o.Payload, o.Seq)
			}
			if serr := send(ctx, s, parts, c.Block); serr != nil {
				if !errors.Is(serr, errFull) {
					return serr
				}
				st.Dropped.Add(1)
				if c.OnDrop != nil {
					c.OnDrop(o.Channel)
				}
				continue
			}
			st.Sent.Add(1)
		}
		readSubs(0)
		if err != nil {
			return err
		}
	}
}

var errFull = errors.New("queue full")

// send sends one multipart message; a full queue waits (block) or fails
// with errFull.
func send(ctx context.Context, s *zmq4.Socket, parts [][]byte, block bool) error {
	args := make([]any, len(parts))
	for i, p := range parts {
		args[i] = p
	}
	for {
		_, err := s.SendMessageDontwait(args...)
		if err == nil {
			return nil
		}
		if zmq4.AsErrno(err) != zmq4.Errno(syscall.EAGAIN) {
			return fmt.Errorf("send: %w", err)
		}
		if !block {
			return errFull
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		poller := zmq4.NewPoller()
		poller.Add(s, zmq4.POLLOUT)
		poller.Poll(pollInterval)
	}
}

// handshakes follows a socket's ZMTP handshakes through libzmq's socket
// monitor, to tell a refused CURVE key from a peer that is not there.
type handshakes struct {
	mon               *zmq4.Socket
	connected, ok     int
	refused, mismatch int
	status            int // the ZAP status of the last refusal (400: key not allowed)
}

var monitors atomic.Int64

func watchHandshakes(s *zmq4.Socket) *handshakes {
	addr := fmt.Sprintf("inproc://pushctl-monitor-%d", monitors.Add(1))
	events := zmq4.EVENT_CONNECTED | zmq4.EVENT_ACCEPTED | zmq4.EVENT_HANDSHAKE_SUCCEEDED |
		zmq4.EVENT_HANDSHAKE_FAILED_AUTH | zmq4.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq4.EVENT_HANDSHAKE_FAILED_NO_DETAIL
	if err := s.Monitor(addr, events); err != nil {
		return nil
	}
	mon, err := zmq4.NewSocket(zmq4.PAIR)
	if err != nil {
		s.Monitor("", 0)
		return nil
	}
	mon.SetLinger(0)
	if err := mon.Connect(addr); err != nil {
		mon.Close()
		s.Monitor("", 0)
		return nil
	}
	return &handshakes{mon: mon}
}

// read takes the events that arrived.
func (h *handshakes) read() {
	if h == nil {
		return
	}
	for {
		ev, _, val, err := h.mon.RecvEvent(zmq4.DONTWAIT)
		if err != nil {
			return
		}
		switch ev {
		case zmq4.EVENT_CONNECTED, zmq4.EVENT_ACCEPTED:
			h.connected++
		case zmq4.EVENT_HANDSHAKE_SUCCEEDED:
			h.ok++
		case zmq4.EVENT_HANDSHAKE_FAILED_AUTH:
			h.refused++
			h.status = val
		case zmq4.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq4.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
			h.mismatch++
		}
	}
}

// keyRefused reports whether the peer's authenticator refused our key
// (ZAP status 400: not allowed), which trying again does not change;
// other statuses (300 temporary, 500 internal) may.
func (h *handshakes) keyRefused() bool { return h != nil && h.refused > 0 && h.status == 400 }

func (h *handshakes) stop(s *zmq4.Socket) {
	s.Monitor("", 0)
	h.mon.Close()
}

// explain turns "no subscriber in time" into what the handshakes showed:
// the peer refused our CURVE key (ErrCurveRefused), or connections came
// and went without completing a handshake.
func (h *handshakes) explain(addr string, err error) error {
	if h == nil {
		return err
	}
	h.read()
	switch {
	case h.refused > 0:
		return fmt.Errorf("%w: %s refused our key %s (ZAP status %d): list our public key in its --zmq-curve-clients, or give a listed key with --zmq-curve-secret",
			ErrCurveRefused, addr, plural(h.refused, "time"), h.status)
	case h.ok == 0 && (h.connected > 0 || h.mismatch > 0):
		return fmt.Errorf("%w; %s took the connection but no CURVE handshake completed: is --zmq-curve-server-key its public key, and does it use CURVE?", err, addr)
	}
	return err
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
