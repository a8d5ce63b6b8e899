//go:build linux

package connrt

import (
	"io"
	"net"
	"sync"
	"syscall"
)

// poller is one epoll instance for every watched connection of the
// process. Registrations are one-shot: a connection is armed again once
// its reader has taken what there was. Events name a registration id, not
// a descriptor, so an event for a connection that has since gone (and
// whose descriptor number was reused) finds nothing.
type poller struct {
	epfd int

	mu      sync.Mutex
	next    uint64
	watches map[uint64]*Input
}

var (
	pollerOnce sync.Once
	pollerInst *poller
	pollerErr  error
)

func thePoller() (*poller, error) {
	pollerOnce.Do(func() {
		fd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
		if err != nil {
			pollerErr = err
			return
		}
		pollerInst = &poller{epfd: fd, watches: map[uint64]*Input{}}
		go pollerInst.wait()
	})
	return pollerInst, pollerErr
}

func PollerAvailable() bool {
	_, err := thePoller()
	return err == nil
}

const pollEvents = syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT

func (p *poller) ctl(w *Input, op int) error {
	var err error
	cerr := w.rc.Control(func(fd uintptr) {
		ev := syscall.EpollEvent{Events: pollEvents, Fd: int32(uint32(w.id)), Pad: int32(uint32(w.id >> 32))}
		err = syscall.EpollCtl(p.epfd, op, int(fd), &ev)
	})
	if cerr != nil {
		return cerr
	}
	return err
}

func addToPoller(w *Input) error {
	p, err := thePoller()
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.next++
	w.id = p.next
	p.watches[w.id] = w
	p.mu.Unlock()
	if err := p.ctl(w, syscall.EPOLL_CTL_ADD); err != nil {
		p.mu.Lock()
		delete(p.watches, w.id)
		p.mu.Unlock()
		return err
	}
	return nil
}

func rearm(w *Input) error {
	p, _ := thePoller()
	return p.ctl(w, syscall.EPOLL_CTL_MOD)
}

func removeFromPoller(w *Input) {
	p, _ := thePoller()
	p.ctl(w, syscall.EPOLL_CTL_DEL) // fails harmlessly once the descriptor is closed
	p.mu.Lock()
	delete(p.watches, w.id)
	p.mu.Unlock()
}

func (p *poller) wait() {
	evs := make([]syscall.EpollEvent, 256)
	var ready []*Input
	for {
		n, err := syscall.EpollWait(p.epfd, evs, -1)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			panic("pushctl: epoll_wait: " + err.Error())
		}
		p.mu.Lock()
		for _, ev := range evs[:n] {
			id := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
			if w := p.watches[id]; w != nil {
				ready = append(ready, w)
			}
		}
		p.mu.Unlock()
		for i, w := range ready {
			w.ready()
			ready[i] = nil
		}
		ready = ready[:0]
	}
}

// tryRead reads once without waiting.
func (w *Input) tryRead(p []byte) (int, error) {
	var n int
	var errno error
	err := w.rc.Read(func(fd uintptr) bool {
		for {
			n, errno = syscall.Read(int(fd), p)
			if errno != syscall.EINTR {
				return true
			}
		}
	})
	switch {
	case err != nil:
		return 0, err
	case errno == syscall.EAGAIN:
		return 0, ErrWouldBlock
	case errno != nil:
		return 0, &net.OpError{Op: "read", Net: "tcp", Err: errno}
	case n == 0 && len(p) > 0:
		return 0, io.EOF
	}
	return n, nil
}
