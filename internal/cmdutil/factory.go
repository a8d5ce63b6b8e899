package cmdutil

import (
	"os"
	"strings"
	"time"

	"github.com/pushctl/pushctl/internal/client"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// Factory carries the dependencies commands need, so tests can swap them.
type Factory struct {
	IO     *IOStreams
	Getenv func(string) string
	// Token, CAFile and ConnectTimeout come from --token, --ca-file and
	// --connect-timeout.
	Token          string
	CAFile         string
	ConnectTimeout time.Duration
	// Sources says where each flag of the running command got its value.
	Sources Sources
}

// New returns a factory for the real process.
func New() *Factory {
	return &Factory{IO: System(), Getenv: os.Getenv}
}

// Client returns a broker client for the --server value.
func (f *Factory) Client(server string) (*client.Client, error) {
	if f.ConnectTimeout < 0 {
		return nil, FlagErrorf("--connect-timeout %s: want a positive duration such as 5s", f.ConnectTimeout)
	}
	c, err := client.NewWithOptions(server, client.Options{Token: f.Token, CAFile: f.CAFile, ConnectTimeout: f.ConnectTimeout})
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
				err = ValueError(EnvName(fl.Name), fl, v, serr)
			}
		}
	})
	return err
}

// AddServerFlags adds --server, --token, --ca-file and --connect-timeout.
func (f *Factory) AddServerFlags(cmd *cobra.Command, p *string) {
	cmd.Flags().StringVarP(p, "server", "s", client.DefaultServer, "broker URL; several, comma-separated, are tried in turn when one is down (env PUSHCTL_SERVER)")
	AddTokenFlags(cmd, &f.Token, &f.CAFile)
	AddConnectTimeoutFlag(cmd, &f.ConnectTimeout)
}

// AddConnectTimeoutFlag adds --connect-timeout.
func AddConnectTimeoutFlag(cmd *cobra.Command, p *time.Duration) {
	cmd.Flags().DurationVar(p, "connect-timeout", client.DefaultConnectTimeout, "give up with exit 1 \"cannot reach …\" when no broker answered within this long")
}

// AddTokenFlags adds --token and --ca-file.
func AddTokenFlags(cmd *cobra.Command, token, caFile *string) {
	cmd.Flags().StringVar(token, "token", "", "access token (env PUSHCTL_TOKEN; see pushctl token)")
	cmd.Flags().StringVar(caFile, "ca-file", "", "PEM certificates to trust for https/wss besides the system's")
	MarkSecret(cmd, "token")
}
