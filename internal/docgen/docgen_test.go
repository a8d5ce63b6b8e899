package docgen

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

// TestGeneratedFilesUpToDate fails when docs/cli, docs/man or completions/
// differ from what the commands generate now: run `go run ./cmd/gen-docs`.
func TestGeneratedFilesUpToDate(t *testing.T) {
	tmp := t.TempDir()
	if err := Generate(tmp); err != nil {
		t.Fatal(err)
	}
	repo := filepath.Join("..", "..")
	for _, dir := range []string{"docs/cli", "docs/man", "completions"} {
		want := map[string][]byte{}
		filepath.WalkDir(filepath.Join(tmp, dir), func(p string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				rel, _ := filepath.Rel(tmp, p)
				want[rel], _ = os.ReadFile(p)
			}
			return nil
		})
		got := map[string]bool{}
		filepath.WalkDir(filepath.Join(repo, dir), func(p string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				rel, _ := filepath.Rel(repo, p)
				got[rel] = true
				b, _ := os.ReadFile(p)
				if w, ok := want[rel]; !ok {
					t.Errorf("%s is no longer generated; run go run ./cmd/gen-docs", rel)
				} else if !bytes.Equal(b, w) {
					t.Errorf("%s is stale; run go run ./cmd/gen-docs", rel)
				}
			}
			return nil
		})
		for rel := range want {
			if !got[rel] {
				t.Errorf("%s is missing; run go run ./cmd/gen-docs", rel)
			}
		}
	}
}
