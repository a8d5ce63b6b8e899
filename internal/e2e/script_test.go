package e2e

// CLI behaviour pinned by testscript scripts (testdata/script/*.txtar):
// every command and flag run as a user would, against a broker each script
// starts. The built pushctl binary is first on PATH.

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/pushctl/pushctl/internal/hooks"
	"github.com/rogpeppe/go-internal/testscript"
)

func TestScripts(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir: "testdata/script",
		Setup: func(env *testscript.Env) error {
			env.Setenv("PATH", filepath.Dir(binary)+string(os.PathListSeparator)+os.Getenv("PATH"))
			env.Setenv("GORACE", os.Getenv("GORACE"))
			env.Setenv("HOME", env.WorkDir)
			repo, err := filepath.Abs(repoRoot)
			env.Setenv("REPO", repo) // for doc: the documents' examples
			env.Setenv("GOCACHE_TEST", goCache())
			return err
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"serve":      cmdServe,
			"http":       cmdHTTP,
			"stream":     cmdStream,
			"waitsub":    cmdWaitSub,
			"eventually": cmdEventually,
			"recorder":   cmdRecorder,
			"recorded":   cmdRecorded,
			"halt":       cmdHalt,
			"genrsa":     cmdGenRSA,
			"ws":         cmdWS,
			"stall":      cmdStall,
			"slowbody":   cmdSlowBody,
			"deafws":     cmdDeafWS,
			"freeport":   cmdFreePort,
			"gencert":    cmdGenCert,
			"hookapp":    cmdHookApp,
			// doc_test.go: the examples of README.md and docs/*.md
			"doc":           cmdDoc,
			"docserve":      cmdDocServe,
			"docstream":     cmdDocStream,
			"docbg":         cmdDocBg,
			"docws":         cmdDocWS,
			"clusterport":   cmdClusterPort,
			"wsjoin":        cmdWSJoin,
			"pushertrigger": cmdPusherTrigger,
		},
		Condition: func(cond string) (bool, error) {
			switch cond {
			case "root":
				return os.Geteuid() == 0, nil
			}
			return false, fmt.Errorf("unknown condition %q", cond)
		},
	})
}

type scriptBroker struct {
	cmd  *exec.Cmd
	done chan struct{}
	code int
}

var (
	brokersMu sync.Mutex
	brokers   = map[*testscript.TestScript]map[string]*scriptBroker{}
)

// serve [-name NAME] [-env K=V…] [args…]: start `pushctl serve` in the
// background on a free port; $URL (or $URL_NAME) and $ADDR are its address.
// It is stopped (SIGTERM) when the script ends.
func cmdServe(ts *testscript.TestScript, neg bool, args []string) {
	name := ""
	var env []string
	for len(args) > 0 && (args[0] == "-name" || args[0] == "-env") {
		if args[0] == "-name" {
			name = args[1]
		} else {
			env = append(env, args[1])
		}
		args = args[2:]
	}
	full := append([]string{"serve"}, args...)
	if !hasListen(args) {
		full = append(full, "--listen", "127.0.0.1:0")
	}
	startBroker(ts, neg, name, env, exec.Command(binary, full...))
}

// startBroker starts cmd, a broker, as serve does.
func startBroker(ts *testscript.TestScript, neg bool, name string, env []string, cmd *exec.Cmd) {
	cmd.Dir = ts.Getenv("WORK")
	cmd.Env = append(os.Environ(), "HOME="+ts.Getenv("WORK"))
	cmd.Env = append(cmd.Env, env...)
	stderr, err := cmd.StderrPipe()
	ts.Check(err)
	logf, err := os.Create(filepath.Join(ts.Getenv("WORK"), "serve"+name+".log"))
	ts.Check(err)
	ts.Check(cmd.Start())
	b := &scriptBroker{cmd: cmd, done: make(chan struct{})}
	lines := make(chan string, 64)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			fmt.Fprintln(logf, sc.Text())
			select {
			case lines <- sc.Text():
			default:
			}
		}
		logf.Close()
		close(lines)
	}()
	go func() {
		err := cmd.Wait()
		if ee, ok := err.(*exec.ExitError); ok {
			b.code = ee.ExitCode()
		}
		close(b.done)
	}()
	ts.Defer(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-b.done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
		}
	})
	deadline := time.After(30 * time.Second)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				if neg {
					return
				}
				ts.Fatalf("serve exited before listening (see serve%s.log)", name)
			}
			if i := strings.Index(l, "broker listening on "); i >= 0 {
				if neg {
					ts.Fatalf("serve started, but was expected to fail")
				}
				url := strings.TrimSpace(l[i+len("broker listening on "):])
				key := "URL"
				if name != "" {
					key = "URL_" + name
				}
				ts.Setenv(key, url)
				ts.Setenv("ADDR", strings.TrimPrefix(strings.TrimPrefix(url, "http://"), "https://"))
				brokersMu.Lock()
				if brokers[ts] == nil {
					brokers[ts] = map[string]*scriptBroker{}
				}
				brokers[ts][name] = b
				brokersMu.Unlock()
				return
			}
		case <-deadline:
			ts.Fatalf("serve did not start within 30s")
		}
	}
}

