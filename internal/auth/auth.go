// Package auth decides who may publish and subscribe: signed tokens (JWT,
// HMAC or public-key) carrying channel patterns, and trusted publisher
// addresses.
package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/pushctl/pushctl/internal/broker"
)

// Errors with stable meanings; the server maps them to codes.
var (
	ErrNoToken   = errors.New("a token is required")
	ErrBadToken  = errors.New("the token is not valid")
	ErrExpired   = errors.New("the token has expired")
	ErrForbidden = errors.New("not allowed")
)

// MaxTokenLen bounds a token before any parsing.
const MaxTokenLen = 8 << 10

// Claims are what a pushctl token grants: channel patterns it may publish
// to and subscribe to, until it expires.
type Claims struct {
	Grants Grants `json:"pushctl"`
	jwt.RegisteredClaims
}

// Grants lists channel patterns per permission.
type Grants struct {
	Publish   []string `json:"publish,omitempty"`
	Subscribe []string `json:"subscribe,omitempty"`
	// Presence, when set, is who the holder is in channels' presence:
	// the id cannot be forged by a client, and the info replaces what
	// the client says.
	Presence *Presence `json:"presence,omitempty"`
}

// Presence is a token's presence identity.
type Presence struct {
	ID   string          `json:"id"`
	Info json.RawMessage `json:"info,omitempty"`
}

// PresenceID returns the member id and info the identity's token fixes
// (ok false: the token fixes none).
func (id *Identity) PresenceID() (member string, info json.RawMessage, ok bool) {
	if id == nil || id.Claims == nil || id.Claims.Grants.Presence == nil || id.Claims.Grants.Presence.ID == "" {
		return "", nil, false
	}
	p := id.Claims.Grants.Presence
	return p.ID, p.Info, true
}

// Action is what a caller wants to do.
type Action int

// Actions checked by Allow.
const (
	Publish Action = iota
	Subscribe
)

func (a Action) String() string {
	if a == Publish {
		return "publish"
	}
	return "subscribe"
}

// Identity is an authenticated caller.
type Identity struct {
	Claims  *Claims // nil: no token (trusted address, or auth off)
	Trusted bool    // the caller's address may publish without a token
	Expires time.Time
	// Hook: the application's connect hook said who this is and what it
	// may do; its grants hold even where tokens are off.
	Hook bool
}

// Key is who the identity is for rate limits: its token subject or ID.
func (id *Identity) Key() string {
	if id == nil || id.Claims == nil {
		return ""
	}
	if id.Claims.ID != "" {
		return "jti:" + id.Claims.ID
	}
	return "sub:" + id.Claims.Subject
}

// Config configures an Authorizer.
type Config struct {
	// Secret verifies HMAC tokens (HS256/384/512).
	Secret []byte
	// PublicKey verifies tokens signed by an issuer's private key
	// (EdDSA, ES256/384/512, RS256/384/512, PS256/384/512).
	PublicKey crypto.PublicKey
	// JWKS verifies tokens whose header names a key id (kid) with an
	// identity provider's published keys (RS*, PS*, ES*, EdDSA).
	JWKS *JWKS
	// TrustedPublishers may publish without a token.
	TrustedPublishers []netip.Prefix
	// Now is the clock (tests).
	Now func() time.Time
}

// Authorizer checks tokens and addresses. A zero Config allows everything.
type Authorizer struct {
	cfg    Config
	parser *jwt.Parser
}

