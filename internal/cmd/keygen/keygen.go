// Package keygen implements `pushctl keygen`.
package keygen

import (
	"encoding/json"
	"fmt"

	"github.com/pushctl/pushctl/internal/cmdutil"
	"github.com/pushctl/pushctl/internal/zmq"
	"github.com/spf13/cobra"
)

// NewCmdKeygen returns the keygen command.
func NewCmdKeygen(f *cmdutil.Factory) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "keygen",
		Short: "Generate a CURVE key pair for ZeroMQ endpoints",
		Long: `Generate a ZeroMQ CURVE key pair (Z85 text). Give the secret key to the
side that binds (pushctl serve --zmq-curve-secret) and its public key to the
clients (--zmq-curve-server-key); list each client's public key in
--zmq-curve-clients to refuse every other client.`,
		Example: `  pushctl keygen
  pushctl keygen --json | jq -r .secret > broker.key`,
		Args: cmdutil.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			pub, sec, err := zmq.NewKeypair()
			if err != nil {
				return err
			}
			if asJSON {
				return json.NewEncoder(f.IO.Out).Encode(map[string]string{"public": pub, "secret": sec})
			}
			fmt.Fprintf(f.IO.Out, "public: %s\nsecret: %s\n", pub, sec)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	return cmd
}
