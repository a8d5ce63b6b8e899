package server

import "github.com/pushctl/pushctl/internal/connrt"

// PollerAvailable reports whether idle connections are watched by the
// poller (no goroutine each) on this system.
var PollerAvailable = connrt.PollerAvailable