// New returns an Authorizer.
func New(cfg Config) *Authorizer {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	var methods []string
	if len(cfg.Secret) > 0 {
		methods = append(methods, "HS256", "HS384", "HS512")
	}
	switch cfg.PublicKey.(type) {
	case ed25519.PublicKey:
		methods = append(methods, "EdDSA")
	case *ecdsa.PublicKey:
		methods = append(methods, "ES256", "ES384", "ES512")
	case *rsa.PublicKey:
		methods = append(methods, "RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
	}
	if cfg.JWKS != nil {
		methods = append(methods, "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
	}
	return &Authorizer{cfg: cfg, parser: jwt.NewParser(
		jwt.WithValidMethods(methods), jwt.WithTimeFunc(cfg.Now), jwt.WithExpirationRequired(), jwt.WithLeeway(5*time.Second))}
}

// TokensEnabled reports whether tokens are configured.
func (a *Authorizer) TokensEnabled() bool {
	return len(a.cfg.Secret) > 0 || a.cfg.PublicKey != nil || a.cfg.JWKS != nil
}

// Enabled reports whether anything is restricted.
func (a *Authorizer) Enabled() bool { return a.TokensEnabled() || len(a.cfg.TrustedPublishers) > 0 }

// anonymous identities, shared: an identity is never changed once made.
var anonymous, trustedAnonymous = &Identity{}, &Identity{Trusted: true}

// Authenticate checks a token (may be empty) and the caller's address.
func (a *Authorizer) Authenticate(token string, remote net.Addr) (*Identity, error) {
	trusted := a.trusted(remote)
	if token == "" || !a.TokensEnabled() {
		if trusted {
			return trustedAnonymous, nil
		}
		return anonymous, nil
	}
	id := &Identity{Trusted: trusted}
	if len(token) > MaxTokenLen {
		return nil, fmt.Errorf("%w: longer than %d bytes", ErrBadToken, MaxTokenLen)
	}
	var c Claims
	fromJWKS := false
	_, err := a.parser.ParseWithClaims(token, &c, func(t *jwt.Token) (any, error) {
		if kid, ok := t.Header["kid"].(string); ok && a.cfg.JWKS != nil && !strings.HasPrefix(t.Method.Alg(), "HS") {
			fromJWKS = true
			k, err := a.cfg.JWKS.key(kid)
			if err != nil {
				return nil, err
			}
			if k.Alg != "" && k.Alg != t.Method.Alg() {
				return nil, fmt.Errorf("key %q is for %s, not %s", kid, k.Alg, t.Method.Alg())
			}
			return k.Public, nil
		}
		if strings.HasPrefix(t.Method.Alg(), "HS") {
			if len(a.cfg.Secret) == 0 {
				return nil, errors.New("HMAC tokens are not accepted here")
			}
			return a.cfg.Secret, nil
		}
		if a.cfg.PublicKey == nil {
			if a.cfg.JWKS != nil {
				return nil, errors.New("the token names no key id (kid) of the identity provider")
			}
			return nil, errors.New("signed tokens are not accepted here")
		}
		return a.cfg.PublicKey, nil
	})
	switch {
	case errors.Is(err, jwt.ErrTokenExpired):
		return nil, ErrExpired
	case err != nil:
		// The library's message says what is wrong, never the token.
		return nil, fmt.Errorf("%w: %v", ErrBadToken, err)
	}
	if fromJWKS {
		if err := a.cfg.JWKS.checkClaims(&c); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrBadToken, err)
		}
	}
	for _, p := range append(append([]string{}, c.Grants.Publish...), c.Grants.Subscribe...) {
		if broker.ValidatePattern(p) != nil {
			return nil, fmt.Errorf("%w: it grants an invalid channel pattern", ErrBadToken)
		}
	}
	id.Claims = &c
	if c.ExpiresAt != nil {
		id.Expires = c.ExpiresAt.Time
	}
	return id, nil
}

