//go:build !linux

package server

import "errors"

func pollerAvailable() bool         { return false }
func addToPoller(*inputWatch) error { return errors.New("no poller on this system") }
func rearm(*inputWatch) error       { return errors.New("no poller on this system") }
func removeFromPoller(*inputWatch)  {}
