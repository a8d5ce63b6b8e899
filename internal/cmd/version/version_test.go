package version

import (
	"context"
	"encoding/json"
	"runtime"
	"testing"

	"github.com/pushctl/pushctl/internal/cmdutil"
)

func TestVersionJSON(t *testing.T) {
	out, _, err := cmdutil.RunForTest(context.Background(), cmdutil.Real(NewCmdVersion), nil, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var v map[string]any
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("--json printed %q: %v", out, err)
	}
	if v["go"] != runtime.Version() || v["os"] != runtime.GOOS || v["version"] == "" {
		t.Fatalf("version %v", v)
	}
	if _, ok := v["libzmq"]; !ok {
		t.Fatalf("no libzmq field (empty when built without ZeroMQ): %v", v)
	}
}
