// Package redistest starts real redis-server processes for tests, on free
// loopback ports, and stops them when the test ends.
package redistest

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Server is one redis-server started for a test.
type Server struct {
	t    testing.TB
	Port int
	Dir  string
	args []string

	mu      sync.Mutex
	id      string // cluster node id, once asked (ID)
	cmd     *exec.Cmd
	out     *strings.Builder
	changed chan struct{} // closed and replaced when out grows
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
	return launch(t, func() []string {
		if o.AOF {
			return []string{"--appendonly", "yes", "--appendfsync", "always"}
		}
		return []string{"--appendonly", "no"}
	})
}

// launch starts a redis-server on a free port, with arguments that extra
// gives for each attempt besides the common ones, and kills it when the
// test ends.
func launch(t testing.TB, extra func() []string) *Server {
	t.Helper()
	bin := lookPath(t, "redis-server")
	s := &Server{t: t, Dir: t.TempDir()}
	for attempt := 0; ; attempt++ {
		s.Port = freePort(t)
		s.args = append([]string{"--bind", "127.0.0.1", "--protected-mode", "no", "--save", "", "--dir", s.Dir,
			"--loglevel", "notice", "--logfile", "", "--enable-debug-command", "local"}, extra()...)
		err := s.start(bin, false)
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

// lookPath finds a Redis program or fails the test saying how to get it.
func lookPath(t testing.TB, name string) string {
	t.Helper()
	bin, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found: run scripts/install-deps.sh --test (%v)", name, err)
	}
	return bin
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

// start runs the process and waits for "Ready to accept connections"
// (its data loaded), or with loading set only until it listens.
func (s *Server) start(bin string, loading bool, extra ...string) error {
	cmd := exec.Command(bin, append(append([]string{"--port", strconv.Itoa(s.Port)}, s.args...), extra...)...)
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
			if s.changed != nil {
				close(s.changed)
				s.changed = nil
			}
			s.mu.Unlock()
			if !said && (strings.Contains(line, "Ready to accept connections") || loading && strings.Contains(line, "Server initialized")) {
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

// Pause stops the server's process (SIGSTOP) until Resume: connections
// stay open and the kernel still accepts new ones, but nothing answers, as
// with a Redis stuck on a slow disk or a long fork.
func (s *Server) Pause() { s.signal(syscall.SIGSTOP) }

// Resume continues a paused server (SIGCONT).
func (s *Server) Resume() { s.signal(syscall.SIGCONT) }

func (s *Server) signal(sig syscall.Signal) {
	s.t.Helper()
	s.mu.Lock()
	cmd := s.cmd
	s.mu.Unlock()
	if cmd == nil {
		s.t.Fatalf("redis-server on port %d is not running", s.Port)
	}
	if err := cmd.Process.Signal(sig); err != nil {
		s.t.Fatalf("signal redis-server: %v", err)
	}
}

// Pid is the server process's id (for reading its CPU time).
func (s *Server) Pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

// Restart kills the server and starts it again on the same port and
// directory: without AOF it comes back empty, with AOF it reloads.
func (s *Server) Restart() {
	s.t.Helper()
	s.Kill()
	if err := s.start(lookPath(s.t, "redis-server"), false); err != nil {
		s.t.Fatalf("restart redis-server: %v", err)
	}
}

// Ballast keeps n more commands in the server's data (one script setting
// keys redistest:ballast:1..n, kept in an AOF as n SETs), for
// RestartLoading.
func (s *Server) Ballast(n int) {
	s.t.Helper()
	script := "for i = 1, tonumber(ARGV[1]) do redis.call('SET', 'redistest:ballast:' .. i, 'x') end"
	if reply, err := s.command("EVAL", script, "0", strconv.Itoa(n)); err != nil || strings.HasPrefix(reply, "-") {
		s.t.Fatalf("redis-server ballast: %s %v", reply, err)
	}
}

// RestartLoading kills the server (unless it is stopped already) and
// starts it again on the same port and directory, as Restart does, but
// sleeping a little after each command of the AOF it loads
// (key-load-delay; the server must run with AOF). It returns once the new
// server answers LOADING, as a Redis reloading a large dataset after a
// crash does: it accepts connections and refuses every command with
// "LOADING Redis is loading the dataset in memory" until it is done
// (WaitLoaded). That lasts about Ballast/10,000 seconds or more.
func (s *Server) RestartLoading() {
	s.t.Helper()
	s.Kill()
	if err := s.start(lookPath(s.t, "redis-server"), true, "--key-load-delay", "1"); err != nil {
		s.t.Fatalf("restart redis-server: %v", err)
	}
	reply, err := s.command("PING")
	if err != nil {
		s.t.Fatalf("redis-server restarted: %v", err)
	}
	if !strings.HasPrefix(reply, "-LOADING") {
		s.t.Fatalf("redis-server restarted and answered %q, not LOADING: more Ballast is needed", reply)
	}
}

// WaitLoaded waits until the server has loaded its data and answers
// commands (after RestartLoading).
func (s *Server) WaitLoaded(timeout time.Duration) error {
	return s.WaitLog("Ready to accept connections", timeout)
}

// command sends one command and returns the first line of its reply.
func (s *Server) command(args ...string) (string, error) {
	c, err := net.DialTimeout("tcp", s.Addr(), 10*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	req := fmt.Sprintf("*%d\r\n", len(args))
	for _, a := range args {
		req += fmt.Sprintf("$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := c.Write([]byte(req)); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

// Busy runs a script that does not end (a Lua loop) until stop is called
// (SCRIPT KILL): meanwhile Redis answers every other command "BUSY Redis
// is busy running a script", as when a script runs too long. It returns
// once Redis answers so; busy-reply-threshold is set to 50ms.
func (s *Server) Busy() (stop func()) {
	s.t.Helper()
	if reply, err := s.command("CONFIG", "SET", "busy-reply-threshold", "50"); reply != "+OK" {
		s.t.Fatalf("redis-server busy-reply-threshold: %s %v", reply, err)
	}
	loop, err := net.DialTimeout("tcp", s.Addr(), 10*time.Second)
	if err != nil {
		s.t.Fatal(err)
	}
	script := "while true do end"
	fmt.Fprintf(loop, "*3\r\n$4\r\nEVAL\r\n$%d\r\n%s\r\n$1\r\n0\r\n", len(script), script)
	deadline := time.Now().Add(10 * time.Second)
	for {
		// Each PING is answered PONG at once until the script runs,
		// then BUSY after the threshold.
		reply, err := s.command("PING")
		if strings.HasPrefix(reply, "-BUSY") {
			break
		}
		if err != nil || time.Now().After(deadline) {
			loop.Close()
			s.t.Fatalf("redis-server did not get busy: %s %v", reply, err)
		}
	}
	return func() {
		defer loop.Close()
		if reply, err := s.command("SCRIPT", "KILL"); reply != "+OK" {
			s.t.Errorf("SCRIPT KILL: %s %v", reply, err)
		}
		loop.SetDeadline(time.Now().Add(10 * time.Second))
		bufio.NewReader(loop).ReadString('\n') // the script's end
	}
}

// FailSaves makes Redis refuse writes as after a failed save to a full or
// failing disk (MISCONF): a directory stands where the save would go,
// saves are turned on, and a background save fails. Reads still work.
func (s *Server) FailSaves() {
	s.t.Helper()
	if err := os.MkdirAll(filepath.Join(s.Dir, "dump.rdb", "in-the-way"), 0o755); err != nil {
		s.t.Fatal(err)
	}
	if reply, err := s.command("CONFIG", "SET", "save", "3600 1"); reply != "+OK" {
		s.t.Fatalf("redis-server save: %s %v", reply, err)
	}
	if reply, err := s.command("BGSAVE"); !strings.HasPrefix(reply, "+") {
		s.t.Fatalf("redis-server BGSAVE: %s %v", reply, err)
	}
	if err := s.WaitLog("Background saving error", 30*time.Second); err != nil {
		s.t.Fatalf("redis-server: the save did not fail: %v", err)
	}
}

// SavesWork undoes FailSaves: saves are off again (as the server
// started), so Redis takes writes.
func (s *Server) SavesWork() {
	s.t.Helper()
	if reply, err := s.command("CONFIG", "SET", "save", ""); reply != "+OK" {
		s.t.Fatalf("redis-server save: %s %v", reply, err)
	}
	if err := os.RemoveAll(filepath.Join(s.Dir, "dump.rdb")); err != nil {
		s.t.Fatal(err)
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

// Cluster is a Redis Cluster of redis-server processes started for a
// test: one master per shard (StartClusterWithReplicas: each with a
// replica), slots spread evenly.
type Cluster struct {
	Servers  []*Server
	Replicas []*Server // StartClusterWithReplicas: Replicas[i] of Servers[i]
}

// StartCluster runs shards redis-server processes with cluster mode on,
// joins them with `redis-cli --cluster create` and returns once every
// node reports cluster_state:ok.
func StartCluster(t testing.TB, shards int) *Cluster {
	t.Helper()
	cli := lookPath(t, "redis-cli")
	c := &Cluster{}
	for i := 0; i < shards; i++ {
		c.Servers = append(c.Servers, launchClusterNode(t))
	}
	args := []string{"--cluster", "create"}
	for _, s := range c.Servers {
		args = append(args, s.Addr())
	}
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	if shards == 1 {
		// redis-cli --cluster create wants three masters: one takes
		// every slot itself.
		args = []string{"-p", strconv.Itoa(c.Servers[0].Port), "cluster", "addslotsrange", "0", "16383"}
	}
	if out, err := exec.Command(cli, args...).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli %v: %v\n%s", args, err, out)
	}
	for _, s := range c.Servers {
		if err := s.WaitLog("Cluster state changed: ok", 30*time.Second); err != nil {
			t.Fatalf("redis cluster: %v", err)
		}
	}
	return c
}

// WaitLog waits until the server printed a line containing text.
func (s *Server) WaitLog(text string, timeout time.Duration) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		if s.out != nil && strings.Contains(s.out.String(), text) {
			s.mu.Unlock()
			return nil
		}
		if s.changed == nil {
			s.changed = make(chan struct{})
		}
		changed := s.changed
		s.mu.Unlock()
		select {
		case <-changed:
		case <-deadline.C:
			return fmt.Errorf("redis-server on port %d did not print %q in %v:\n%s", s.Port, text, timeout, s.Log())
		}
	}
}

// StartClusterWithReplicas is StartCluster with one replica per master:
// Servers are the masters, Replicas[i] the replica of Servers[i], in
// sync when it returns.
func StartClusterWithReplicas(t testing.TB, shards int) *Cluster {
	t.Helper()
	c := StartCluster(t, shards)
	for _, m := range c.Servers {
		r := launchClusterNode(t)
		cli(t, "--cluster", "add-node", r.Addr(), m.Addr(), "--cluster-slave", "--cluster-master-id", m.ID())
		if err := r.WaitLog("MASTER <-> REPLICA sync: Finished", 30*time.Second); err != nil {
			t.Fatalf("redis cluster replica: %v", err)
		}
		c.Replicas = append(c.Replicas, r)
	}
	return c
}

// Failover makes Replicas[i] the master of Servers[i]'s slots at once
// (CLUSTER FAILOVER TAKEOVER: without asking the master or the other
// masters, as when the master is gone), and waits until Servers[j] for
// some other j knows it.
func (c *Cluster) Failover(t testing.TB, i int) {
	t.Helper()
	r := c.Replicas[i]
	cli(t, "-p", strconv.Itoa(r.Port), "cluster", "failover", "takeover")
	id := r.ID()
	other := c.Servers[(i+1)%len(c.Servers)]
	deadline := time.Now().Add(30 * time.Second)
	for {
		for _, line := range strings.Split(cli(t, "-p", strconv.Itoa(other.Port), "cluster", "nodes"), "\n") {
			f := strings.Fields(line)
			if len(f) > 8 && f[0] == id && strings.Contains(f[2], "master") {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis cluster: %s does not know %s took over", other.Addr(), r.Addr())
		}
		select {
		case <-time.After(20 * time.Millisecond): // gossip
		}
	}
}

// launchClusterNode starts a redis-server with cluster mode on, not yet
// part of any cluster.
func launchClusterNode(t testing.TB) *Server {
	return launch(t, func() []string {
		// The cluster bus needs a port of its own, also free.
		return []string{"--appendonly", "no", "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
			"--cluster-port", strconv.Itoa(freePort(t)), "--cluster-node-timeout", "2000"}
	})
}

// cli runs redis-cli with args and returns its output, failing the test
// on an error (redis-cli exits 0 on an error reply: one is an error too).
func cli(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(lookPath(t, "redis-cli"), args...).CombinedOutput()
	if err != nil || strings.HasPrefix(string(out), "ERR") || strings.HasPrefix(string(out), "(error)") {
		t.Fatalf("redis-cli %v: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

// ID is the server's cluster node id (asked once).
func (s *Server) ID() string {
	s.t.Helper()
	s.mu.Lock()
	id := s.id
	s.mu.Unlock()
	if id == "" {
		id = cli(s.t, "-p", strconv.Itoa(s.Port), "cluster", "myid")
		s.mu.Lock()
		s.id = id
		s.mu.Unlock()
	}
	return id
}

// AddShard starts one more redis-server, joins it to the cluster as a
// master without slots (`redis-cli --cluster add-node`) and returns it
// once it knows the cluster.
func (c *Cluster) AddShard(t testing.TB) *Server {
	t.Helper()
	s := launchClusterNode(t)
	cli(t, "--cluster", "add-node", s.Addr(), c.Servers[0].Addr())
	if err := s.WaitLog("Cluster state changed: ok", 30*time.Second); err != nil {
		t.Fatalf("redis cluster: %v", err)
	}
	c.Servers = append(c.Servers, s)
	return s
}

// Owner is the server that serves slot.
func (c *Cluster) Owner(t testing.TB, slot int) *Server {
	t.Helper()
	for _, s := range c.Servers {
		// CLUSTER NODES: "<id> <addr> <flags> … <slot or range>…", the
		// asking node's line flagged myself.
		for _, line := range strings.Split(cli(t, "-p", strconv.Itoa(s.Port), "cluster", "nodes"), "\n") {
			f := strings.Fields(line)
			if len(f) < 9 || !strings.Contains(f[2], "myself") {
				continue
			}
			for _, r := range f[8:] {
				lo, hi, ok := strings.Cut(r, "-")
				if !ok {
					hi = lo
				}
				a, err1 := strconv.Atoi(lo)
				b, err2 := strconv.Atoi(hi)
				if err1 == nil && err2 == nil && a <= slot && slot <= b {
					return s
				}
			}
		}
	}
	t.Fatalf("redis cluster: no node serves slot %d", slot)
	return nil
}

// Slot is the cluster slot of key.
func (c *Cluster) Slot(t testing.TB, key string) int {
	t.Helper()
	n, err := strconv.Atoi(cli(t, "-p", strconv.Itoa(c.Servers[0].Port), "cluster", "keyslot", key))
	if err != nil {
		t.Fatalf("redis cluster: keyslot %q: %v", key, err)
	}
	return n
}

// MoveSlot moves slot and its keys to server to as `redis-cli --cluster
// reshard` does (StartMove, the keys with MIGRATE, FinishMove), but one
// key per MIGRATE, so that a slot's keys spend as long as they can split
// between the two. It returns the number of keys moved.
func (c *Cluster) MoveSlot(t testing.TB, slot int, to *Server) int {
	t.Helper()
	from := c.StartMove(t, slot, to)
	if from == nil {
		return 0
	}
	moved := 0
	for {
		keys := cli(t, "-p", strconv.Itoa(from.Port), "cluster", "getkeysinslot", strconv.Itoa(slot), "1")
		if keys == "" {
			break
		}
		c.Migrate(t, from, to, keys)
		moved++
	}
	c.FinishMove(t, slot, from, to)
	return moved
}

// StartMove begins moving slot to server to: IMPORTING on to, MIGRATING
// on the slot's owner, which it returns (nil when to owns it already).
// Meanwhile Redis refuses a command on several keys of the slot when
// some are on each side, or some are missing (TRYAGAIN).
func (c *Cluster) StartMove(t testing.TB, slot int, to *Server) (from *Server) {
	t.Helper()
	from = c.Owner(t, slot)
	if from == to {
		return nil
	}
	sl := strconv.Itoa(slot)
	cli(t, "-p", strconv.Itoa(to.Port), "cluster", "setslot", sl, "importing", from.ID())
	cli(t, "-p", strconv.Itoa(from.Port), "cluster", "setslot", sl, "migrating", to.ID())
	return from
}

// Migrate moves keys (of a slot being moved from from to to) with one
// MIGRATE.
func (c *Cluster) Migrate(t testing.TB, from, to *Server, keys ...string) {
	t.Helper()
	args := append([]string{"-p", strconv.Itoa(from.Port), "migrate", "127.0.0.1", strconv.Itoa(to.Port), "", "0", "10000", "keys"}, keys...)
	if out := cli(t, args...); out != "OK" {
		t.Fatalf("redis cluster: MIGRATE %v: %s", keys, out)
	}
}

// FinishMove gives slot to server to on to, on from, then on the rest.
func (c *Cluster) FinishMove(t testing.TB, slot int, from, to *Server) {
	t.Helper()
	sl := strconv.Itoa(slot)
	cli(t, "-p", strconv.Itoa(to.Port), "cluster", "setslot", sl, "node", to.ID())
	cli(t, "-p", strconv.Itoa(from.Port), "cluster", "setslot", sl, "node", to.ID())
	for _, s := range c.Servers {
		if s != to && s != from {
			cli(t, "-p", strconv.Itoa(s.Port), "cluster", "setslot", sl, "node", to.ID())
		}
	}
}

// URL is the redis:// address of the first node; pushctl finds the other
// nodes from it.
func (c *Cluster) URL() string { return c.Servers[0].URL() }
