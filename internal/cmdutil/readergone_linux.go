package cmdutil

import (
	"context"
	"errors"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// ErrReaderGone is the cause of a context ended by WhenReaderGone: the
// program reading our output (grep -m1, head) has exited.
var ErrReaderGone = errors.New("the reader of standard output has gone")

// WhenReaderGone returns a context that ends, with cause ErrReaderGone,
// as soon as the reading end of out is closed, when out is a pipe. A
// command waiting for messages (sub | grep -m1 x) then ends at once
// instead of at its next write. stop releases the watcher.
func WhenReaderGone(ctx context.Context, out io.Writer) (_ context.Context, stop func()) {
	f, ok := out.(*os.File)
	if !ok {
		return ctx, func() {}
	}
	var st unix.Stat_t
	if unix.Fstat(int(f.Fd()), &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFIFO {
		return ctx, func() {}
	}
	wake, wakeW, err := os.Pipe()
	if err != nil {
		return ctx, func() {}
	}
	ctx, cancel := context.WithCancelCause(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		// A pipe's writing end reports POLLERR once no reader is left.
		fds := []unix.PollFd{{Fd: int32(f.Fd())}, {Fd: int32(wake.Fd()), Events: unix.POLLIN}}
		for {
			_, err := unix.Poll(fds, -1)
			if err == unix.EINTR {
				continue
			}
			if err != nil || fds[1].Revents != 0 {
				return
			}
			if fds[0].Revents&(unix.POLLERR|unix.POLLHUP) != 0 {
				cancel(ErrReaderGone)
				return
			}
		}
	}()
	return ctx, func() {
		wakeW.Close()
		<-done
		wake.Close()
		cancel(nil)
	}
}
