package server

import "github.com/pushctl/pushctl/internal/connrt"

// PollerAvailable reports whether idle connections are watched by the
// poller (no goroutine each) on this system.
var PollerAvailable = connrt.PollerAvailable

// OnWSFetchError sets what runs when a WebSocket consumer's fetch fails
// (nil: nothing); tests wait on it.
func OnWSFetchError(f func(error)) { wsFetchFailed.Store(&f) }
