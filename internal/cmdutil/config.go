package cmdutil

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"gopkg.in/yaml.v3"
)

// SecretAnnotation marks flags whose values are never printed.
const SecretAnnotation = "pushctl_secret"

// MarkSecret marks a flag as holding a secret.
func MarkSecret(cmd *cobra.Command, name string) {
	cmd.Flags().SetAnnotation(name, SecretAnnotation, []string{"true"})
}

func isSecret(fl *pflag.Flag) bool { _, ok := fl.Annotations[SecretAnnotation]; return ok }

// DefaultConfigPath is where serve looks for a config file when none is
// named: $XDG_CONFIG_HOME/pushctl/serve.yaml (~/.config/pushctl/serve.yaml).
func DefaultConfigPath(getenv func(string) string) string {
	dir := getenv("XDG_CONFIG_HOME")
	if dir == "" {
		home := getenv("HOME")
		if home == "" {
			return ""
		}
		dir = filepath.Join(home, ".config")
	}
	return filepath.Join(dir, "pushctl", "serve.yaml")
}

// Sources records where each flag's value came from, for --print-config.
type Sources map[string]string

// ApplySettings sets cmd's flags with the documented precedence: the
// config file < PUSHCTL_* environment < command line. The file is the
// --config flag, else PUSHCTL_CONFIG, else the default path if it exists.
// Keys are flag names; an unknown key is an error.
func ApplySettings(cmd *cobra.Command, getenv func(string) string) (Sources, error) {
	src := Sources{}
	fls := cmd.Flags()
	fls.VisitAll(func(fl *pflag.Flag) {
		src[fl.Name] = "default"
		if fl.Changed {
			src[fl.Name] = "flag"
		}
	})
	if cfg := fls.Lookup("config"); cfg != nil {
		path, explicit := cfg.Value.String(), cfg.Changed
		if !explicit {
			if p := getenv(EnvName("config")); p != "" {
				path, explicit = p, true
				cfg.Value.Set(p)
				src["config"] = "env"
			} else {
				path = DefaultConfigPath(getenv)
			}
		}
		if path != "" {
			if err := applyFile(cmd, path, explicit, src); err != nil {
				return nil, err
			}
		}
	}
	var err error
	fls.VisitAll(func(fl *pflag.Flag) {
		if err != nil || fl.Changed || fl.Name == "help" || fl.Name == "config" {
			return
		}
		if v := getenv(EnvName(fl.Name)); v != "" {
			if serr := fl.Value.Set(v); serr != nil {
				err = ValueError(EnvName(fl.Name), fl, v, serr)
			}
			src[fl.Name] = "env"
		}
	})
	return src, err
}

func redactErr(fl *pflag.Flag, err error) error {
	if isSecret(fl) {
		return errors.New("invalid value")
	}
	return err
}

func applyFile(cmd *cobra.Command, path string, explicit bool, src Sources) error {
	b, err := os.ReadFile(path)
	if err != nil {
		if !explicit && errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return &FlagError{fmt.Errorf("config file: %w", err)}
	}
	var raw map[string]yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&raw); err != nil && !errors.Is(err, io.EOF) {
		return &FlagError{fmt.Errorf("config file %s: %v", path, err)}
	}
	keys := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fl := cmd.Flags().Lookup(k)
		if fl == nil || k == "config" || k == "help" || k == "print-config" {
			return &FlagError{fmt.Errorf("config file %s: unknown key %q (keys are the flag names of %s; see %s --help)", path, k, cmd.CommandPath(), cmd.CommandPath())}
		}
		if fl.Changed {
			continue // the command line wins
		}
		node := raw[k]
		if ys, ok := fl.Value.(interface{ SetYAML(*yaml.Node) error }); ok {
			// A setting with structure of its own (serve's namespaces).
			if err := ys.SetYAML(&node); err != nil {
				return &FlagError{fmt.Errorf("config file %s: %s: %v", path, k, err)}
			}
			src[k] = "file"
			continue
		}
		var val string
		switch node.Kind {
		case yaml.ScalarNode:
			val = node.Value
		case yaml.SequenceNode:
			var items []string
			if err := node.Decode(&items); err != nil {
				return &FlagError{fmt.Errorf("config file %s: %s: %v", path, k, err)}
			}
			if sv, ok := fl.Value.(pflag.SliceValue); ok {
				// Each item whole: an item may contain commas.
				if err := sv.Replace(items); err != nil {
					return &FlagError{fmt.Errorf("config file %s: %s: %v", path, k, redactErr(fl, err))}
				}
				src[k] = "file"
				continue
			}
			val = strings.Join(items, ",")
		default:
			return &FlagError{fmt.Errorf("config file %s: %s: want a value or a list", path, k)}
		}
		if err := fl.Value.Set(val); err != nil {
			return ValueError(fmt.Sprintf("config file %s: %s", path, k), fl, val, err)
		}
		src[k] = "file"
	}
	return nil
}

// PrintConfig writes the effective settings as YAML, secrets redacted,
// each with a comment saying where it came from.
func PrintConfig(cmd *cobra.Command, src Sources, w *bytes.Buffer) {
	cmd.Flags().VisitAll(func(fl *pflag.Flag) {
		switch fl.Name {
		case "help", "config", "print-config":
			return
		}
		v := fl.Value.String()
		if isSecret(fl) && v != "" {
			v = "<redacted>"
		}
		if sv, ok := fl.Value.(pflag.SliceValue); ok && !isSecret(fl) {
			items := sv.GetSlice()
			out, _ := yaml.Marshal(map[string][]string{fl.Name: items})
			if len(items) == 0 {
				out = []byte(fl.Name + ": []\n")
			}
			fmt.Fprintf(w, "%s", strings.TrimSuffix(string(out), "\n"))
		} else if plainTypes[fl.Value.Type()] {
			fmt.Fprintf(w, "%s: %s", fl.Name, v)
		} else {
			out, _ := yaml.Marshal(map[string]string{fl.Name: v})
			fmt.Fprintf(w, "%s", strings.TrimSuffix(string(out), "\n"))
		}
		fmt.Fprintf(w, "  # %s\n", src[fl.Name])
	})
}

// plainTypes print unquoted: YAML reads them back as the same text.
var plainTypes = map[string]bool{"int": true, "uint64": true, "bool": true, "duration": true, "size": true, "float64": true}
