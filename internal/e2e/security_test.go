package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// certs writes a CA and a server certificate for 127.0.0.1.
func certs(t *testing.T) (caFile, certFile, keyFile string) {
	t.Helper()
	dir := t.TempDir()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "pushctl test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	kb, _ := x509.MarshalPKCS8PrivateKey(key)
	caFile, certFile, keyFile = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o644)
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}), 0o600)
	return
}

func TestTokensOverTLS(t *testing.T) {
	caFile, certFile, keyFile := certs(t)
	secret, _, _ := run(t, "", "token", "secret")
	secret = strings.TrimSpace(secret)
	p := start(t, nil, []string{"PUSHCTL_TOKEN_SECRET=" + secret}, "serve", "--listen", "127.0.0.1:0",
		"--tls-cert", certFile, "--tls-key", keyFile, "--log-level", "debug")
	line := p.waitStderr("broker listening on ", 30*time.Second)
	url := line[strings.Index(line, "https://"):]
	tokenFor := func(args ...string) string {
		cmd := append([]string{"token", "create", "--ttl", "1h"}, args...)
		out, errOut, code := runEnv(t, []string{"PUSHCTL_TOKEN_SECRET=" + secret}, cmd...)
		if code != 0 {
			t.Fatalf("token create: %s", errOut)
		}
		return strings.TrimSpace(out)
	}
	pubTok := tokenFor("--publish", "orders.>")
	subTok := tokenFor("--subscribe", "orders.*", "--subject", "laptop")

	sub := start(t, nil, []string{"PUSHCTL_TOKEN=" + subTok}, "sub", "orders.eu", "--count", "1", "--timeout", "30s", "-s", url, "--ca-file", caFile)
	_, errOut, code := run(t, "", "pub", "orders.eu", "--wait-subscribers", "1", "--token", pubTok, "--ca-file", caFile, "-s", url, "order 1")
	if code != 0 {
		t.Fatalf("pub over TLS with a token: %d %s", code, errOut)
	}
	if l := sub.readLine(10 * time.Second); l != "order 1" {
		t.Fatalf("sub got %q", l)
	}
	// --lines streams over wss with the token too.
	_, errOut, code = run(t, "a\nb\n", "pub", "orders.us", "--lines", "--token", pubTok, "--ca-file", caFile, "-s", url)
	if code != 0 || !strings.Contains(errOut, "published 2 messages") {
		t.Fatalf("pub --lines over wss: %d %s", code, errOut)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"pub", "orders.eu", "-s", url, "--ca-file", caFile, "x"}, "token_missing"},
		{[]string{"pub", "orders.eu", "-s", url, "--ca-file", caFile, "--token", subTok, "x"}, "forbidden"},
		{[]string{"pub", "orders.eu", "-s", url, "--ca-file", caFile, "--token", pubTok + "x", "x"}, "token_invalid"},
		{[]string{"sub", "orders.>", "-s", url, "--ca-file", caFile, "--token", subTok, "--timeout", "5s"}, "forbidden"},
		{[]string{"pub", "orders.eu", "-s", url, "--token", pubTok, "x"}, "certificate"},
	} {
		_, errOut, code := run(t, "", c.args...)
		if code != 1 || !strings.Contains(errOut, c.want) {
			t.Errorf("%v: exit %d, %s; want %s", c.args[:2], code, errOut, c.want)
		}
	}
	// Nothing secret reaches the logs.
	p.signal(os.Interrupt)
	p.wait(10 * time.Second)
	logs := p.Stderr()
	for name, s := range map[string]string{"secret": secret, "publish token": pubTok, "subscribe token": subTok} {
		if strings.Contains(logs, s) || strings.Contains(logs, s[:20]) {
			t.Errorf("the %s appears in the broker's logs", name)
		}
	}
}

func TestRefusesOpenListenerWithoutAuth(t *testing.T) {
	// A usage error (exit 2) since issue 27: the flags ask for something refused.
	_, errOut, code := run(t, "", "serve", "--listen", "0.0.0.0:0")
	if code != 2 || !strings.Contains(errOut, "refusing to listen") || !strings.Contains(errOut, "--insecure-no-auth") {
		t.Fatalf("open listener: exit %d %s", code, errOut)
	}
	p, _ := serve(t, "--listen", "0.0.0.0:0", "--insecure-no-auth")
	p.waitStderr("no access control", 10*time.Second) // the warning follows the listening line
	_, errOut, code = run(t, "", "serve", "--listen", "127.0.0.1:0", "--token-secret", "short")
	if code != 2 || !strings.Contains(errOut, "at least 32 bytes") || strings.Contains(errOut, "short\n") {
		t.Fatalf("short secret: %d %s", code, errOut)
	}
}
