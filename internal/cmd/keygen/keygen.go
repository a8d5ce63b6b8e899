// Package keygen implements `pushctl zmq keygen` (and the hidden alias
// `pushctl keygen` that older scripts use).
package keygen

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/pushctl/pushctl/internal/cmdutil"
	"github.com/pushctl/pushctl/internal/zmq"
	"github.com/spf13/cobra"
)

// Options are the flags of keygen and its dependencies.
type Options struct {
	IO   *cmdutil.IOStreams
	JSON bool
	// NewKeypair makes the keys (zmq.NewKeypair; tests may swap it).
	NewKeypair func() (public, secret string, err error)
}

// NewCmdKeygen returns the ZeroMQ CURVE keygen command.
func NewCmdKeygen(f *cmdutil.Factory, runF func(context.Context, *Options) error) *cobra.Command {
	o := &Options{IO: f.IO, NewKeypair: zmq.NewKeypair}
	cmd := &cobra.Command{
		Use:   "keygen",
		Short: "Generate a CURVE key pair for ZeroMQ endpoints",
		Long: `Generate a ZeroMQ CURVE key pair (Z85 text). Give the secret key to the
side that binds (pushctl serve --zmq-curve-secret) and its public key to the
clients (--zmq-curve-server-key); list each client's public key in
--zmq-curve-clients to refuse every other client.

Token signing keys are another thing: see pushctl token keygen.`,
		Example: `  pushctl zmq keygen
  pushctl zmq keygen --json | jq -r .secret > broker.key`,
		Args: cmdutil.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if runF != nil {
				return runF(cmd.Context(), o)
			}
			return Run(cmd.Context(), o)
		},
	}
	cmd.Flags().BoolVar(&o.JSON, "json", false, "print as JSON")
	return cmd
}

// Run prints a new key pair.
func Run(ctx context.Context, o *Options) error {
	pub, sec, err := o.NewKeypair()
	if err != nil {
		return err
	}
	if o.JSON {
		return json.NewEncoder(o.IO.Out).Encode(map[string]string{"public": pub, "secret": sec})
	}
	_, err = fmt.Fprintf(o.IO.Out, "public: %s\nsecret: %s\n", pub, sec)
	return err
}
