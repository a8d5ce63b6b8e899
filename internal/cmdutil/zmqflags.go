package cmdutil

import (
	"fmt"
	"time"

	"github.com/pushctl/pushctl/internal/zmq"
	"github.com/spf13/cobra"
)

// ZMQClientFlags are the ZeroMQ options of pub and sub.
type ZMQClientFlags struct {
	Endpoint     string
	Sep          string
	ServerKey    string
	ClientSecret string
	HWM          int
	Linger       time.Duration
}

// AddZMQClientFlags adds --zmq and its companions to cmd.
func AddZMQClientFlags(cmd *cobra.Command, z *ZMQClientFlags, role string) {
	fl := cmd.Flags()
	fl.StringVar(&z.Endpoint, "zmq", "", "talk ZeroMQ to this endpoint instead of the broker's HTTP API ("+role+"; >ENDPOINT connects, the default, @ENDPOINT binds)")
	fl.StringVar(&z.Sep, "zmq-sep", " ", "separator of channel and payload in legacy single-frame messages")
	fl.StringVar(&z.ServerKey, "zmq-curve-server-key", "", "CURVE public key of the ZeroMQ peer that binds (enables CURVE)")
	fl.StringVar(&z.ClientSecret, "zmq-curve-secret", "", "our CURVE secret key (default: a fresh key pair)")
	fl.IntVar(&z.HWM, "zmq-hwm", 10000, "ZeroMQ high-water mark in messages")
	fl.DurationVar(&z.Linger, "zmq-linger", 5*time.Second, "on exit, wait at most this long for queued ZeroMQ messages to leave")
	MarkSecret(cmd, "zmq-curve-secret")
}

// Config turns the flags into an endpoint and socket options.
func (z *ZMQClientFlags) Config() (zmq.Endpoint, zmq.SocketOptions, byte, error) {
	ep, err := zmq.ParseEndpoint(z.Endpoint, false)
	if err != nil {
		return ep, zmq.SocketOptions{}, 0, FlagErrorf("--zmq: %v", err)
	}
	if len(z.Sep) != 1 {
		return ep, zmq.SocketOptions{}, 0, FlagErrorf("--zmq-sep must be one byte")
	}
	o := zmq.SocketOptions{HWM: z.HWM, Linger: z.Linger}
	if z.ServerKey != "" {
		c := &zmq.Curve{ServerPublic: z.ServerKey}
		if z.ClientSecret != "" {
			pub, err := zmq.PublicFromSecret(z.ClientSecret)
			if err != nil {
				return ep, o, 0, fmt.Errorf("--zmq-curve-secret: %w", err)
			}
			c.ClientPublic, c.ClientSecret = pub, z.ClientSecret
		}
		o.Curve = c
	} else if z.ClientSecret != "" {
		return ep, o, 0, FlagErrorf("--zmq-curve-secret needs --zmq-curve-server-key")
	}
	return ep, o, z.Sep[0], nil
}
