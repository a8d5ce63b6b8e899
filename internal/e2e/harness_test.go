// Package e2e runs the real pushctl binary against real brokers on loopback.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "pushctl-e2e")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "pushctl")
	if b := os.Getenv("PUSHCTL_E2E_BINARY"); b != "" {
		// A given binary, such as one built from an older commit to see
		// a new test fail against it.
		binary = b
		os.Setenv("GORACE", "atexit_sleep_ms=0 "+os.Getenv("GORACE"))
		code := m.Run()
		os.RemoveAll(dir)
		os.Exit(code)
	}
	args := []string{"build", "-o", binary}
	if raceEnabled {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, "../../cmd/pushctl")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building pushctl:", err)
		os.Exit(1)
	}
	// Race-enabled binaries otherwise sleep a second at exit.
	os.Setenv("GORACE", "atexit_sleep_ms=0 "+os.Getenv("GORACE"))
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a running pushctl process.
type proc struct {
	t      *testing.T
	cmd    *exec.Cmd
	stdout *bufio.Reader
	mu     sync.Mutex
	stderr bytes.Buffer
	lines  chan string // stderr lines as they come
	done   chan struct{}
	err    error
}

func (p *proc) Stderr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.String()
}

// start runs pushctl with args; stdin may be nil.
func start(t *testing.T, stdin io.Reader, env []string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Stdin = stdin
	cmd.Env = append(os.Environ(), env...)
	// Our own pipes: exec.Cmd.Wait would close its pipes on exit, before
	// the test has read everything the process printed.
	out, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	errPipe, errW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = outW, errW
	err = cmd.Start()
	outW.Close()
	errW.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { out.Close(); errPipe.Close() })
	p := &proc{t: t, cmd: cmd, stdout: bufio.NewReader(out), lines: make(chan string, 1024), done: make(chan struct{})}
	stderrDone := make(chan struct{})
	go func() {
		defer close(stderrDone)
		sc := bufio.NewScanner(errPipe)
		for sc.Scan() {
			p.mu.Lock()
			p.stderr.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
			select {
			case p.lines <- sc.Text():
			default:
			}
		}
	}()
	go func() {
		<-stderrDone
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// wait waits for the process to exit and returns its exit code.
func (p *proc) wait(timeout time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.cmd.Process.Kill()
		<-p.done
		p.t.Fatalf("%v did not exit within %s; stderr:\n%s", p.cmd.Args, timeout, p.Stderr())
	}
	if p.err == nil {
		return 0
	}
	if ee, ok := p.err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	p.t.Fatalf("wait: %v", p.err)
	return -1
}

// readLine reads one stdout line within a deadline.
func (p *proc) readLine(timeout time.Duration) string {
	p.t.Helper()
	type res struct {
		s   string
		err error
	}
	ch := make(chan res, 1)
	go func() { s, err := p.stdout.ReadString('\n'); ch <- res{s, err} }()
	select {
	case r := <-ch:
		if r.err != nil {
			p.t.Fatalf("reading stdout of %v: %v (partial %q); stderr:\n%s", p.cmd.Args, r.err, r.s, p.Stderr())
		}
		return strings.TrimSuffix(r.s, "\n")
	case <-time.After(timeout):
		p.t.Fatalf("no stdout line from %v within %s; stderr:\n%s", p.cmd.Args, timeout, p.Stderr())
	}
	return ""
}

// rest reads the remaining stdout lines until the process closes it,
// failing (and killing it) after timeout.
func (p *proc) rest(timeout time.Duration) []string {
	p.t.Helper()
	ch := make(chan []string, 1)
	go func() {
		var out []string
		for {
			l, err := p.stdout.ReadString('\n')
			if err != nil {
				break
			}
			out = append(out, strings.TrimSuffix(l, "\n"))
		}
		ch <- out
	}()
	select {
	case out := <-ch:
		return out
	case <-time.After(timeout):
		p.cmd.Process.Kill()
		p.t.Fatalf("%v kept its stdout open past %s; stderr:\n%s", p.cmd.Args, timeout, p.Stderr())
	}
	return nil
}

// waitStderr waits for a stderr line containing s and returns it.
func (p *proc) waitStderr(s string, timeout time.Duration) string {
	p.t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case l := <-p.lines:
			if strings.Contains(l, s) {
				return l
			}
		case <-p.done:
			if strings.Contains(p.Stderr(), s) {
				return s
			}
			p.t.Fatalf("%v exited before printing %q; stderr:\n%s", p.cmd.Args, s, p.Stderr())
		case <-deadline:
			p.t.Fatalf("%v did not print %q within %s; stderr:\n%s", p.cmd.Args, s, timeout, p.Stderr())
		}
	}
}

func (p *proc) signal(sig os.Signal) { p.cmd.Process.Signal(sig) }

// serve starts a broker and returns it with its URL.
func serve(t *testing.T, args ...string) (*proc, string) {
	t.Helper()
	return serveEnv(t, nil, args...)
}

// serveEnv is serve with extra environment variables.
func serveEnv(t *testing.T, env []string, args ...string) (*proc, string) {
	t.Helper()
	if !hasListen(args) {
		args = append(args, "--listen", "127.0.0.1:0")
	}
	p := start(t, nil, env, append([]string{"serve"}, args...)...)
	line := p.waitStderr("broker listening on ", 30*time.Second)
	url := line[strings.Index(line, "http://"):]
	t.Cleanup(func() {
		p.signal(syscall.SIGTERM)
		p.wait(10 * time.Second)
	})
	return p, url
}

func hasListen(args []string) bool {
	for _, a := range args {
		if a == "--listen" || a == "-l" || strings.HasPrefix(a, "--listen=") {
			return true
		}
	}
	return false
}

// run runs pushctl to completion and returns stdout, stderr and exit code.
func run(t *testing.T, stdin string, args ...string) (string, string, int) {
	t.Helper()
	return runIn(t, stdin, nil, args...)
}

// runEnv is run with extra environment variables.
func runEnv(t *testing.T, env []string, args ...string) (string, string, int) {
	t.Helper()
	return runIn(t, "", env, args...)
}

func runIn(t *testing.T, stdin string, env []string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Stdin = strings.NewReader(stdin)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

// acceptLoop listens on a loopback port and hands each connection to
// handle in a goroutine of its own, until the test ends.
func acceptLoop(t *testing.T, handle func(net.Conn)) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go handle(c)
		}
	}()
	return l
}
