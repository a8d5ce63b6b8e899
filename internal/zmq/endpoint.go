package zmq

import (
	"fmt"
	"strings"
)

// Endpoint is a ZeroMQ address and whether to bind or connect to it.
type Endpoint struct {
	Addr string
	Bind bool
}

func (e Endpoint) String() string {
	if e.Bind {
		return "@" + e.Addr
	}
	return ">" + e.Addr
}

// ParseEndpoint parses "@tcp://…" (bind), ">tcp://…" (connect) or a bare
// address, which binds when bind is the default for its role. Transports:
// tcp, ipc, inproc.
func ParseEndpoint(s string, bindByDefault bool) (Endpoint, error) {
	e := Endpoint{Bind: bindByDefault}
	switch {
	case strings.HasPrefix(s, "@"):
		e.Bind, s = true, s[1:]
	case strings.HasPrefix(s, ">"):
		e.Bind, s = false, s[1:]
	}
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok || rest == "" {
		return e, fmt.Errorf("ZeroMQ endpoint %q: want tcp://HOST:PORT, ipc://PATH or inproc://NAME, optionally after @ (bind) or > (connect)", s)
	}
	switch scheme {
	case "tcp":
		if !strings.Contains(rest, ":") {
			return e, fmt.Errorf("ZeroMQ endpoint %q: tcp needs HOST:PORT", s)
		}
	case "ipc", "inproc":
	default:
		return e, fmt.Errorf("ZeroMQ endpoint %q: transport %q not supported (tcp, ipc, inproc)", s, scheme)
	}
	e.Addr = s
	return e, nil
}
