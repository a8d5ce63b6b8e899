package token

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pushctl/pushctl/internal/auth"
	"github.com/pushctl/pushctl/internal/cmdutil"
	"github.com/spf13/cobra"
)

// TestTokenCommands: a secret, an HMAC token from the environment's secret
// and an Ed25519 issuer's token are each accepted by the authorizer with
// exactly the grants asked for.
func TestTokenCommands(t *testing.T) {
	ctx := context.Background()
	secret, _, err := cmdutil.RunForTest(ctx, NewCmdToken, nil, "secret")
	secret = strings.TrimSpace(secret)
	if err != nil || len(secret) < 32 {
		t.Fatalf("secret %q: %v", secret, err)
	}
	tok, _, err := cmdutil.RunForTest(ctx, NewCmdToken, map[string]string{"PUSHCTL_TOKEN_SECRET": secret},
		"create", "--publish", "orders.>", "--subscribe", "chat.*", "--ttl", "1m", "--subject", "app")
	if err != nil {
		t.Fatal(err)
	}
	a := auth.New(auth.Config{Secret: []byte(secret)})
	id, err := a.Authenticate(strings.TrimSpace(tok), nil)
	if err != nil {
		t.Fatalf("token from create: %v", err)
	}
	if a.Allow(id, auth.Publish, "orders.eu") != nil || a.Allow(id, auth.Subscribe, "chat.x") != nil ||
		a.Allow(id, auth.Publish, "chat.x") == nil || time.Until(id.Expires) > time.Minute {
		t.Fatalf("grants or expiry wrong: %+v", id)
	}

	dir := t.TempDir()
	prefix := filepath.Join(dir, "issuer")
	if _, _, err := cmdutil.RunForTest(ctx, NewCmdToken, nil, "keygen", "-o", prefix); err != nil {
		t.Fatal(err)
	}
	pub, err := auth.LoadPublicKey(prefix + ".pub.pem")
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(prefix + ".pem"); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("private key file: %v %v", fi, err)
	}
	tok, _, err = cmdutil.RunForTest(ctx, NewCmdToken, nil, "create", "--private-key", prefix+".pem", "--subscribe", "a")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := auth.New(auth.Config{PublicKey: pub}).Authenticate(strings.TrimSpace(tok), nil); err != nil {
		t.Fatalf("issuer token: %v", err)
	}
	if _, _, err := cmdutil.RunForTest(ctx, NewCmdToken, nil, "create", "--publish", "a"); err == nil {
		t.Fatal("create without a secret or key succeeded")
	}
}

// TestCreateFlags: grants and the secret from the environment, checked
// before signing.
func TestCreateFlags(t *testing.T) {
	var got *CreateOptions
	runF := func(_ context.Context, o *CreateOptions) error { got = o; return nil }
	newCmd := func(f *cmdutil.Factory) *cobra.Command { return NewCmdCreate(f, runF) }
	env := map[string]string{"PUSHCTL_TOKEN_SECRET": "s3cret"}
	_, _, err := cmdutil.RunForTest(context.Background(), newCmd, env, "--publish", "a.>", "--subscribe", "b", "--ttl", "5m", "--member", "m")
	if err != nil || got.Secret != "s3cret" || got.TTL != 5*time.Minute || got.grants.Presence == nil || got.grants.Presence.ID != "m" ||
		len(got.grants.Publish) != 1 || len(got.grants.Subscribe) != 1 {
		t.Fatalf("options %+v (%v)", got, err)
	}
	got = nil
	for _, bad := range [][]string{{"--ttl", "1h"}, {"--publish", "a", "--ttl", "0s"}, {"--publish", "a", "--member-info", "{}"}} {
		if _, _, err := cmdutil.RunForTest(context.Background(), newCmd, env, bad...); cmdutil.ExitCode(err) != cmdutil.ExitUsage || got != nil {
			t.Errorf("%q: %v", bad, err)
		}
	}
}
