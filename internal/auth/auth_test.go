package auth

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"errors"
	"hash"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

var secret = []byte("0123456789abcdef0123456789abcdef")

func TestCovers(t *testing.T) {
	for _, c := range []struct {
		grant, ch string
		ok        bool
	}{
		{"news", "news", true}, {"news", "news.a", false}, {"news.*", "news.a", true}, {"news.*", "news", false},
		{"news.*", "news.a.b", false}, {"news.*", "news.*", true}, {"news.*", "news.>", false},
		{"news.>", "news.a.b", true}, {"news.>", "news.*", true}, {"news.>", "news.>", true}, {"news.>", "news", false},
		{">", "anything.at.all", true}, {">", ">", true}, {"*", "a", true}, {"*", "a.b", false}, {"a.*.c", "a.b.c", true},
	} {
		if got := covers(c.grant, c.ch); got != c.ok {
			t.Errorf("covers(%q, %q) = %v", c.grant, c.ch, got)
		}
	}
}

func TestTokens(t *testing.T) {
	now := time.Now()
	clock := func() time.Time { return now }
	edPub, edPriv, _ := ed25519.GenerateKey(rand.Reader)
	ecPriv, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	g := Grants{Publish: []string{"orders.>"}, Subscribe: []string{"chat.*"}}

	hmacTok, _ := Issue(g, time.Hour, "u1", "", secret, nil, now)
	edTok, _ := Issue(g, time.Hour, "u2", "", nil, edPriv, now)
	ecTok, _ := Issue(g, time.Hour, "u3", "", nil, ecPriv, now)
	expired, _ := Issue(g, time.Minute, "u4", "", secret, nil, now.Add(-time.Hour))
	otherSecret, _ := Issue(g, time.Hour, "u5", "", []byte("another-secret-another-secret-xx"), nil, now)
	tampered := hmacTok[:len(hmacTok)-3] + "AAA"
	// A token granting more, with the signature of another: the payload swapped.
	parts := strings.Split(hmacTok, ".")
	big, _ := Issue(Grants{Publish: []string{">"}}, time.Hour, "", "", []byte("x-attacker-secret-attacker-secret"), nil, now)
	swapped := parts[0] + "." + strings.Split(big, ".")[1] + "." + parts[2]
	none := "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0." + parts[1] + "."

	hm := New(Config{Secret: secret, Now: clock})
	ed := New(Config{PublicKey: edPub, Now: clock})
	ec := New(Config{PublicKey: &ecPriv.PublicKey, Now: clock})
	for _, c := range []struct {
		name string
		a    *Authorizer
		tok  string
		err  error
	}{
		{"hmac", hm, hmacTok, nil},
		{"ed25519", ed, edTok, nil},
		{"ecdsa", ec, ecTok, nil},
		{"expired", hm, expired, ErrExpired},
		{"wrong secret", hm, otherSecret, ErrBadToken},
		{"tampered", hm, tampered, ErrBadToken},
		{"swapped payload", hm, swapped, ErrBadToken},
		{"alg none", hm, none, ErrBadToken},
		{"hmac to a public-key broker", ed, hmacTok, ErrBadToken},
		{"ed25519 to an hmac broker", hm, edTok, ErrBadToken},
		{"garbage", hm, "not.a.token", ErrBadToken},
		{"huge", hm, strings.Repeat("a", MaxTokenLen+1), ErrBadToken},
	} {
		id, err := c.a.Authenticate(c.tok, nil)
		if c.err == nil {
			if err != nil || id.Claims == nil {
				t.Errorf("%s: %v", c.name, err)
			}
			continue
		}
		if !errors.Is(err, c.err) {
			t.Errorf("%s: err = %v, want %v", c.name, err, c.err)
		}
		if err != nil && strings.Contains(err.Error(), c.tok) && len(c.tok) > 10 {
			t.Errorf("%s: the error repeats the token", c.name)
		}
	}
	id, _ := hm.Authenticate(hmacTok, nil)
	for _, c := range []struct {
		a  Action
		ch string
		ok bool
	}{{Publish, "orders.eu.1", true}, {Publish, "chat.x", false}, {Subscribe, "chat.x", true}, {Subscribe, "chat.*", true}, {Subscribe, "chat.>", false}, {Subscribe, "orders.a", false}} {
		err := hm.Allow(id, c.a, c.ch)
		if (err == nil) != c.ok {
			t.Errorf("%v %s: %v", c.a, c.ch, err)
		}
		if err != nil && !errors.Is(err, ErrForbidden) {
			t.Errorf("%v %s: %v is not forbidden", c.a, c.ch, err)
		}
	}
	if err := hm.Allow(nil, Subscribe, "chat.x"); !errors.Is(err, ErrNoToken) {
		t.Errorf("no identity: %v", err)
	}
	// A token that expires while in use stops working.
	now = now.Add(2 * time.Hour)
	if err := hm.Allow(id, Publish, "orders.a"); !errors.Is(err, ErrExpired) {
		t.Errorf("after expiry: %v", err)
	}
}

