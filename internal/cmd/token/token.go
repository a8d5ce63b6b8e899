// Package token implements `pushctl token`.
package token

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"time"

	"github.com/pushctl/pushctl/internal/auth"
	"github.com/pushctl/pushctl/internal/cmdutil"
	"github.com/spf13/cobra"
)

// NewCmdToken returns the token command and its subcommands.
func NewCmdToken(f *cmdutil.Factory) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Create access tokens and the keys that sign them",
		Long: `Tokens are JWTs that grant publish and/or subscribe on channel patterns
until they expire. A broker verifies them with an HMAC secret
(serve --token-secret) or with an issuer's public key (serve
--token-public-key), so issuers need not share the secret. Clients send
them as Authorization: Bearer, as ?token= where browsers cannot set
headers (EventSource, WebSocket), in a WebSocket {"type":"auth"} frame, or
with --token / PUSHCTL_TOKEN.`,
	}
	cmd.AddCommand(newCmdCreate(f), newCmdSecret(f), newCmdKeygen(f))
	return cmd
}

func newCmdCreate(f *cmdutil.Factory) *cobra.Command {
	var (
		secret, keyFile, subject, id string
		member, memberInfo           string
		pub, sub                     []string
		ttl                          time.Duration
	)
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Create a signed token",
		Example: `  export PUSHCTL_TOKEN_SECRET=$(pushctl token secret)
  pushctl token create --publish 'orders.>' --ttl 24h
  pushctl token create --subscribe 'chat.room1' --subscribe 'presence.*' --ttl 1h --subject user42
  pushctl token create --private-key issuer.pem --subscribe 'news' --ttl 15m
  pushctl token create --subscribe 'room.*' --member alice --member-info '{"name":"Alice"}'`,
		Args: cmdutil.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(pub) == 0 && len(sub) == 0 {
				return cmdutil.FlagErrorf("grant something: --publish and/or --subscribe PATTERN")
			}
			if ttl <= 0 {
				return cmdutil.FlagErrorf("--ttl must be positive")
			}
			g := auth.Grants{Publish: pub, Subscribe: sub}
			if member != "" {
				g.Presence = &auth.Presence{ID: member}
				if memberInfo != "" {
					if !json.Valid([]byte(memberInfo)) {
						return cmdutil.FlagErrorf("--member-info must be JSON, such as '{\"name\":\"Alice\"}'")
					}
					g.Presence.Info = json.RawMessage(memberInfo)
				}
			} else if memberInfo != "" {
				return cmdutil.FlagErrorf("--member-info needs --member")
			}
			if keyFile != "" {
				k, err := auth.LoadPrivateKey(keyFile)
				if err != nil {
					return err
				}
				tok, err := auth.Issue(g, ttl, subject, id, nil, k, time.Now())
				if err != nil {
					return &cmdutil.FlagError{Err: err}
				}
				_, err = fmt.Fprintln(f.IO.Out, tok)
				return err
			}
			if secret == "" {
				return cmdutil.FlagErrorf("sign with --secret (or PUSHCTL_TOKEN_SECRET) or --private-key")
			}
			tok, err := auth.Issue(g, ttl, subject, id, []byte(secret), nil, time.Now())
			if err != nil {
				return &cmdutil.FlagError{Err: err}
			}
			_, err = fmt.Fprintln(f.IO.Out, tok)
			return err
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&secret, "secret", "", "HMAC secret (env PUSHCTL_TOKEN_SECRET; the broker's --token-secret)")
	fl.StringVar(&keyFile, "private-key", "", "sign with this PEM private key instead (the broker has its public key)")
	fl.StringSliceVar(&pub, "publish", nil, "channel pattern the token may publish to (repeatable)")
	fl.StringSliceVar(&sub, "subscribe", nil, "channel pattern the token may subscribe to (repeatable)")
	fl.DurationVar(&ttl, "ttl", time.Hour, "how long the token is valid")
	fl.StringVar(&subject, "subject", "", "who the token is for (rate limits count per token)")
	fl.StringVar(&id, "id", "", "token id (jti)")
	fl.StringVar(&member, "member", "", "presence member id the holder joins channels as (cannot be changed by the client)")
	fl.StringVar(&memberInfo, "member-info", "", "presence member info, a JSON value shown to other members")
	cmdutil.MarkSecret(cmd, "secret")
	// PUSHCTL_TOKEN_SECRET is the serve flag's variable; take it here too.
	cmd.PreRunE = func(cmd *cobra.Command, args []string) error {
		if secret == "" && !cmd.Flags().Changed("secret") {
			secret = f.Getenv("PUSHCTL_TOKEN_SECRET")
		}
		return nil
	}
	return cmd
}

func newCmdSecret(f *cmdutil.Factory) *cobra.Command {
	return &cobra.Command{
		Use:   "secret",
		Short: "Print a new random HMAC secret (256 bits)",
		Args:  cmdutil.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			b := make([]byte, 32)
			rand.Read(b)
			_, err := fmt.Fprintln(f.IO.Out, base64.RawURLEncoding.EncodeToString(b)+"-pushctl")
			return err
		},
	}
}

func newCmdKeygen(f *cmdutil.Factory) *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "keygen",
		Short: "Create an Ed25519 key pair for signing tokens",
		Long: `Write OUT.pem (the issuer's private key, mode 0600) and OUT.pub.pem (the
public key for serve --token-public-key).`,
		Args: cmdutil.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			pubKey, privKey, err := ed25519.GenerateKey(rand.Reader)
			if err != nil {
				return err
			}
			p8, _ := x509.MarshalPKCS8PrivateKey(privKey)
			pk, _ := x509.MarshalPKIXPublicKey(pubKey)
			if err := os.WriteFile(out+".pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: p8}), 0o600); err != nil {
				return err
			}
			if err := os.WriteFile(out+".pub.pem", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pk}), 0o644); err != nil {
				return err
			}
			fmt.Fprintf(f.IO.ErrOut, "pushctl: wrote %s.pem (private) and %s.pub.pem (public)\n", out, out)
			return nil
		},
	}
	cmd.Flags().StringVarP(&out, "out", "o", "issuer", "file name prefix")
	return cmd
}