// halt [-name NAME] [-signal INT|TERM] [code]: stop a broker started by
// serve and check its exit code.
func cmdHalt(ts *testscript.TestScript, neg bool, args []string) {
	name, sig, want := "", syscall.SIGTERM, 0
	for len(args) > 0 {
		switch args[0] {
		case "-name":
			name, args = args[1], args[2:]
		case "-signal":
			if args[1] == "INT" {
				sig = syscall.SIGINT
			}
			args = args[2:]
		default:
			want, _ = strconv.Atoi(args[0])
			args = args[1:]
		}
	}
	brokersMu.Lock()
	b := brokers[ts][name]
	brokersMu.Unlock()
	if b == nil {
		ts.Fatalf("no broker %q", name)
	}
	b.cmd.Process.Signal(sig)
	select {
	case <-b.done:
	case <-time.After(15 * time.Second):
		ts.Fatalf("broker did not stop within 15s")
	}
	if b.code != want {
		ts.Fatalf("broker exited %d, want %d", b.code, want)
	}
}

// http [-H K:V]… METHOD PATH [BODY]: a request to $URL; stdout gets the
// status, then the headers named with -show, then the body.
func cmdHTTP(ts *testscript.TestScript, neg bool, args []string) {
	hdr := http.Header{}
	var show []string
	for len(args) > 1 && (args[0] == "-H" || args[0] == "-show") {
		if args[0] == "-H" {
			k, v, _ := strings.Cut(args[1], ":")
			hdr.Add(k, strings.TrimSpace(v))
		} else {
			show = append(show, args[1])
		}
		args = args[2:]
	}
	if len(args) < 2 {
		ts.Fatalf("usage: http [-H K:V] [-show H] METHOD PATH [BODY]")
	}
	var body io.Reader
	if len(args) > 2 {
		body = strings.NewReader(args[2])
	}
	target := args[1]
	if !strings.Contains(target, "://") {
		target = ts.Getenv("URL") + target
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, args[0], target, body)
	ts.Check(err)
	req.Header = hdr
	resp, err := http.DefaultClient.Do(req)
	ts.Check(err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	fmt.Fprintf(ts.Stdout(), "%d\n", resp.StatusCode)
	for _, h := range show {
		fmt.Fprintf(ts.Stdout(), "%s: %s\n", h, resp.Header.Get(h))
	}
	ts.Stdout().Write(b)
	if neg != (resp.StatusCode >= 400) {
		ts.Fatalf("status %d", resp.StatusCode)
	}
}

// stream [-H K:V]… PATH N: read the first N lines of a streaming GET (10s
// at most) to stdout.
func cmdStream(ts *testscript.TestScript, neg bool, args []string) {
	hdr := http.Header{}
	for len(args) > 1 && args[0] == "-H" {
		k, v, _ := strings.Cut(args[1], ":")
		hdr.Add(k, strings.TrimSpace(v))
		args = args[2:]
	}
	if len(args) != 2 {
		ts.Fatalf("usage: stream [-H K:V] PATH N")
	}
	n, err := strconv.Atoi(args[1])
	ts.Check(err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", ts.Getenv("URL")+args[0], nil)
	ts.Check(err)
	req.Header = hdr
	resp, err := http.DefaultClient.Do(req)
	ts.Check(err)
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	for i := 0; i < n; i++ {
		l, err := br.ReadString('\n')
		if err != nil {
			ts.Fatalf("after %d lines: %v", i, err)
		}
		fmt.Fprint(ts.Stdout(), l)
	}
}

// waitsub [-token-file F] CHANNEL N: wait (20s at most) until CHANNEL has
// N subscribers.
func cmdWaitSub(ts *testscript.TestScript, neg bool, args []string) {
	hc := http.DefaultClient
	if ca := ts.Getenv("CA"); ca != "" { // a broker with TLS: trust $CA
		pemBytes, err := os.ReadFile(ca)
		ts.Check(err)
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(pemBytes)
		hc = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	}
	token := ""
	if len(args) == 4 && args[0] == "-token-file" { // a broker with access control
		b, err := os.ReadFile(ts.MkAbs(args[1]))
		ts.Check(err)
		token, args = strings.TrimSpace(string(b)), args[2:]
	}
	req, err := http.NewRequest("GET", ts.Getenv("URL")+"/channels/"+args[0]+"?wait_subscribers="+args[1]+"&timeout=20s", nil)
	ts.Check(err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := hc.Do(req)
	ts.Check(err)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		ts.Fatalf("fewer than %s subscribers on %s after 20s (%d)", args[1], args[0], resp.StatusCode)
	}
}

// eventually CMD ARGS…: run an exec command until it succeeds (20s at
// most): for effects the broker applies in the background.
func cmdEventually(ts *testscript.TestScript, neg bool, args []string) {
	deadline := time.Now().Add(20 * time.Second)
	for {
		name := args[0]
		if name == "pushctl" {
			name = binary // the lookup uses this process's PATH, not the script's
		}
		cmd := exec.Command(name, args[1:]...)
		cmd.Dir = ts.Getenv("WORK")
		cmd.Env = append(os.Environ(), "PATH="+ts.Getenv("PATH"), "PUSHCTL_SERVER="+ts.Getenv("PUSHCTL_SERVER"))
		out, err := cmd.CombinedOutput()
		if err == nil {
			ts.Stdout().Write(out)
			return
		}
		if time.Now().After(deadline) {
			ts.Fatalf("%v never succeeded: %s", args, out)
		}
		<-time.After(50 * time.Millisecond) // the next look at a background effect, within the deadline
	}
}

type hookRecorder struct {
	mu  sync.Mutex
	got []string
	ch  chan struct{}
}

var (
	recordersMu sync.Mutex
	recorders   = map[*testscript.TestScript]*hookRecorder{}
)

// recorder: an HTTP endpoint recording every POST ($HOOK is its URL), as
// "header-values body" lines (X-Pushctl-Channel, X-Pushctl-Event, X-Test).
func cmdRecorder(ts *testscript.TestScript, neg bool, args []string) {
	rec := &hookRecorder{ch: make(chan struct{}, 1)}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		rec.mu.Lock()
		rec.got = append(rec.got, fmt.Sprintf("%s %s %s %s", r.Header.Get("X-Pushctl-Channel"), r.Header.Get("X-Pushctl-Event"), r.Header.Get("X-Test"), b))
		rec.mu.Unlock()
		select {
		case rec.ch <- struct{}{}:
		default:
		}
	}))
	ts.Defer(srv.Close)
	recordersMu.Lock()
	recorders[ts] = rec
	recordersMu.Unlock()
	ts.Setenv("HOOK", srv.URL)
}

