package zmq

import (
	"errors"
	"sync/atomic"
	"time"
)

// Curve configures CURVE security. A server sets ServerSecret (and
// AllowedClients to refuse every other key); a client sets ServerPublic,
// ClientPublic and ClientSecret. Keys are Z85 text.
type Curve struct {
	ServerSecret   string
	AllowedClients []string
	ServerPublic   string
	ClientPublic   string
	ClientSecret   string
}

func (c *Curve) enabled() bool { return c != nil && (c.ServerSecret != "" || c.ServerPublic != "") }

// ErrNoCurve is returned when CURVE is asked for and libzmq lacks it.
var ErrNoCurve = errors.New("the linked libzmq was built without CURVE security (libsodium); rebuild it with CURVE or drop the key options")

// SocketOptions are shared by every socket pushctl opens.
type SocketOptions struct {
	Curve *Curve
	// HWM is the send or receive high-water mark in messages (0: libzmq's 1000).
	HWM int
	// Linger bounds how long closing waits to deliver queued messages.
	Linger time.Duration
}

// SubConfig configures a subscriber.
type SubConfig struct {
	Endpoint Endpoint
	// Channels are names or patterns; empty receives everything.
	Channels []string
	// Sep splits single-frame legacy messages (default ' ').
	Sep byte
	SocketOptions
	// OnMalformed is told about messages that do not decode (counted).
	OnMalformed func(error)
	// Ready, if set, is called once the socket is bound or connected.
	Ready func(addr string)
}

// SubStats count what a subscriber saw.
type SubStats struct {
	Received  atomic.Uint64
	Malformed atomic.Uint64
	Filtered  atomic.Uint64
}

// Out is one message to send.
type Out struct {
	Channel string
	Payload []byte
	Seq     uint64
}

// PubConfig configures a publisher.
type PubConfig struct {
	Endpoint Endpoint
	SocketOptions
	// Block waits while a subscriber's queue is full instead of dropping
	// (backpressure for a CLI publisher). Otherwise a message that cannot
	// be queued is dropped and counted.
	Block bool
	// WaitSubscribers waits for that many subscriptions before the first
	// send, up to WaitTimeout (ErrNoSubscribers after).
	WaitSubscribers int
	WaitTimeout     time.Duration
	// Legacy sends single frames "channel<Sep>payload".
	Legacy bool
	Sep    byte
	// Ready, if set, is called once the socket is bound or connected.
	Ready func(addr string)
	// OnDrop is told about each dropped message.
	OnDrop func(channel string)
}

// PubStats count what a publisher did.
type PubStats struct {
	Sent          atomic.Uint64
	Dropped       atomic.Uint64
	Subscriptions atomic.Int64
}

// ErrNoSubscribers means WaitSubscribers was not reached in time.
var ErrNoSubscribers = errors.New("no ZeroMQ subscriber connected in time")

// ErrCurveRefused is returned when the peer's authentication (ZAP)
// refused our CURVE key, as libzmq's socket monitor reports it.
var ErrCurveRefused = errors.New("the ZeroMQ peer refused our CURVE key")
