// Package version implements `pushctl version` and holds build information.
package version

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/pushctl/pushctl/internal/cmdutil"
	"github.com/pushctl/pushctl/internal/zmq"
	"github.com/spf13/cobra"
)

// Set at link time by the release build (-X).
var (
	Version = "dev"
	Commit  = ""
	Date    = ""
)

// Info is what `pushctl version` reports.
type Info struct {
	Version string `json:"version"`
	Commit  string `json:"commit,omitempty"`
	Date    string `json:"date,omitempty"`
	Go      string `json:"go"`
	ZMQ     string `json:"libzmq"` // empty: built without ZeroMQ
	Curve   bool   `json:"curve"`
	OS      string `json:"os"`
	Arch    string `json:"arch"`
}

// Get returns the build information.
func Get() Info {
	info := Info{Version: Version, Commit: Commit, Date: Date, Go: runtime.Version(), OS: runtime.GOOS, Arch: runtime.GOARCH}
	info.ZMQ, info.Curve = zmq.Version()
	if bi, ok := debug.ReadBuildInfo(); ok && info.Commit == "" {
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				info.Commit = s.Value
			case "vcs.time":
				info.Date = s.Value
			}
		}
	}
	return info
}

// Options are the flags of version and its dependencies.
type Options struct {
	IO   *cmdutil.IOStreams
	JSON bool
	// Info gives the build information (Get; tests may swap it).
	Info func() Info
}

// NewCmdVersion returns the version command.
func NewCmdVersion(f *cmdutil.Factory, runF func(context.Context, *Options) error) *cobra.Command {
	o := &Options{IO: f.IO, Info: Get}
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print version and build information",
		Long: `Print pushctl's version, the Go it was built with, and the libzmq it links
(with CURVE or not; builds without ZeroMQ say so).`,
		Example: `  pushctl version
  pushctl version --json | jq -r .libzmq`,
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

// Run prints the build information.
func Run(ctx context.Context, o *Options) error {
	info := o.Info()
	out := o.IO.Out
	if o.JSON {
		return json.NewEncoder(out).Encode(info)
	}
	fmt.Fprintf(out, "pushctl %s\n", info.Version)
	if info.Commit != "" {
		fmt.Fprintf(out, "commit:  %s\n", info.Commit)
	}
	if info.Date != "" {
		fmt.Fprintf(out, "built:   %s\n", info.Date)
	}
	fmt.Fprintf(out, "go:      %s %s/%s\n", info.Go, info.OS, info.Arch)
	switch {
	case info.ZMQ == "":
		fmt.Fprintln(out, "libzmq:  none: built without ZeroMQ (pub/sub/bridge --zmq and serve --zmq are unavailable)")
	case info.Curve:
		fmt.Fprintf(out, "libzmq:  %s (with CURVE)\n", info.ZMQ)
	default:
		fmt.Fprintf(out, "libzmq:  %s (without CURVE)\n", info.ZMQ)
	}
	return nil
}
