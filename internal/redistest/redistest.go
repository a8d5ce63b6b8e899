// Package redistest starts real redis-server processes for tests, on free
// loopback ports, and stops them when the test ends.
package redistest

import (
	"bufio"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Server is one redis-server started for a test.
type Server struct {
	t    testing.TB
	Port int
	Dir  string
	args []string

	mu  sync.Mutex
	cmd *exec.Cmd
	out *strings.Builder
}

// Options choose how the server runs.
type Options struct {
	// AOF turns on the append-only file with appendfsync always.
	AOF bool
}

// Start runs a redis-server for t and returns it once it accepts
// connections. It fails the test when redis-server is not installed
// (scripts/install-deps.sh --test installs it).
func Start(t testing.TB, o Options) *Server {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redis-server not found: run scripts/install-deps.sh --test (%v)", err)
	}
	s := &Server{t: t, Dir: t.TempDir()}
	s.args = []string{"--bind", "127.0.0.1", "--protected-mode", "no", "--save", "", "--dir", s.Dir,
		"--loglevel", "notice", "--logfile", ""}
	if o.AOF {
		s.args = append(s.args, "--appendonly", "yes", "--appendfsync", "always")
	} else {
		s.args = append(s.args, "--appendonly", "no")
	}
	for attempt := 0; ; attempt++ {
		s.Port = freePort(t)
		err := s.start(bin)
		if err == nil {
			break
		}
		if attempt == 4 {
			t.Fatalf("redis-server: %v", err)
		}
	}
	t.Cleanup(s.Kill)
	return s
}

// URL is the server's redis:// address (database 0).
func (s *Server) URL() string { return fmt.Sprintf("redis://127.0.0.1:%d/0", s.Port) }

// Addr is host:port.
func (s *Server) Addr() string { return "127.0.0.1:" + strconv.Itoa(s.Port) }

func freePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// start runs the process and waits for "Ready to accept connections".
func (s *Server) start(bin string) error {
	cmd := exec.Command(bin, append([]string{"--port", strconv.Itoa(s.Port)}, s.args...)...)
	cmd.Dir = s.Dir
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		return err
	}
	out := &strings.Builder{}
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		said := false
		for sc.Scan() {
			line := sc.Text()
			s.mu.Lock()
			out.WriteString(line + "\n")
			s.mu.Unlock()
			if !said && strings.Contains(line, "Ready to accept connections") {
				said = true
				ready <- true
			}
		}
		if !said {
			ready <- false
		}
	}()
	select {
	case ok := <-ready:
		if !ok {
			cmd.Wait()
			s.mu.Lock()
			defer s.mu.Unlock()
			return fmt.Errorf("redis-server on port %d did not start:\n%s", s.Port, out.String())
		}
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		cmd.Wait()
		return fmt.Errorf("redis-server on port %d not ready after 20s", s.Port)
	}
	s.mu.Lock()
	s.cmd, s.out = cmd, out
	s.mu.Unlock()
	return nil
}

// Kill stops the server at once (SIGKILL): what it had not written is lost.
func (s *Server) Kill() {
	s.mu.Lock()
	cmd := s.cmd
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Kill()
	cmd.Wait()
}

// Restart kills the server and starts it again on the same port and
// directory: without AOF it comes back empty, with AOF it reloads.
func (s *Server) Restart() {
	s.t.Helper()
	s.Kill()
	bin, _ := exec.LookPath("redis-server")
	if err := s.start(bin); err != nil {
		s.t.Fatalf("restart redis-server: %v", err)
	}
}

// Log returns what the server printed.
func (s *Server) Log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.out == nil {
		return ""
	}
	return s.out.String()
}
