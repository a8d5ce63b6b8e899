package cmdutil

import (
	"fmt"
	"os"
	"strings"

	"github.com/pushctl/pushctl/internal/client"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// Factory carries the dependencies commands need, so tests can swap them.
type Factory struct {
	IO     *IOStreams
	Getenv func(string) string
	// Token and CAFile come from --token and --ca-file.
	Token  string
	CAFile string
	// Sources says where each flag of the running command got its value.
	Sources Sources
}

// New returns a factory for the real process.
func New() *Factory {
	return &Factory{IO: System(), Getenv: os.Getenv}
}

// Client returns a broker client for the --server value.
func (f *Factory) Client(server string) (*client.Client, error) {
	c, err := client.NewWithOptions(server, client.Options{Token: f.Token, CAFile: f.CAFile})
	if err != nil {
		return nil, &FlagError{err}
	}
	return c, nil
}

// EnvName is the environment variable that sets a flag: PUSHCTL_ and the
// flag name upper-cased with dashes as underscores.
func EnvName(flag string) string {
	return "PUSHCTL_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// BindEnv sets every flag of cmd not given on the command line from its
// PUSHCTL_* environment variable, so flags win over the environment.
func BindEnv(cmd *cobra.Command, getenv func(string) string) error {
	var err error
	cmd.Flags().VisitAll(func(fl *pflag.Flag) {
		if err != nil || fl.Changed || fl.Name == "help" {
			return
		}
		if v := getenv(EnvName(fl.Name)); v != "" {
			if serr := fl.Value.Set(v); serr != nil {
				err = &FlagError{fmt.Errorf("%s=%q: %v", EnvName(fl.Name), v, serr)}
			}
		}
	})
	return err
}

// AddServerFlags adds --server, --token and --ca-file.
func (f *Factory) AddServerFlags(cmd *cobra.Command, p *string) {
	cmd.Flags().StringVarP(p, "server", "s", client.DefaultServer, "broker URL; several, comma-separated, are tried in turn when one is down (env PUSHCTL_SERVER)")
	AddTokenFlags(cmd, &f.Token, &f.CAFile)
}

// AddTokenFlags adds --token and --ca-file.
func AddTokenFlags(cmd *cobra.Command, token, caFile *string) {
	cmd.Flags().StringVar(token, "token", "", "access token (env PUSHCTL_TOKEN; see pushctl token)")
	cmd.Flags().StringVar(caFile, "ca-file", "", "PEM certificates to trust for https/wss besides the system's")
	MarkSecret(cmd, "token")
}
