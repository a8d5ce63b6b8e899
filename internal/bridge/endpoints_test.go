package bridge

import "testing"

// TestPushctlURLDefaultPorts: a pushctl:// endpoint without a port is the
// broker's default port 7070, a pushctls:// one HTTPS's port 443 (issue
// 26: pushctl://host/ch dialled port 80).
func TestPushctlURLDefaultPorts(t *testing.T) {
	for _, tc := range []struct{ raw, want string }{
		{"pushctl://127.0.0.1/news", "http://127.0.0.1:7070"},
		{"pushctl://localhost", "http://localhost:7070"},
		{"pushctl://127.0.0.1:7171/news", "http://127.0.0.1:7171"},
		{"pushctls://push.example.com/orders.>", "https://push.example.com"}, // HTTPS: 443
		{"pushctls://push.example.com:8443/orders", "https://push.example.com:8443"},
		{"pushctl://[::1]/x", "http://[::1]:7070"},
	} {
		c, _, err := pushctlURL(tc.raw, EndpointOptions{})
		if err != nil {
			t.Errorf("%s: %v", tc.raw, err)
			continue
		}
		if got := c.URL(); got != tc.want {
			t.Errorf("%s: dials %s, want %s", tc.raw, got, tc.want)
		}
	}
	for _, raw := range []string{"pushctl:///x", "pushctl://a:b:c/x", "pushctl://h1,/x"} {
		if _, _, err := pushctlURL(raw, EndpointOptions{}); err == nil {
			t.Errorf("%s: accepted", raw)
		}
	}
}
