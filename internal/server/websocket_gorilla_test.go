package server

import (
	"os"
	"regexp"
	"testing"
)

// TestGorillaVersionIsPinned: websocket_gorilla.go relies on how
// gorilla/websocket v1.5.3 reads frames. Another version must be checked
// by hand first (see that file's comment); this test makes the upgrade say
// so instead of passing quietly.
func TestGorillaVersionIsPinned(t *testing.T) {
	mod, err := os.ReadFile("../../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^\s*github\.com/gorilla/websocket (\S+)`).FindSubmatch(mod)
	if m == nil {
		t.Fatal("go.mod does not name github.com/gorilla/websocket")
	}
	if v := string(m[1]); v != "v1.5.3" {
		t.Fatalf("gorilla/websocket is %s; websocket_gorilla.go was checked against v1.5.3: re-check its reasoning and the frame tests, then update this pin", v)
	}
}
