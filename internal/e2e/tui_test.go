package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// tmux runs the real binary in a pseudo-terminal. Everything the program
// writes to the terminal is piped to the test (tmux pipe-pane into a FIFO),
// so the test waits on output events rather than polling the screen.
type tmux struct {
	t      *testing.T
	socket string

	mu     sync.Mutex
	output strings.Builder
	more   chan struct{}
}

func (x *tmux) run(args ...string) string {
	x.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "tmux", append([]string{"-S", x.socket}, args...)...).CombinedOutput()
	if err != nil {
		x.t.Fatalf("tmux %v: %v: %s", args, err, out)
	}
	return string(out)
}

// waitOutput waits until the terminal output since start contains want,
// then returns the screen as tmux shows it.
func (x *tmux) waitOutput(want string, timeout time.Duration) string {
	x.t.Helper()
	deadline := time.After(timeout)
	for {
		x.mu.Lock()
		ok := strings.Contains(x.output.String(), want)
		x.mu.Unlock()
		if ok {
			return x.run("capture-pane", "-p", "-t", "ui")
		}
		select {
		case <-x.more:
		case <-deadline:
			x.t.Fatalf("terminal never showed %q; screen:\n%s", want, x.run("capture-pane", "-p", "-t", "ui"))
		}
	}
}

func TestTUIInTmux(t *testing.T) {
	if _, err := exec.LookPath("tmux"); err != nil {
		t.Fatal("tmux is needed (scripts/install-deps.sh --test installs it)")
	}
	_, url := serve(t)
	dir := t.TempDir()
	x := &tmux{t: t, socket: filepath.Join(dir, "tmux.sock"), more: make(chan struct{}, 1)}
	fifo := filepath.Join(dir, "out")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	// The shell waits for "go" so no output is missed, and signals "done"
	// with the exit code in a file once sub has ended.
	exitFile := filepath.Join(dir, "exit")
	cmd := fmt.Sprintf("tmux -S %s wait-for go; %s sub news 'alerts.*' -s %s; echo $? > %s; tmux -S %s wait-for -S done; sleep 60",
		x.socket, binary, url, exitFile, x.socket)
	x.run("new-session", "-d", "-s", "ui", "-x", "100", "-y", "20", "-e", "TERM=xterm-256color", cmd)
	t.Cleanup(func() { exec.Command("tmux", "-S", x.socket, "kill-server").Run() })
	x.run("pipe-pane", "-O", "-t", "ui", "cat > "+fifo)
	go func() {
		f, err := os.Open(fifo)
		if err != nil {
			return
		}
		defer f.Close()
		buf := make([]byte, 32<<10)
		for {
			n, err := f.Read(buf)
			if n > 0 {
				x.mu.Lock()
				x.output.Write(buf[:n])
				x.mu.Unlock()
				select {
				case x.more <- struct{}{}:
				default:
				}
			}
			if err != nil {
				return
			}
		}
	}()
	x.run("wait-for", "-S", "go")

	x.waitOutput("● live", 20*time.Second)
	run(t, "", "pub", "news", "-s", url, "hello from the test")
	run(t, "", "pub", "alerts.disk", "--event", "full", "-s", url, `{"free":"2%"}`)
	x.waitOutput("hello from the test", 10*time.Second)
	screen := x.waitOutput("2 msgs", 10*time.Second)
	if !strings.Contains(screen, "hello from the test") || !strings.Contains(screen, `full {"free":"2%"}`) {
		t.Fatalf("screen lacks the messages:\n%s", screen)
	}
	// Publish from the UI's publish line; it comes back through the broker.
	x.run("send-keys", "-t", "ui", "p")
	x.waitOutput("publish to news:", 5*time.Second)
	x.run("send-keys", "-t", "ui", "-l", "@typed from the keyboard")
	x.run("send-keys", "-t", "ui", "Enter")
	x.waitOutput("from the keyboard", 10*time.Second)
	x.run("send-keys", "-t", "ui", "q")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "tmux", "-S", x.socket, "wait-for", "done").CombinedOutput(); err != nil {
		t.Fatalf("sub did not exit after q: %v %s", err, out)
	}
	if b, _ := os.ReadFile(exitFile); strings.TrimSpace(string(b)) != "0" {
		t.Fatalf("sub exited %q after q", b)
	}
}
