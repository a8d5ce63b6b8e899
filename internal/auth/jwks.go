package auth

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"slices"
	"sync"
	"time"
)

// JWKS verifies tokens signed by an identity provider's keys, published
// as a JSON Web Key Set at a URL (RFC 7517). Keys are found by the token's
// kid; the set is fetched at start, again every Refresh, and again when a
// token names a kid the set lacks (at most once per MinRefresh, so tokens
// with made-up kids cannot flood the provider). Each fetch replaces the
// whole set: a key the provider removed stops verifying at the next fetch.
type JWKS struct {
	url    string
	client *http.Client
	opts   JWKSOptions

	mu       sync.Mutex
	keys     map[string]Key // by kid
	skipped  []string       // keys of the last fetch left out, and why
	fetched  time.Time      // when the last successful fetch began
	tried    time.Time      // when the last fetch began, successful or not
	lastErr  error          // of the last fetch
	fetches  int            // fetches begun, for tests and metrics
	inflight chan struct{}  // closed when the fetch under way ends; nil: none
}

// JWKSOptions tune a JWKS.
type JWKSOptions struct {
	// Refresh is how often the set is fetched again (default 10m).
	Refresh time.Duration
	// MinRefresh bounds fetches caused by unknown kids (default 10s).
	MinRefresh time.Duration
	// Timeout bounds one fetch (default 5s).
	Timeout time.Duration
	// Issuer and Audience, when set, must match the token's iss and aud.
	Issuer, Audience string
	// Now is the clock (tests).
	Now func() time.Time
}

// maxJWKSBytes bounds a key set's document.
const maxJWKSBytes = 1 << 20

// NewJWKS returns a key set at url and fetches it once: a provider that
// cannot be reached at start is an error, so a typo in the URL is found
// at once rather than at the first login.
func NewJWKS(ctx context.Context, url string, client *http.Client, opts JWKSOptions) (*JWKS, error) {
	if opts.Refresh <= 0 {
		opts.Refresh = 10 * time.Minute
	}
	if opts.MinRefresh <= 0 {
		opts.MinRefresh = 10 * time.Second
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 5 * time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if client == nil {
		client = &http.Client{}
	}
	j := &JWKS{url: url, client: client, opts: opts, fetched: opts.Now(), tried: opts.Now(), fetches: 1}
	keys, skipped, err := j.fetch(ctx)
	if err != nil {
		return nil, err
	}
	j.keys, j.skipped = keys, skipped
	return j, nil
}

// Skipped are the keys of the last fetched set left out, and why.
func (j *JWKS) Skipped() []string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.skipped
}

// Fetches is how many fetches of the set were tried.
func (j *JWKS) Fetches() int {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.fetches
}

// key returns the key of kid. An unknown kid fetches the set again (when
// the last fetch is older than MinRefresh): the provider may have rotated
// its keys; checks that need the same fetch wait for it. A known kid is
// answered from the cache, and when the periodic fetch is due it runs in
// the background.
func (j *JWKS) key(kid string) (Key, error) {
	j.mu.Lock()
	now := j.opts.Now()
	if k, ok := j.keys[kid]; ok {
		if now.Sub(j.fetched) >= j.opts.Refresh && now.Sub(j.tried) >= j.opts.MinRefresh && j.inflight == nil {
			j.startFetchLocked()
		}
		j.mu.Unlock()
		return k, nil
	}
	if j.inflight == nil {
		if now.Sub(j.tried) < j.opts.MinRefresh {
			j.mu.Unlock()
			return Key{}, fmt.Errorf("key %q is not in the identity provider's key set", kid)
		}
		j.startFetchLocked()
	}
	done := j.inflight
	j.mu.Unlock()
	<-done // the fetch has a timeout of its own
	j.mu.Lock()
	defer j.mu.Unlock()
	if k, ok := j.keys[kid]; ok {
		return k, nil
	}
	if j.lastErr != nil {
		return Key{}, fmt.Errorf("key %q is not in the identity provider's key set, which could not be fetched again: %v", kid, j.lastErr)
	}
	return Key{}, fmt.Errorf("key %q is not in the identity provider's key set", kid)
}

// startFetchLocked fetches the set in the background; inflight is closed
// when it is done. A failed fetch keeps the keys there were and may be
// tried again after MinRefresh.
func (j *JWKS) startFetchLocked() {
	done := make(chan struct{})
	j.inflight = done
	started := j.opts.Now()
	j.tried = started
	j.fetches++
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), j.opts.Timeout)
		keys, skipped, err := j.fetch(ctx)
		cancel()
		j.mu.Lock()
		if err == nil {
			j.keys, j.skipped, j.fetched = keys, skipped, started
		}
		j.lastErr = err
		j.inflight = nil
		j.mu.Unlock()
		close(done)
	}()
}

// fetch gets and parses the set.
func (j *JWKS) fetch(ctx context.Context) (map[string]Key, []string, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", j.url, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("token JWKS %s: %w", j.url, err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := j.client.Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("token JWKS: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, nil, fmt.Errorf("token JWKS %s: HTTP %d", j.url, resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes+1))
	if err == nil && len(body) > maxJWKSBytes {
		err = fmt.Errorf("larger than %d bytes", maxJWKSBytes)
	}
	var keys map[string]Key
	var skipped []string
	if err == nil {
		keys, skipped, err = ParseJWKS(body)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("token JWKS %s: %w", j.url, err)
	}
	return keys, skipped, nil
}

