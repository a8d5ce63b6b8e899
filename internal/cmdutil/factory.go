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
	// Sources says where each flag of the running command got its value.
	Sources Sources
}

// New returns a factory for the real process.
func New() *Factory {
	return &Factory{IO: System(), Getenv: os.Getenv}
}

// Client returns a broker client for the --server value.
func (f *Factory) Client(server string) (*client.Client, error) {
	c, err := client.New(server)
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

// AddServerFlag adds --server with its documented default.
func AddServerFlag(cmd *cobra.Command, p *string) {
	cmd.Flags().StringVarP(p, "server", "s", client.DefaultServer, "broker URL (env PUSHCTL_SERVER)")
}
