package server

// PollerAvailable reports whether idle connections are watched by the
// poller (no goroutine each) on this system.
var PollerAvailable = pollerAvailable
