package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// provider is an identity provider on loopback: it serves a JWKS of the
// keys it holds now and signs tokens with any of them.
type provider struct {
	t    *testing.T
	srv  *httptest.Server
	mu   sync.Mutex
	keys map[string]crypto.Signer // by kid, published
	hits atomic.Int64
	down atomic.Bool
}

func newProvider(t *testing.T) *provider {
	p := &provider{t: t, keys: map[string]crypto.Signer{}}
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.hits.Add(1)
		if p.down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		var set struct {
			Keys []map[string]string `json:"keys"`
		}
		for kid, k := range p.keys {
			set.Keys = append(set.Keys, jwkOf(kid, k.Public()))
		}
		set.Keys = append(set.Keys, map[string]string{"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}) // skipped
		json.NewEncoder(w).Encode(set)
	}))
	t.Cleanup(p.srv.Close)
	return p
}

func (p *provider) set(kid string, k crypto.Signer) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if k == nil {
		delete(p.keys, kid)
	} else {
		p.keys[kid] = k
	}
}

func b64u(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func jwkOf(kid string, pub crypto.PublicKey) map[string]string {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return map[string]string{"kty": "RSA", "kid": kid, "use": "sig", "n": b64u(k.N.Bytes()), "e": b64u(big.NewInt(int64(k.E)).Bytes())}
	case *ecdsa.PublicKey:
		b, _ := k.Bytes()
		n := (len(b) - 1) / 2
		return map[string]string{"kty": "EC", "kid": kid, "crv": k.Curve.Params().Name, "x": b64u(b[1 : 1+n]), "y": b64u(b[1+n:])}
	case ed25519.PublicKey:
		return map[string]string{"kty": "OKP", "kid": kid, "crv": "Ed25519", "x": b64u(k)}
	}
	panic("key type")
}