// checkClaims holds a provider's token to the issuer and audience asked
// for: a token the provider issued for another application is not one
// for pushctl.
func (j *JWKS) checkClaims(c *Claims) error {
	if j.opts.Issuer != "" && c.Issuer != j.opts.Issuer {
		return fmt.Errorf("issued by %q, not %q", c.Issuer, j.opts.Issuer)
	}
	if j.opts.Audience != "" && !slices.Contains(c.Audience, j.opts.Audience) {
		return fmt.Errorf("not for audience %q", j.opts.Audience)
	}
	return nil
}

// jwk is one key of a set; the fields of every key type it takes.
type jwk struct {
	Kty string `json:"kty"`
	Kid string `json:"kid"`
	Use string `json:"use"`
	Alg string `json:"alg"`
	Crv string `json:"crv"`
	N   string `json:"n"`
	E   string `json:"e"`
	X   string `json:"x"`
	Y   string `json:"y"`
}

// Key is one verifying key of a set, with the algorithm its JWK names
// ("": any its type allows).
type Key struct {
	Public crypto.PublicKey
	Alg    string
}

// ParseJWKS reads a JSON Web Key Set: RSA (2048 bits or more), EC (P-256,
// P-384, P-521) and OKP (Ed25519) public keys with a kid, for signing.
// Keys of other types or uses are left out, and so is a key this pushctl
// cannot use (too weak, another curve, malformed), named in skipped: one
// such key of a provider must not stop its other keys from verifying. A
// document that is not a key set, or a kid that names two keys, is an
// error.
func ParseJWKS(b []byte) (keys map[string]Key, skipped []string, err error) {
	var set struct {
		Keys []jwk `json:"keys"`
	}
	if err := json.Unmarshal(b, &set); err != nil {
		return nil, nil, fmt.Errorf("not a JSON Web Key Set: %v", err)
	}
	if set.Keys == nil {
		return nil, nil, errors.New(`not a JSON Web Key Set: no "keys"`)
	}
	keys = map[string]Key{}
	seen := map[string]bool{}
	for i, k := range set.Keys {
		if k.Use != "" && k.Use != "sig" {
			continue
		}
		if k.Kid != "" && seen[k.Kid] {
			return nil, nil, fmt.Errorf("kid %q names two keys", k.Kid)
		}
		seen[k.Kid] = true
		var pk crypto.PublicKey
		var err error
		switch k.Kty {
		case "RSA":
			pk, err = rsaKey(k)
		case "EC":
			pk, err = ecKey(k)
		case "OKP":
			pk, err = okpKey(k)
		default:
			continue
		}
		if err == nil && k.Kid == "" {
			err = errors.New("no kid")
		}
		if err != nil {
			skipped = append(skipped, fmt.Sprintf("key %d (kid %q): %v", i, k.Kid, err))
			continue
		}
		keys[k.Kid] = Key{Public: pk, Alg: k.Alg}
	}
	return keys, skipped, nil
}

func b64(s, field string) ([]byte, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) == 0 {
		return nil, fmt.Errorf("%s is not base64url", field)
	}
	return b, nil
}

func rsaKey(k jwk) (crypto.PublicKey, error) {
	n, err := b64(k.N, "n")
	if err != nil {
		return nil, err
	}
	e, err := b64(k.E, "e")
	if err != nil {
		return nil, err
	}
	if len(n)*8 < 2048 {
		return nil, fmt.Errorf("RSA key of %d bits: at least 2048 are needed", len(n)*8)
	}
	if len(e) > 4 {
		return nil, errors.New("RSA exponent too large")
	}
	exp := int(new(big.Int).SetBytes(e).Int64())
	if exp < 3 || exp%2 == 0 {
		return nil, errors.New("RSA exponent invalid")
	}
	return &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: exp}, nil
}

func ecKey(k jwk) (crypto.PublicKey, error) {
	var curve elliptic.Curve
	switch k.Crv {
	case "P-256":
		curve = elliptic.P256()
	case "P-384":
		curve = elliptic.P384()
	case "P-521":
		curve = elliptic.P521()
	default:
		return nil, fmt.Errorf("EC curve %q is not supported (P-256, P-384, P-521)", k.Crv)
	}
	x, err := b64(k.X, "x")
	if err != nil {
		return nil, err
	}
	y, err := b64(k.Y, "y")
	if err != nil {
		return nil, err
	}
	size := (curve.Params().BitSize + 7) / 8
	if len(x) != size || len(y) != size {
		return nil, fmt.Errorf("EC coordinates are not %d bytes", size)
	}
	pt := append(append([]byte{4}, x...), y...)
	pk, err := ecdsa.ParseUncompressedPublicKey(curve, pt)
	if err != nil {
		return nil, fmt.Errorf("EC point: %v", err)
	}
	return pk, nil
}

func okpKey(k jwk) (crypto.PublicKey, error) {
	if k.Crv != "Ed25519" {
		return nil, fmt.Errorf("OKP curve %q is not supported (Ed25519)", k.Crv)
	}
	x, err := b64(k.X, "x")
	if err != nil {
		return nil, err
	}
	if len(x) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("Ed25519 key of %d bytes", len(x))
	}
	return ed25519.PublicKey(x), nil
}
