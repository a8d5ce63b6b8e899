//go:build linux

package connrt

import (
	"net"
	"os"
	"syscall"
	"unsafe"
)

// noWait is what a Writer needs to write without waiting.
type noWait struct {
	raw syscall.RawConn
	fn  func(fd uintptr) bool // w.writev, bound once
	iov []syscall.Iovec
	n   int
	err syscall.Errno
}

// maxIov is the most iovecs one writev takes (IOV_MAX).
const maxIov = 1024

// setNoWait prepares writeNoWait for conn (a plain TCP connection only;
// on others every write may wait).
func (w *Writer) SetNoWait(conn net.Conn) {
	tc, ok := conn.(*net.TCPConn)
	if !ok {
		return
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return
	}
	w.nw.raw = raw
	w.nw.fn = w.writev
}

// writeNoWait writes what of bufs the socket takes now, without waiting
// for room: it returns what is left (something when the peer's side is
// full), or the error that ended the connection.
func (w *Writer) writeNoWait(bufs net.Buffers) (net.Buffers, error) {
	if w.nw.raw == nil {
		return bufs, nil
	}
	for len(bufs) > 0 {
		iov := w.nw.iov[:0]
		want := 0
		for _, b := range bufs {
			if len(iov) == maxIov {
				break
			}
			if len(b) == 0 {
				continue
			}
			v := syscall.Iovec{Base: &b[0]}
			v.SetLen(len(b))
			iov = append(iov, v)
			want += len(b)
		}
		if len(iov) == 0 {
			break
		}
		w.nw.iov = iov
		err := w.nw.raw.Write(w.nw.fn)
		clear(iov) // drop references to the frames
		n, errno := w.nw.n, w.nw.err
		switch {
		case err != nil:
			if IsTimeout(err) {
				return bufs, nil // an old write deadline: the waiting write sets a new one
			}
			return bufs, &net.OpError{Op: "write", Net: "tcp", Err: err}
		case errno == syscall.EAGAIN:
			return bufs, nil
		case errno != 0:
			return bufs, &net.OpError{Op: "write", Net: "tcp", Err: os.NewSyscallError("writev", errno)}
		}
		bufs = advance(bufs, n)
		if n < want {
			return bufs, nil // the socket is full
		}
	}
	return bufs, nil
}

// writev is the raw write of writeNoWait: once, without waiting.
func (w *Writer) writev(fd uintptr) bool {
	iov := w.nw.iov
	for {
		n, _, errno := syscall.Syscall(syscall.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&iov[0])), uintptr(len(iov)))
		if errno == syscall.EINTR {
			continue
		}
		w.nw.n, w.nw.err = int(n), errno
		return true
	}
}
