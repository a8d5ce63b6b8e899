package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// An identity provider's tokens: serve --token-jwks verifies them by the
// provider's published keys, and pub and sub use them like pushctl's own.
func TestIdentityProviderTokens(t *testing.T) {
	k1, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	var mu sync.Mutex
	published := map[string]*ecdsa.PrivateKey{"k1": k1}
	idp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		var keys []map[string]string
		for kid, k := range published {
			b, _ := k.PublicKey.Bytes()
			enc := base64.RawURLEncoding.EncodeToString
			keys = append(keys, map[string]string{"kty": "EC", "crv": "P-256", "kid": kid, "x": enc(b[1:33]), "y": enc(b[33:])})
		}
		json.NewEncoder(w).Encode(map[string]any{"keys": keys})
	}))
	defer idp.Close()
	token := func(kid string, k *ecdsa.PrivateKey, aud string) string {
		c := jwt.MapClaims{"exp": time.Now().Add(time.Hour).Unix(), "iss": "https://idp.test", "aud": aud, "sub": "user-7",
			"pushctl": map[string]any{"publish": []string{"idp.>"}, "subscribe": []string{"idp.>"}}}
		tok := jwt.NewWithClaims(jwt.SigningMethodES256, c)
		tok.Header["kid"] = kid
		s, err := tok.SignedString(k)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	_, url := serve(t, "--token-jwks", idp.URL, "--token-jwks-issuer", "https://idp.test", "--token-jwks-audience", "pushctl")
	good := token("k1", k1, "pushctl")
	sub := start(t, nil, nil, "sub", "idp.news", "--count", "1", "--timeout", "20s", "--server", url, "--token", good)
	out, errOut, code := run(t, "", "pub", "idp.news", "--wait-subscribers", "1", "--timeout", "20s", "-s", url, "--token", good, "signed in")
	if code != 0 {
		t.Fatalf("pub with the provider's token: exit %d, %q %q", code, out, errOut)
	}
	if l := sub.readLine(20 * time.Second); l != "signed in" {
		t.Fatalf("sub printed %q", l)
	}
	// A token for another audience, one outside its grant, and one of a
	// key the provider never published are refused.
	for _, c := range []struct{ tok, ch, want string }{
		{token("k1", k1, "another-app"), "idp.news", "token_invalid"},
		{good, "other", "forbidden"},
		{token("k9", k1, "pushctl"), "idp.news", "token_invalid"},
	} {
		req, _ := http.NewRequest("POST", url+"/pub/"+c.ch, strings.NewReader("x"))
		req.Header.Set("Authorization", "Bearer "+c.tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var body struct {
			Error struct {
				Code string `json:"code"`
			} `json:"error"`
		}
		json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if body.Error.Code != c.want {
			t.Errorf("publish to %s: %d %s, want %s", c.ch, resp.StatusCode, body.Error.Code, c.want)
		}
	}
	// The provider unreachable at start: serve says so and does not start.
	idp.Close()
	p := start(t, nil, nil, "serve", "--listen", "127.0.0.1:0", "--token-jwks", idp.URL)
	if code := p.wait(20 * time.Second); code == 0 || !strings.Contains(p.Stderr(), "--token-jwks") {
		t.Fatalf("serve with an unreachable provider: exit %d, %s", code, p.Stderr())
	}
}
