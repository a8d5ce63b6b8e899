package serve

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"

	"github.com/pushctl/pushctl/internal/cmdutil"
)

// servePprof serves Go's runtime profiles on addr, which must be a
// loopback address: profiles show what the broker holds (channel names,
// message bytes in heap dumps), so they are never exposed beyond the host.
func servePprof(addr string, errOut io.Writer) (stop func(), err error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--pprof %s: %w", addr, err)
	}
	if !isLoopback(l.Addr()) {
		l.Close()
		return nil, cmdutil.FlagErrorf("--pprof %s: profiles are served on loopback addresses only", addr)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux}
	go srv.Serve(l)
	fmt.Fprintf(errOut, "pushctl: profiles on http://%s/debug/pprof/\n", l.Addr())
	return func() { srv.Close() }, nil
}
