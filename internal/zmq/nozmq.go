//go:build !cgo || nozmq

package zmq

import (
	"context"
	"errors"
)

// ErrUnavailable is returned by every ZeroMQ operation in a build without
// libzmq (CGO_ENABLED=0 or the nozmq tag).
var ErrUnavailable = errors.New("this pushctl was built without ZeroMQ (no cgo/libzmq); use a linux build with ZeroMQ")

// Version reports that there is no libzmq: an empty version.
func Version() (string, bool) { return "", false }

// NewKeypair is unavailable without libzmq.
func NewKeypair() (string, string, error) { return "", "", ErrUnavailable }

// PublicFromSecret is unavailable without libzmq.
func PublicFromSecret(string) (string, error) { return "", ErrUnavailable }

// Shutdown does nothing without libzmq.
func Shutdown() {}

// RunSub is unavailable without libzmq.
func RunSub(context.Context, SubConfig, *SubStats, func(Frame) error) error { return ErrUnavailable }

// RunPub is unavailable without libzmq.
func RunPub(context.Context, PubConfig, *PubStats, func(context.Context) ([]Out, error)) error {
	return ErrUnavailable
}