// recorded N: wait (20s at most) for N recorded requests and print them.
func cmdRecorded(ts *testscript.TestScript, neg bool, args []string) {
	n, _ := strconv.Atoi(args[0])
	recordersMu.Lock()
	rec := recorders[ts]
	recordersMu.Unlock()
	deadline := time.After(20 * time.Second)
	for {
		rec.mu.Lock()
		got := append([]string(nil), rec.got...)
		rec.mu.Unlock()
		if len(got) >= n {
			for _, g := range got {
				fmt.Fprintln(ts.Stdout(), g)
			}
			return
		}
		select {
		case <-rec.ch:
		case <-deadline:
			ts.Fatalf("%d of %d requests recorded: %q", len(got), n, got)
		}
	}
}

// genrsa PRIVATE PUBLIC: write a 2048-bit RSA key pair as PEM (PKCS#8 and
// PKIX), for tokens signed with RSA.
func cmdGenRSA(ts *testscript.TestScript, neg bool, args []string) {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	ts.Check(err)
	priv, err := x509.MarshalPKCS8PrivateKey(k)
	ts.Check(err)
	pub, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	ts.Check(err)
	ts.Check(os.WriteFile(ts.MkAbs(args[0]), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: priv}), 0o600))
	ts.Check(os.WriteFile(ts.MkAbs(args[1]), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644))
}

// ws PATH N FRAME…: open a WebSocket to $URL+PATH, send the frames and
// print the first N frames that come back (10s at most). A FRAME @FILE is
// the content of FILE.
func cmdWS(ts *testscript.TestScript, neg bool, args []string) {
	n, err := strconv.Atoi(args[1])
	ts.Check(err)
	c, resp, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(ts.Getenv("URL"), "http")+args[0], nil)
	if err != nil {
		if neg {
			fmt.Fprintf(ts.Stdout(), "%v\n", err)
			if resp != nil {
				fmt.Fprintf(ts.Stdout(), "%d\n", resp.StatusCode)
			}
			return
		}
		ts.Fatalf("dial: %v", err)
	}
	defer c.Close()
	for _, f := range args[2:] {
		if name, ok := strings.CutPrefix(f, "@"); ok {
			b, err := os.ReadFile(ts.MkAbs(name))
			ts.Check(err)
			f = strings.TrimSpace(string(b))
		}
		ts.Check(c.WriteMessage(websocket.TextMessage, []byte(f)))
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for i := 0; i < n; i++ {
		_, data, err := c.ReadMessage()
		if err != nil {
			fmt.Fprintf(ts.Stdout(), "%v\n", err)
			if !neg {
				ts.Fatalf("frame %d: %v", i+1, err)
			}
			return
		}
		fmt.Fprintf(ts.Stdout(), "%s\n", data)
	}
}

