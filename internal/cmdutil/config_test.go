package cmdutil

import (
	"gopkg.in/yaml.v3"

	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
)

func testCommand() (*cobra.Command, *ByteSize) {
	cmd := &cobra.Command{Use: "serve"}
	size := ByteSize(1 << 20)
	fl := cmd.Flags()
	fl.String("listen", "127.0.0.1:7070", "")
	fl.Int("history", 1000, "")
	fl.Duration("history-age", time.Hour, "")
	fl.StringSlice("trusted-publishers", nil, "")
	fl.Bool("zmq", false, "")
	fl.Var(&size, "max-message-size", "")
	fl.String("token-secret", "", "")
	fl.String("config", "", "")
	MarkSecret(cmd, "token-secret")
	return cmd, &size
}

func FuzzConfigFile(f *testing.F) {
	f.Add("listen: 127.0.0.1:1\nhistory: 5\n")
	f.Add("history-age: 10m\nzmq: true\ntrusted-publishers: [a, b]\n")
	f.Add("max-message-size: 4MiB\n")
	f.Add("bogus: 1\n")
	f.Add("history: [1, 2]\n")
	f.Add("history: {a: 1}\n")
	f.Add(": :\n- - -")
	f.Add("token-secret: [\"\\x00\"]\n&a [*a, *a]")
	f.Add("token-secret: hunter2-very-secret\nhistory: lots\n")
	f.Add("token-secret: [hunter2-in-a-list]\n")
	f.Add("zmq-curve-secret: {k: hunter2-in-a-map}\n")
	f.Fuzz(func(t *testing.T, yml string) {
		dir := t.TempDir()
		path := filepath.Join(dir, "c.yaml")
		os.WriteFile(path, []byte(yml), 0o600)
		cmd, _ := testCommand()
		_, err := ApplySettings(cmd, func(k string) string {
			if k == "PUSHCTL_CONFIG" {
				return path
			}
			return ""
		})
		if err != nil {
			var fe *FlagError
			if !errors.As(err, &fe) {
				t.Fatalf("config error is not a usage error: %v", err)
			}
			// No value given to a secret setting appears in the error.
			for _, v := range secretValues(yml) {
				if strings.Contains(err.Error(), v) {
					t.Fatalf("secret %q in error: %v", v, err)
				}
			}
		}
	})
}

func TestConfigPrecedenceAndSecrets(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "c.yaml")
	os.WriteFile(path, []byte("history: 5\nlisten: file:1\nhistory-age: 1m\ntoken-secret: s3cr3t-from-file\n"), 0o600)
	cmd, _ := testCommand()
	cmd.Flags().Parse([]string{"--history-age", "3m"})
	env := map[string]string{"PUSHCTL_CONFIG": path, "PUSHCTL_LISTEN": "env:2", "PUSHCTL_HISTORY_AGE": "2m"}
	src, err := ApplySettings(cmd, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	get := func(n string) string { return cmd.Flags().Lookup(n).Value.String() }
	if get("history") != "5" || get("listen") != "env:2" || get("history-age") != "3m0s" {
		t.Fatalf("history %s listen %s age %s", get("history"), get("listen"), get("history-age"))
	}
	if src["history"] != "file" || src["listen"] != "env" || src["history-age"] != "flag" {
		t.Fatalf("sources %v", src)
	}
	var out bytes.Buffer
	PrintConfig(cmd, src, &out)
	if strings.Contains(out.String(), "s3cr3t") || !strings.Contains(out.String(), "token-secret: <redacted>") {
		t.Fatalf("printed config:\n%s", out.String())
	}
	// A bad secret in the environment does not echo it.
	env["PUSHCTL_MAX_MESSAGE_SIZE"] = "lots"
	cmd, _ = testCommand()
	if _, err := ApplySettings(cmd, func(k string) string { return env[k] }); err == nil || !strings.Contains(err.Error(), "lots") {
		t.Fatalf("bad size: %v", err)
	}
}

// secretValues returns the scalar strings (6 bytes or longer) found under
// the secret settings of a YAML document, however nested.
func secretValues(yml string) []string {
	var doc map[string]any
	if yaml.Unmarshal([]byte(yml), &doc) != nil {
		return nil
	}
	var out []string
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case string:
			if len(x) >= 6 {
				out = append(out, x)
			}
		case []any:
			for _, e := range x {
				walk(e)
			}
		case map[string]any:
			for _, e := range x {
				walk(e)
			}
		}
	}
	for k, v := range doc {
		if strings.Contains(k, "secret") || k == "token" {
			walk(v)
		}
	}
	return out
}

// TestConfigListKeepsItemsWhole: a YAML list gives a repeatable flag one
// value per item, commas inside an item included (serve --pusher-app).
func TestConfigListKeepsItemsWhole(t *testing.T) {
	cmd := &cobra.Command{Use: "serve"}
	var apps []string
	cmd.Flags().StringArrayVar(&apps, "pusher-app", nil, "")
	cmd.Flags().String("config", "", "")
	path := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(path, []byte("pusher-app:\n  - \"1:k:s?webhook=http://a/x,y\"\n  - \"2:k2:s\"\n"), 0o600)
	cmd.Flags().Set("config", path)
	if _, err := ApplySettings(cmd, func(string) string { return "" }); err != nil {
		t.Fatal(err)
	}
	if len(apps) != 2 || apps[0] != "1:k:s?webhook=http://a/x,y" || apps[1] != "2:k2:s" {
		t.Fatalf("apps %q", apps)
	}
}
