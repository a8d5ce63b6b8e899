// Package docgen writes the generated reference: Markdown CLI pages and
// man pages in docs/, shell completions in completions/.
package docgen

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/pushctl/pushctl/internal/cmd/root"
	"github.com/pushctl/pushctl/internal/cmdutil"
	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

// manDate is fixed so the generated pages only change when the commands do.
var manDate = time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)

// Generate writes every generated file under repo (the repository root).
func Generate(repo string) error {
	f := cmdutil.New()
	ios, _, _, _ := cmdutil.Test()
	f.IO = ios
	cmd := root.NewCmdRoot(f)
	cmd.DisableAutoGenTag = true
	cli := filepath.Join(repo, "docs", "cli")
	man := filepath.Join(repo, "docs", "man")
	comp := filepath.Join(repo, "completions")
	for _, d := range []string{cli, man, comp} {
		if err := os.RemoveAll(d); err != nil {
			return err
		}
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	if err := doc.GenMarkdownTree(cmd, cli); err != nil {
		return fmt.Errorf("markdown: %w", err)
	}
	hdr := &doc.GenManHeader{Title: "PUSHCTL", Section: "1", Date: &manDate, Source: "pushctl", Manual: "pushctl manual"}
	if err := doc.GenManTree(cmd, hdr, man); err != nil {
		return fmt.Errorf("man pages: %w", err)
	}
	for name, gen := range map[string]func(*cobra.Command, *bytes.Buffer) error{
		"pushctl.bash": func(c *cobra.Command, b *bytes.Buffer) error { return c.GenBashCompletionV2(b, true) },
		"pushctl.zsh":  func(c *cobra.Command, b *bytes.Buffer) error { return c.GenZshCompletion(b) },
		"pushctl.fish": func(c *cobra.Command, b *bytes.Buffer) error { return c.GenFishCompletion(b, true) },
		"pushctl.ps1":  func(c *cobra.Command, b *bytes.Buffer) error { return c.GenPowerShellCompletionWithDesc(b) },
	} {
		var b bytes.Buffer
		if err := gen(cmd, &b); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if err := os.WriteFile(filepath.Join(comp, name), b.Bytes(), 0o644); err != nil {
			return err
		}
	}
	return nil
}
