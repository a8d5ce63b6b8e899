//go:build !linux

package server

import "errors"

func pollerAvailable() bool         { return false }
func addToPoller(*inputWatch) error { return errors.New("no poller on this system") }
func rearm(*inputWatch) error       { return errors.New("no poller on this system") }
func removeFromPoller(*inputWatch)  {}

// tryRead is never called without the poller.
func (w *inputWatch) tryRead([]byte) (int, error) { return 0, errWouldBlock }