func (a *Authorizer) trusted(remote net.Addr) bool {
	if len(a.cfg.TrustedPublishers) == 0 || remote == nil {
		return false
	}
	var ip netip.Addr
	switch r := remote.(type) {
	case *net.TCPAddr:
		ip, _ = netip.AddrFromSlice(r.IP)
	default:
		ap, err := netip.ParseAddrPort(remote.String())
		if err != nil {
			return false
		}
		ip = ap.Addr()
	}
	ip = ip.Unmap()
	for _, p := range a.cfg.TrustedPublishers {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// Allow reports whether id may do action on channel (a name or, for
// subscribe, a pattern, which a grant must cover entirely).
func (a *Authorizer) Allow(id *Identity, action Action, channel string) error {
	if !a.Enabled() && (id == nil || !id.Hook) {
		return nil
	}
	if action == Publish && id != nil && id.Trusted {
		return nil
	}
	if action == Subscribe && !a.TokensEnabled() && (id == nil || !id.Hook) {
		return nil // only publishing is restricted, by address
	}
	if id == nil || id.Claims == nil {
		if !a.TokensEnabled() {
			return fmt.Errorf("%w: publishing is limited to trusted addresses", ErrForbidden)
		}
		return ErrNoToken
	}
	if !id.Expires.IsZero() && !a.cfg.Now().Before(id.Expires.Add(5*time.Second)) {
		return ErrExpired
	}
	grants := id.Claims.Grants.Subscribe
	if action == Publish {
		grants = id.Claims.Grants.Publish
	}
	for _, g := range grants {
		if covers(g, channel) {
			return nil
		}
	}
	return fmt.Errorf("%w: the token does not grant %s on %s", ErrForbidden, action, channel)
}

// covers reports whether grant pattern g includes every channel that
// pattern (or name) p can match. Only a grant that names a reserved
// channel's first segment ("$events.>") covers the broker's own channels:
// a grant of ">" does not.
func covers(g, p string) bool {
	if broker.IsReserved(p) && !broker.IsReserved(g) {
		return false
	}
	gs, ps := strings.Split(g, "."), strings.Split(p, ".")
	for i, seg := range gs {
		if seg == ">" {
			return i < len(ps) // at least one more segment, of any kind
		}
		if i >= len(ps) {
			return false
		}
		switch {
		case seg == "*":
			if ps[i] == ">" {
				return false
			}
		case seg != ps[i]:
			return false
		}
	}
	return len(gs) == len(ps)
}

// readPEM returns the first PEM block of a file.
func readPEM(path string) (*pem.Block, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("%s: no PEM block", path)
	}
	return blk, nil
}

// LoadPublicKey reads a PEM public key (PKIX: Ed25519, ECDSA or RSA).
func LoadPublicKey(path string) (crypto.PublicKey, error) {
	blk, err := readPEM(path)
	if err != nil {
		return nil, err
	}
	k, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// LoadPrivateKey reads a PEM private key (PKCS#8, or EC/RSA legacy forms).
func LoadPrivateKey(path string) (crypto.Signer, error) {
	blk, err := readPEM(path)
	if err != nil {
		return nil, err
	}
	if k, err := x509.ParsePKCS8PrivateKey(blk.Bytes); err == nil {
		if s, ok := k.(crypto.Signer); ok {
			return s, nil
		}
	}
	if k, err := x509.ParseECPrivateKey(blk.Bytes); err == nil {
		return k, nil
	}
	if k, err := x509.ParsePKCS1PrivateKey(blk.Bytes); err == nil {
		return k, nil
	}
	return nil, fmt.Errorf("%s: not a PKCS#8, EC or RSA private key", path)
}

// Issue signs a token. With key nil it uses HMAC-SHA256 with secret.
func Issue(g Grants, ttl time.Duration, subject, id string, secret []byte, key crypto.Signer, now time.Time) (string, error) {
	for _, p := range append(append([]string{}, g.Publish...), g.Subscribe...) {
		if err := broker.ValidatePattern(p); err != nil {
			return "", err
		}
	}
	c := Claims{Grants: g, RegisteredClaims: jwt.RegisteredClaims{
		Subject: subject, ID: id, IssuedAt: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
	}}
	var method jwt.SigningMethod
	var signKey any = secret
	switch k := key.(type) {
	case nil:
		if len(secret) == 0 {
			return "", errors.New("need a secret or a private key to sign with")
		}
		method = jwt.SigningMethodHS256
	case ed25519.PrivateKey:
		method, signKey = jwt.SigningMethodEdDSA, k
	case *ecdsa.PrivateKey:
		switch k.Curve.Params().BitSize {
		case 384:
			method = jwt.SigningMethodES384
		case 521:
			method = jwt.SigningMethodES512
		default:
			method = jwt.SigningMethodES256
		}
		signKey = k
	case *rsa.PrivateKey:
		method, signKey = jwt.SigningMethodRS256, k
	default:
		return "", fmt.Errorf("unsupported key type %T", key)
	}
	return jwt.NewWithClaims(method, c).SignedString(signKey)
}