// stall PATH: open a streaming GET through a small receive buffer and never
// read from it (until the script ends): a subscriber that stopped reading.
func cmdStall(ts *testscript.TestScript, neg bool, args []string) {
	c, err := net.Dial("tcp", ts.Getenv("ADDR"))
	ts.Check(err)
	c.(*net.TCPConn).SetReadBuffer(64 << 10)
	ts.Defer(func() { c.Close() })
	_, err = fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\nAccept: application/x-ndjson\r\n\r\n", args[0])
	ts.Check(err)
}

// slowbody PATH: send a request whose body never finishes and print the
// status line the broker answers with (10s at most).
func cmdSlowBody(ts *testscript.TestScript, neg bool, args []string) {
	c, err := net.Dial("tcp", ts.Getenv("ADDR"))
	ts.Check(err)
	defer c.Close()
	fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc", args[0])
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	ts.Check(err)
	fmt.Fprint(ts.Stdout(), line)
}

// deafws PATH: a WebSocket client that never answers pings; prints how
// many pings came before the broker closed the connection (10s at most).
func cmdDeafWS(ts *testscript.TestScript, neg bool, args []string) {
	c, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(ts.Getenv("URL"), "http")+args[0], nil)
	ts.Check(err)
	defer c.Close()
	pings := 0
	c.SetPingHandler(func(string) error { pings++; return nil })
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		if _, _, err := c.ReadMessage(); err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				ts.Fatalf("still open after 10s (%d pings)", pings)
			}
			fmt.Fprintf(ts.Stdout(), "pings %d, then closed\n", pings)
			return
		}
	}
}

// freeport VAR: set VAR to a free loopback port.
func cmdFreePort(ts *testscript.TestScript, neg bool, args []string) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	ts.Check(err)
	defer l.Close()
	ts.Setenv(args[0], strconv.Itoa(l.Addr().(*net.TCPAddr).Port))
}

// gencert CERT KEY CA: a CA and a certificate for 127.0.0.1 signed by it.
func cmdGenCert(ts *testscript.TestScript, neg bool, args []string) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ts.Check(err)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "pushctl test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	ts.Check(err)
	ca, err := x509.ParseCertificate(caDER)
	ts.Check(err)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ts.Check(err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	ts.Check(err)
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	ts.Check(err)
	ts.Check(os.WriteFile(ts.MkAbs(args[0]), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644))
	ts.Check(os.WriteFile(ts.MkAbs(args[1]), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}), 0o600))
	ts.Check(os.WriteFile(ts.MkAbs(args[2]), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o644))
}

// hookapp: start an application answering pushctl's hooks on loopback
// ($HOOK_URL), checking each request's signature with
// $PUSHCTL_HOOK_SECRET: the session cookie "alice" is alice, granted
// chat.> and metrics.>; no session is refused ("login_required: log in
// first"); a client message "spam" is refused.
func cmdHookApp(ts *testscript.TestScript, neg bool, args []string) {
	secret := []byte(ts.Getenv("PUSHCTL_HOOK_SECRET"))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if err := hooks.Verify(secret, r.Header.Get(hooks.SignatureHeader), body, time.Now()); err != nil {
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		var req struct {
			Hook    string            `json:"hook"`
			Cookies map[string]string `json:"cookies"`
			Data    json.RawMessage   `json:"data"`
		}
		json.Unmarshal(body, &req)
		answer := `{}`
		switch {
		case req.Hook == "connect" && req.Cookies["session"] == "alice":
			answer = `{"user":"alice","subscribe":["chat.>","metrics.>"],"publish":["chat.>"]}`
		case req.Hook == "connect":
			answer = `{"error":{"code":"login_required","message":"log in first"}}`
		case req.Hook == "publish" && string(req.Data) == `"spam"`:
			answer = `{"error":{"message":"no spam here"}}`
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, answer)
	}))
	ts.Defer(srv.Close)
	ts.Setenv("HOOK_URL", srv.URL+"/pushctl")
}
