//go:build !linux

package server

import "net"

type noWait struct{}

func (w *connWriter) setNoWait(net.Conn) {}

// writeNoWait is not available here: every write may wait.
func (w *connWriter) writeNoWait(bufs net.Buffers) (net.Buffers, error) { return bufs, nil }
