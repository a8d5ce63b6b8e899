//go:build !linux

package connrt

import "net"

type noWait struct{}

func (w *Writer) SetNoWait(net.Conn) {}

// writeNoWait is not available here: every write may wait.
func (w *Writer) writeNoWait(bufs net.Buffers) (net.Buffers, error) { return bufs, nil }
