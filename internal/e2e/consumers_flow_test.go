package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The promises of pushctl sub --durable while its deliveries flow: it
// fetches, prints and acknowledges at the same time (docs/consumers.md),
// and still acknowledges a message only once its line reached stdout,
// prints in delivery order, and has every acknowledgement answered
// before it exits.

// publishPadded publishes "m<i> xxx…" (about 100 bytes) for i in from..to.
func publishPadded(t *testing.T, url, channel string, from, to int) {
	t.Helper()
	pad := strings.Repeat("x", 92)
	var b strings.Builder
	for i := from; i <= to; i++ {
		fmt.Fprintf(&b, "m%d %s\n", i, pad)
	}
	if out, errs, code := run(t, b.String(), "pub", channel, "--lines", "-s", url); code != 0 {
		t.Fatalf("pub exited %d: %s %s", code, out, errs)
	}
}

// lockedBuffer is a process's stderr, read while it runs.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestDurableAcksOnlyWhatReachedStdout: a reader that stops reading a
// durable sub's stdout (a pipe of one page) leaves it blocked writing;
// killed with SIGKILL then, it had acknowledged no message whose line did
// not reach the pipe, and a new sub prints every message the first did
// not.
func TestDurableAcksOnlyWhatReachedStdout(t *testing.T) {
	const total, read = 4000, 1000
	_, url := serve(t)
	if _, errs, code := run(t, "", "consumers", "w", "--create", "stream", "--ack-wait", "5s", "-s", url); code != 0 {
		t.Fatalf("consumers --create: %s", errs)
	}
	publishPadded(t, url, "stream", 1, total)

	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	rc, err := r.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var ferr error
	rc.Control(func(fd uintptr) { _, ferr = unix.FcntlInt(fd, unix.F_SETPIPE_SZ, 4096) })
	if ferr != nil {
		t.Fatalf("F_SETPIPE_SZ: %v", ferr)
	}
	var stderr lockedBuffer
	cmd := exec.Command(binary, "sub", "stream", "--durable", "w", "--max-inflight", "1000", "-s", url)
	cmd.Stdout, cmd.Stderr = w, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-exited })

	r.SetReadDeadline(time.Now().Add(60 * time.Second))
	br := bufio.NewReader(r)
	var printed []string
	for len(printed) < read {
		l, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("reading the sub's stdout after %d lines: %v; stderr:\n%s", len(printed), err, stderr.String())
		}
		printed = append(printed, strings.TrimSuffix(l, "\n"))
	}
	// Stop reading: the pipe fills and the sub's next flush blocks.
	eventually(t, 30*time.Second, "the sub's stdout pipe full", func() bool {
		n := 0
		rc.Control(func(fd uintptr) { n, _ = unix.IoctlGetInt(int(fd), unix.TIOCINQ) })
		return n >= 4096-100
	})
	// What the sub sent before blocking has reached the broker by the
	// time the broker answers this.
	before := consumerInfo(t, url, "w")["acked"].(float64)
	cmd.Process.Kill()
	<-exited
	r.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		l, err := br.ReadString('\n')
		if err != nil {
			break // a partial last line was not wholly printed
		}
		printed = append(printed, strings.TrimSuffix(l, "\n"))
	}
	info := consumerInfo(t, url, "w")
	acked := int(info["acked"].(float64))
	t.Logf("killed while blocked writing: %d lines reached stdout, %d acknowledged (%v before the kill), %v in flight", len(printed), acked, before, info["inflight"])
	if acked > len(printed) {
		t.Fatalf("%d messages acknowledged, but only %d lines reached stdout", acked, len(printed))
	}
	if len(printed) >= total {
		t.Fatalf("all %d printed: the sub never blocked", len(printed))
	}

	sub2 := start(t, nil, nil, "sub", "stream", "--durable", "w", "--max-inflight", "1000", "-s", url)
	got2 := collectLines(sub2)
	eventually(t, 60*time.Second, "every message printed", func() bool {
		missing, _ := tally(t, total, append(append([]string(nil), printed...), got2.snapshot()...))
		return len(missing) == 0
	})
	_, dups := tally(t, total, append(printed, got2.snapshot()...))
	t.Logf("the second sub printed %d; %d printed twice", got2.count(), dups)
	if dups > 1000 {
		t.Errorf("%d printed twice; the killed sub held at most 1000 (--max-inflight)", dups)
	}
}

// TestDurablePrintsInDeliveryOrder: one durable sub holding thousands of
// deliveries at once (fetching while it prints) prints 20,000 messages in
// the order they were published, as does one with --ordered.
func TestDurablePrintsInDeliveryOrder(t *testing.T) {
	_, url := serve(t)
	for _, c := range []struct {
		name, channel string
		total         int
		args          []string
	}{
		{"parallel", "stream", 20000, []string{"--max-inflight", "4000"}},
		{"ordered", "ord", 500, []string{"--ordered"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			create := []string{"consumers", c.name, "--create", c.channel, "-s", url}
			if c.name == "ordered" {
				create = append(create, "--ordered")
			}
			if _, errs, code := run(t, "", create...); code != 0 {
				t.Fatalf("consumers --create: %s", errs)
			}
			publishRange(t, url, c.channel, 1, c.total)
			args := append([]string{"sub", c.channel, "--durable", c.name, "--count", fmt.Sprint(c.total), "-s", url}, c.args...)
			sub := start(t, nil, nil, args...)
			lines := sub.rest(60 * time.Second)
			if code := sub.wait(10 * time.Second); code != 0 {
				t.Fatalf("sub exited %d: %s", code, sub.Stderr())
			}
			if len(lines) != c.total {
				t.Fatalf("%d lines, want %d", len(lines), c.total)
			}
			for i, l := range lines {
				if want := fmt.Sprintf("m%d", i+1); l != want {
					t.Fatalf("line %d is %q, want %q (lines %q…)", i+1, l, want, lines[max(i-3, 0):min(i+3, len(lines))])
				}
			}
		})
	}
}

// TestDurableAcksAllBeforeExit: a durable sub with --count exits once
// every acknowledgement it sent was answered: right after it exits the
// consumer has acknowledged them all and holds nothing.
func TestDurableAcksAllBeforeExit(t *testing.T) {
	const total = 20000
	_, url := serve(t, "--data-dir", t.TempDir())
	if _, errs, code := run(t, "", "consumers", "w", "--create", "stream", "-s", url); code != 0 {
		t.Fatalf("consumers --create: %s", errs)
	}
	publishRange(t, url, "stream", 1, total)
	out, errs, code := run(t, "", "sub", "stream", "--durable", "w", "--count", fmt.Sprint(total), "--max-inflight", "4000", "-s", url)
	if code != 0 {
		t.Fatalf("sub exited %d: %s", code, errs)
	}
	if n := strings.Count(out, "\n"); n != total {
		t.Fatalf("sub printed %d lines, want %d", n, total)
	}
	info := consumerInfo(t, url, "w")
	if info["acked"] != float64(total) || info["pending"] != float64(0) || info["inflight"] != float64(0) {
		t.Fatalf("after the sub exited: acked %v, pending %v, inflight %v; want %d, 0, 0", info["acked"], info["pending"], info["inflight"], total)
	}
}
