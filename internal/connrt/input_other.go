//go:build !linux

package connrt

import "errors"

func PollerAvailable() bool    { return false }
func addToPoller(*Input) error { return errors.New("no poller on this system") }
func rearm(*Input) error       { return errors.New("no poller on this system") }
func removeFromPoller(*Input)  {}

// tryRead is never called without the poller.
func (w *Input) tryRead([]byte) (int, error) { return 0, ErrWouldBlock }