func TestTrustedPublishers(t *testing.T) {
	a := New(Config{TrustedPublishers: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("::1/128")}})
	in, _ := a.Authenticate("", &net.TCPAddr{IP: net.ParseIP("10.1.2.3"), Port: 5})
	v6, _ := a.Authenticate("", &net.TCPAddr{IP: net.ParseIP("::1"), Port: 5})
	mapped, _ := a.Authenticate("", &net.TCPAddr{IP: net.ParseIP("::ffff:10.9.9.9"), Port: 5})
	out, _ := a.Authenticate("", &net.TCPAddr{IP: net.ParseIP("192.168.1.1"), Port: 5})
	for name, id := range map[string]*Identity{"in": in, "v6": v6, "mapped": mapped} {
		if err := a.Allow(id, Publish, "x"); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	if err := a.Allow(out, Publish, "x"); !errors.Is(err, ErrForbidden) {
		t.Errorf("outside: %v", err)
	}
	if err := a.Allow(out, Subscribe, "x"); err != nil {
		t.Errorf("subscribing needs no address: %v", err)
	}
}

func FuzzAuthenticate(f *testing.F) {
	tok, _ := Issue(Grants{Publish: []string{"a.>"}}, time.Hour, "s", "", secret, nil, time.Now())
	f.Add(tok)
	f.Add("eyJhbGciOiJub25lIn0.e30.")
	f.Add("a.b.c")
	f.Add("")
	f.Add(tok[:len(tok)-2] + "AA")
	a := New(Config{Secret: secret})
	f.Fuzz(func(t *testing.T, s string) {
		id, err := a.Authenticate(s, nil)
		if err == nil && s != "" {
			// Only a token signed with the secret gets through: check the
			// signature independently of the JWT library.
			if !signedWith(s, secret) {
				t.Fatalf("accepted %q, which is not signed with the secret", s)
			}
			if id.Claims == nil || id.Claims.ExpiresAt == nil {
				t.Fatalf("accepted %q without claims or expiry", s)
			}
		}
		if err != nil && !errors.Is(err, ErrBadToken) && !errors.Is(err, ErrExpired) {
			t.Fatalf("unexpected error kind %v", err)
		}
	})
}

// signedWith reports whether tok is a JWS whose HMAC signature (HS256,
// HS384 or HS512, as its header says) over header.payload verifies.
func signedWith(tok string, key []byte) bool {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return false
	}
	hb, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil {
		return false
	}
	var h struct{ Alg string }
	if json.Unmarshal(hb, &h) != nil {
		return false
	}
	var mac hash.Hash
	switch h.Alg {
	case "HS256":
		mac = hmac.New(sha256.New, key)
	case "HS384":
		mac = hmac.New(sha512.New384, key)
	case "HS512":
		mac = hmac.New(sha512.New, key)
	default:
		return false
	}
	mac.Write([]byte(parts[0] + "." + parts[1]))
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	return err == nil && hmac.Equal(sig, mac.Sum(nil))
}

func BenchmarkVerifyHMAC(b *testing.B) {
	tok, _ := Issue(Grants{Publish: []string{"orders.>"}, Subscribe: []string{"chat.*"}}, time.Hour, "u", "", secret, nil, time.Now())
	a := New(Config{Secret: secret})
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		id, err := a.Authenticate(tok, nil)
		if err != nil || a.Allow(id, Publish, "orders.eu") != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerifyEd25519(b *testing.B) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	tok, _ := Issue(Grants{Subscribe: []string{"chat.*"}}, time.Hour, "u", "", nil, priv, time.Now())
	a := New(Config{PublicKey: pub})
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := a.Authenticate(tok, nil); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAllow(b *testing.B) {
	tok, _ := Issue(Grants{Publish: []string{"orders.>"}}, time.Hour, "u", "", secret, nil, time.Now())
	a := New(Config{Secret: secret})
	id, _ := a.Authenticate(tok, nil)
	for i := 0; i < b.N; i++ {
		if a.Allow(id, Publish, "orders.eu.7") != nil {
			b.Fatal("denied")
		}
	}
}
