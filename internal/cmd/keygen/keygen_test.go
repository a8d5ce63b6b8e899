package keygen

import (
	"context"
	"encoding/json"
	"regexp"
	"testing"

	"github.com/pushctl/pushctl/internal/cmdutil"
)

var z85 = regexp.MustCompile(`^[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}$`)

// TestKeygen: two fresh CURVE key pairs in Z85, as text and as JSON.
func TestKeygen(t *testing.T) {
	out, _, err := cmdutil.RunForTest(context.Background(), cmdutil.Real(NewCmdKeygen), nil, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var k struct{ Public, Secret string }
	if err := json.Unmarshal([]byte(out), &k); err != nil || !z85.MatchString(k.Public) || !z85.MatchString(k.Secret) || k.Public == k.Secret {
		t.Fatalf("keygen --json: %q (%v)", out, err)
	}
	out2, _, err := cmdutil.RunForTest(context.Background(), cmdutil.Real(NewCmdKeygen), nil)
	if err != nil || !regexp.MustCompile(`^public: \S{40}\nsecret: \S{40}\n$`).MatchString(out2) {
		t.Fatalf("keygen: %q %v", out2, err)
	}
	if out2 == "public: "+k.Public+"\nsecret: "+k.Secret+"\n" {
		t.Fatal("two runs made the same key pair")
	}
	if _, _, err := cmdutil.RunForTest(context.Background(), cmdutil.Real(NewCmdKeygen), nil, "extra"); err == nil {
		t.Fatal("keygen took an argument")
	}
}