// sign makes a token of kid's key (or any signer) granting subscribe "idp.>".
func sign(t *testing.T, kid string, k crypto.Signer, claims jwt.MapClaims) string {
	t.Helper()
	var m jwt.SigningMethod
	switch k.(type) {
	case *rsa.PrivateKey:
		m = jwt.SigningMethodRS256
	case *ecdsa.PrivateKey:
		m = jwt.SigningMethodES256
	case ed25519.PrivateKey:
		m = jwt.SigningMethodEdDSA
	}
	c := jwt.MapClaims{"exp": time.Now().Add(time.Hour).Unix(), "pushctl": map[string]any{"subscribe": []string{"idp.>"}}}
	for k, v := range claims {
		c[k] = v
	}
	tok := jwt.NewWithClaims(m, c)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(k)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func mustKey(t *testing.T, kind string) crypto.Signer {
	t.Helper()
	var k crypto.Signer
	var err error
	switch kind {
	case "rsa":
		k, err = rsa.GenerateKey(rand.Reader, 2048)
	case "ec":
		k, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "ed":
		_, k, err = ed25519.GenerateKey(rand.Reader)
	}
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// clock is a settable time for the key set's refresh rules.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func TestJWKSRotationUnknownAndRemovedKeys(t *testing.T) {
	p := newProvider(t)
	k1, k2 := mustKey(t, "rsa"), mustKey(t, "ec")
	p.set("k1", k1)
	clk := &clock{now: time.Now()}
	j, err := NewJWKS(t.Context(), p.srv.URL, nil, JWKSOptions{MinRefresh: 10 * time.Second, Refresh: time.Hour, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	a := New(Config{JWKS: j})
	if !a.TokensEnabled() {
		t.Fatal("a JWKS does not enable tokens")
	}
	check := func(tok string) error {
		id, err := a.Authenticate(tok, nil)
		if err != nil {
			return err
		}
		return a.Allow(id, Subscribe, "idp.news")
	}
	if err := check(sign(t, "k1", k1, nil)); err != nil {
		t.Fatalf("k1: %v", err)
	}
	// The provider rotates to k2: the first token of k2 fetches the set again.
	p.set("k2", k2)
	before := p.hits.Load()
	if err := check(sign(t, "k2", k2, nil)); !errors.Is(err, ErrBadToken) {
		t.Fatalf("k2 within MinRefresh of the last fetch: %v, want a bad token (no fetch yet)", err)
	}
	if p.hits.Load() != before {
		t.Fatal("an unknown kid fetched within MinRefresh")
	}
	clk.add(11 * time.Second)
	if err := check(sign(t, "k2", k2, nil)); err != nil {
		t.Fatalf("k2 after rotation: %v", err)
	}
	if p.hits.Load() != before+1 {
		t.Fatalf("%d fetches for one rotation", p.hits.Load()-before)
	}
	// Made-up kids do not flood the provider.
	for range 50 {
		if err := check(sign(t, "nope", k2, nil)); !errors.Is(err, ErrBadToken) || !strings.Contains(err.Error(), `"nope"`) {
			t.Fatalf("unknown kid: %v", err)
		}
	}
	if n := p.hits.Load(); n != before+1 {
		t.Fatalf("50 unknown kids fetched the set %d times", n-before-1)
	}
	// k1 is removed: once the set is fetched again, its tokens stop.
	p.set("k1", nil)
	clk.add(11 * time.Second)
	if err := check(sign(t, "gone", k1, nil)); !errors.Is(err, ErrBadToken) {
		t.Fatalf("unknown kid: %v", err)
	}
	if err := check(sign(t, "k1", k1, nil)); !errors.Is(err, ErrBadToken) {
		t.Fatalf("removed key k1 still verifies: %v", err)
	}
	// A token signed by another key under a known kid is refused.
	if err := check(sign(t, "k2", mustKey(t, "ec"), nil)); !errors.Is(err, ErrBadToken) {
		t.Fatalf("forged k2: %v", err)
	}
	// So is one without a kid, and an HMAC token (no secret configured).
	if err := check(sign(t, "", k2, nil)); !errors.Is(err, ErrBadToken) || !strings.Contains(err.Error(), "kid") {
		t.Fatalf("no kid: %v", err)
	}
	hs, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"exp": time.Now().Add(time.Hour).Unix(), "pushctl": map[string]any{"subscribe": []string{">"}}}).SignedString([]byte("secret"))
	if err := check(hs); !errors.Is(err, ErrBadToken) {
		t.Fatalf("HMAC token: %v", err)
	}
	// Grants still apply.
	id, err := a.Authenticate(sign(t, "k2", k2, nil), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Allow(id, Subscribe, "other"); !errors.Is(err, ErrForbidden) {
		t.Fatalf("a grant of idp.> allowed other: %v", err)
	}
}

func TestJWKSPeriodicRefreshInBackground(t *testing.T) {
	p := newProvider(t)
	k1 := mustKey(t, "ed")
	p.set("k1", k1)
	clk := &clock{now: time.Now()}
	j, err := NewJWKS(t.Context(), p.srv.URL, nil, JWKSOptions{Refresh: time.Minute, MinRefresh: time.Second, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	a := New(Config{JWKS: j})
	tok := sign(t, "k1", k1, nil)
	// The provider goes down: known keys keep working, from the cache.
	p.down.Store(true)
	clk.add(2 * time.Minute)
	for range 3 {
		if _, err := a.Authenticate(tok, nil); err != nil {
			t.Fatalf("a known key during the provider's outage: %v", err)
		}
	}
	// The provider is back and has dropped k1: the periodic fetch (due
	// again MinRefresh after the failed one) drops it too.
	p.down.Store(false)
	p.set("k1", nil)
	deadline := time.Now().Add(10 * time.Second)
	for {
		clk.add(2 * time.Second)
		if _, err := a.Authenticate(tok, nil); errors.Is(err, ErrBadToken) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a key the provider removed still verifies after its periodic fetch")
		}
		waitIdle(j)
	}
}

// waitIdle waits for a fetch under way to end.
func waitIdle(j *JWKS) {
	j.mu.Lock()
	done := j.inflight
	j.mu.Unlock()
	if done != nil {
		<-done
	}
}

func TestJWKSIssuerAndAudience(t *testing.T) {
	p := newProvider(t)
	k := mustKey(t, "ec")
	p.set("k", k)
	j, err := NewJWKS(t.Context(), p.srv.URL, nil, JWKSOptions{Issuer: "https://idp.example", Audience: "pushctl"})
	if err != nil {
		t.Fatal(err)
	}
	a := New(Config{JWKS: j})
	for _, c := range []struct {
		claims jwt.MapClaims
		ok     bool
	}{
		{jwt.MapClaims{"iss": "https://idp.example", "aud": "pushctl"}, true},
		{jwt.MapClaims{"iss": "https://idp.example", "aud": []string{"app", "pushctl"}}, true},
		{jwt.MapClaims{"iss": "https://other.example", "aud": "pushctl"}, false},
		{jwt.MapClaims{"iss": "https://idp.example", "aud": "app"}, false},
		{jwt.MapClaims{"iss": "https://idp.example"}, false},
	} {
		_, err := a.Authenticate(sign(t, "k", k, c.claims), nil)
		if (err == nil) != c.ok {
			t.Errorf("%v: %v", c.claims, err)
		}
	}
}

func TestJWKSUnreachableAtStart(t *testing.T) {
	p := newProvider(t)
	p.down.Store(true)
	if _, err := NewJWKS(t.Context(), p.srv.URL, nil, JWKSOptions{}); err == nil || !strings.Contains(err.Error(), "HTTP 503") {
		t.Fatalf("a provider that is down at start: %v", err)
	}
}

func TestParseJWKSLeavesOutBadKeys(t *testing.T) {
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	good := `{"kty":"OKP","kid":"good","crv":"Ed25519","x":"` + b64u(make([]byte, 32)) + `"}`
	x, y := make([]byte, 32), make([]byte, 32)
	x[31], y[31] = 1, 1
	for _, bad := range []string{
		`{"kty":"RSA","kid":"a","n":"!!","e":"AQAB"}`,
		`{"kty":"RSA","kid":"a","n":"` + b64u(small.N.Bytes()) + `","e":"AQAB"}`,
		`{"kty":"EC","kid":"a","crv":"P-256","x":"AAAA","y":"AAAA"}`,
		`{"kty":"EC","kid":"a","crv":"secp256k1","x":"AAAA","y":"AAAA"}`,
		`{"kty":"OKP","kid":"a","crv":"Ed25519","x":"AAAA"}`,
		`{"kty":"OKP","crv":"Ed25519","x":"` + b64u(make([]byte, 32)) + `"}`,
		`{"kty":"EC","kid":"a","crv":"P-256","x":"` + b64u(x) + `","y":"` + b64u(y) + `"}`, // off the curve
	} {
		keys, skipped, err := ParseJWKS([]byte(`{"keys":[` + bad + `,` + good + `]}`))
		if err != nil || len(skipped) != 1 {
			t.Errorf("%s: %v, skipped %v", bad, err, skipped)
		}
		if _, ok := keys["a"]; ok {
			t.Errorf("%s: taken", bad)
		}
		if _, ok := keys["good"]; !ok {
			t.Errorf("%s: the good key beside it was lost", bad)
		}
	}
	for _, doc := range []string{`{}`, `[]`, `{"keys":[` + good + `,` + good + `]}`} {
		if _, _, err := ParseJWKS([]byte(doc)); err == nil {
			t.Errorf("accepted %s", doc)
		}
	}
}

// TestJWKSUnknownKidsDuringAnOutage: while the provider fails, tokens
// with made-up kids still fetch at most once per MinRefresh (the review
// found 21 fetches for 20 such tokens).
func TestJWKSUnknownKidsDuringAnOutage(t *testing.T) {
	p := newProvider(t)
	k := mustKey(t, "ec")
	p.set("k", k)
	clk := &clock{now: time.Now()}
	j, err := NewJWKS(t.Context(), p.srv.URL, nil, JWKSOptions{Refresh: 10 * time.Minute, MinRefresh: 10 * time.Second, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	a := New(Config{JWKS: j})
	p.down.Store(true)
	clk.add(11 * time.Second)
	before := p.hits.Load()
	for i := range 20 {
		if _, err := a.Authenticate(sign(t, fmt.Sprint("made-up-", i), k, nil), nil); !errors.Is(err, ErrBadToken) {
			t.Fatalf("unknown kid: %v", err)
		}
	}
	if n := p.hits.Load() - before; n > 1 {
		t.Fatalf("20 unknown kids during an outage fetched %d times", n)
	}
	// The known key goes on working throughout.
	if _, err := a.Authenticate(sign(t, "k", k, nil), nil); err != nil {
		t.Fatalf("known key during the outage: %v", err)
	}
}

// TestJWKSKeyAlg: a key whose JWK names its algorithm verifies only that.
func TestJWKSKeyAlg(t *testing.T) {
	k := mustKey(t, "rsa")
	jw := jwkOf("k", k.Public())
	jw["alg"] = "PS256"
	doc, _ := json.Marshal(map[string]any{"keys": []any{jw}})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(doc) }))
	defer srv.Close()
	j, err := NewJWKS(t.Context(), srv.URL, nil, JWKSOptions{})
	if err != nil {
		t.Fatal(err)
	}
	a := New(Config{JWKS: j})
	if _, err := a.Authenticate(sign(t, "k", k, nil), nil); !errors.Is(err, ErrBadToken) || !strings.Contains(err.Error(), "PS256") {
		t.Fatalf("an RS256 token of a PS256 key: %v", err)
	}
}

// FuzzParseJWKS: any document is parsed or refused, never a panic, and
// every key it returns is one a token can be checked with.
func FuzzParseJWKS(f *testing.F) {
	f.Add([]byte(`{"keys":[{"kty":"OKP","kid":"a","crv":"Ed25519","x":"` + b64u(make([]byte, 32)) + `"}]}`))
	f.Add([]byte(`{"keys":[{"kty":"RSA","kid":"a","n":"AQAB","e":"AQAB"},{"kty":"EC","kid":"b","crv":"P-384","x":"","y":""}]}`))
	f.Add([]byte(`{"keys":[{"kty":"oct","kid":"h","k":"c2VjcmV0"}]}`))
	f.Fuzz(func(t *testing.T, doc []byte) {
		keys, _, err := ParseJWKS(doc)
		if err != nil {
			return
		}
		for kid, k := range keys {
			switch k.Public.(type) {
			case *rsa.PublicKey, *ecdsa.PublicKey, ed25519.PublicKey:
			default:
				t.Fatalf("kid %q: key of type %T", kid, k)
			}
		}
	})
}
