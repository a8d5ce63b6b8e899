// Package token implements `pushctl token`.
package token

import (
	"context"
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
	cmd.AddCommand(NewCmdCreate(f, nil), NewCmdSecret(f, nil), NewCmdKeygen(f, nil))
	return cmd
}

// CreateOptions are the flags of token create and its dependencies.
type CreateOptions struct {
	IO                 *cmdutil.IOStreams
	Secret, KeyFile    string
	Subject, ID        string
	Member, MemberInfo string
	Publish, Subscribe []string
	TTL                time.Duration
	Now                func() time.Time
	grants             auth.Grants
}

// NewCmdCreate returns the token create command.
func NewCmdCreate(f *cmdutil.Factory, runF func(context.Context, *CreateOptions) error) *cobra.Command {
	o := &CreateOptions{IO: f.IO, Now: time.Now}
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
			if len(o.Publish) == 0 && len(o.Subscribe) == 0 {
				return cmdutil.FlagErrorf("grant something: --publish and/or --subscribe PATTERN")
			}
			if o.TTL <= 0 {
				return cmdutil.FlagErrorf("--ttl %s: want a positive duration such as 1h", o.TTL)
			}
			o.grants = auth.Grants{Publish: o.Publish, Subscribe: o.Subscribe}
			if o.Member != "" {
				o.grants.Presence = &auth.Presence{ID: o.Member}
				if o.MemberInfo != "" {
					if !json.Valid([]byte(o.MemberInfo)) {
						return cmdutil.FlagErrorf("--member-info must be JSON, such as '{\"name\":\"Alice\"}'")
					}
					o.grants.Presence.Info = json.RawMessage(o.MemberInfo)
				}
			} else if o.MemberInfo != "" {
				return cmdutil.FlagErrorf("--member-info needs --member")
			}
			if o.KeyFile == "" && o.Secret == "" {
				return cmdutil.FlagErrorf("sign with --secret (or PUSHCTL_TOKEN_SECRET) or --private-key")
			}
			if runF != nil {
				return runF(cmd.Context(), o)
			}
			return CreateRun(cmd.Context(), o)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&o.Secret, "secret", "", "HMAC secret (env PUSHCTL_TOKEN_SECRET; the broker's --token-secret)")
	fl.StringVar(&o.KeyFile, "private-key", "", "sign with this PEM private key instead (the broker has its public key)")
	fl.StringSliceVar(&o.Publish, "publish", nil, "channel pattern the token may publish to (repeatable)")
	fl.StringSliceVar(&o.Subscribe, "subscribe", nil, "channel pattern the token may subscribe to (repeatable)")
	fl.DurationVar(&o.TTL, "ttl", time.Hour, "how long the token is valid")
	fl.StringVar(&o.Subject, "subject", "", "who the token is for (rate limits count per token)")
	fl.StringVar(&o.ID, "id", "", "token id (jti)")
	fl.StringVar(&o.Member, "member", "", "presence member id the holder joins channels as (cannot be changed by the client)")
	fl.StringVar(&o.MemberInfo, "member-info", "", "presence member info, a JSON value shown to other members")
	cmdutil.MarkSecret(cmd, "secret")
	// PUSHCTL_TOKEN_SECRET is the serve flag's variable; take it here too.
	cmd.PreRunE = func(cmd *cobra.Command, args []string) error {
		if o.Secret == "" && !cmd.Flags().Changed("secret") {
			o.Secret = f.Getenv("PUSHCTL_TOKEN_SECRET")
		}
		return nil
	}
	return cmd
}

// CreateRun signs the token and prints it.
func CreateRun(ctx context.Context, o *CreateOptions) error {
	var tok string
	var err error
	if o.KeyFile != "" {
		k, kerr := auth.LoadPrivateKey(o.KeyFile)
		if kerr != nil {
			return kerr
		}
		tok, err = auth.Issue(o.grants, o.TTL, o.Subject, o.ID, nil, k, o.Now())
	} else {
		tok, err = auth.Issue(o.grants, o.TTL, o.Subject, o.ID, []byte(o.Secret), nil, o.Now())
	}
	if err != nil {
		return &cmdutil.FlagError{Err: err}
	}
	_, err = fmt.Fprintln(o.IO.Out, tok)
	return err
}

// SecretOptions are what token secret needs.
type SecretOptions struct {
	IO *cmdutil.IOStreams
}

// NewCmdSecret returns the token secret command.
func NewCmdSecret(f *cmdutil.Factory, runF func(context.Context, *SecretOptions) error) *cobra.Command {
	o := &SecretOptions{IO: f.IO}
	return &cobra.Command{
		Use:   "secret",
		Short: "Print a new random HMAC secret (256 bits)",
		Args:  cmdutil.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if runF != nil {
				return runF(cmd.Context(), o)
			}
			return SecretRun(cmd.Context(), o)
		},
	}
}

// SecretRun prints a new secret.
func SecretRun(ctx context.Context, o *SecretOptions) error {
	b := make([]byte, 32)
	rand.Read(b)
	_, err := fmt.Fprintln(o.IO.Out, base64.RawURLEncoding.EncodeToString(b)+"-pushctl")
	return err
}

// KeygenOptions are the flags of token keygen.
type KeygenOptions struct {
	IO  *cmdutil.IOStreams
	Out string
}

// NewCmdKeygen returns the token keygen command (Ed25519 signing keys).
func NewCmdKeygen(f *cmdutil.Factory, runF func(context.Context, *KeygenOptions) error) *cobra.Command {
	o := &KeygenOptions{IO: f.IO}
	cmd := &cobra.Command{
		Use:   "keygen",
		Short: "Create an Ed25519 key pair for signing tokens",
		Long: `Write OUT.pem (the issuer's private key, mode 0600) and OUT.pub.pem (the
public key for serve --token-public-key).

ZeroMQ CURVE keys are another thing: see pushctl zmq keygen.`,
		Args: cmdutil.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if runF != nil {
				return runF(cmd.Context(), o)
			}
			return KeygenRun(cmd.Context(), o)
		},
	}
	cmd.Flags().StringVarP(&o.Out, "out", "o", "issuer", "file name prefix")
	return cmd
}

// KeygenRun writes the key pair.
func KeygenRun(ctx context.Context, o *KeygenOptions) error {
	pubKey, privKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	p8, _ := x509.MarshalPKCS8PrivateKey(privKey)
	pk, _ := x509.MarshalPKIXPublicKey(pubKey)
	if err := os.WriteFile(o.Out+".pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: p8}), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(o.Out+".pub.pem", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pk}), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(o.IO.ErrOut, "pushctl: wrote %s.pem (private) and %s.pub.pem (public)\n", o.Out, o.Out)
	return nil
}
