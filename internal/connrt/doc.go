// Package connrt is the connection runtime under pushctl's subscriber
// connections: it knows sockets, not routes or protocols.
//
//   - Writer is the one writer of a connection: every byte (messages,
//     control frames, the closing reason) goes through it, with one stall
//     policy, writev batching and, on Linux, a first write that never
//     waits (writer_linux.go).
//   - Batch gathers one round's writes: small pieces copied together,
//     shared broadcast frames referenced.
//   - Pool runs the rounds of busy connections on a few workers; a round
//     that must wait for its peer gives its worker's place up first.
//   - Input watches a connection for input with one epoll poller (Linux,
//     plain TCP) instead of a goroutine per idle connection.
//   - Wheel paces keepalives of every connection of one kind with one
//     ticker.
//
// internal/server's session (the one subscribe loop) is the Task the pool
// runs and the Wheeled the wheels hold.
package connrt
