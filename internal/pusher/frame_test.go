package pusher

import (
	"strings"
	"testing"
)

// TestErrorFramesAreNotHTMLEscaped: the texts of pusher:error and
// pusher:subscription_error keep <, > and & as written (issue 26: they read
// \u003c… as encoding/json writes for HTML pages).
func TestErrorFramesAreNotHTMLEscaped(t *testing.T) {
	if b := ErrorFrame(0, `invalid channel "a>b" & <c>`); !strings.Contains(string(b), `invalid channel \"a>b\" & <c>`) {
		t.Errorf("pusher:error %s", b)
	}
	if b := SubscriptionError("a>b", "AuthError", "no <token> & no grant", 401); !strings.Contains(string(b), `"channel":"a>b"`) || !strings.Contains(string(b), `no <token> & no grant`) {
		t.Errorf("pusher:subscription_error %s", b)
	}
}
