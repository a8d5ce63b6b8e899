//go:build cgo && !nozmq

package e2e

import (
	"strings"
	"testing"
)

// TestDurableStreamPubSubCLI: pushctl pub appends to a Durable Stream by
// its ds:// URL (creating it; one append per message, or per line with
// its newline), and pushctl sub reads it from its start (a JSON stream
// value by value) and ends by itself when the stream is closed; flags
// that mean nothing for a stream are usage errors.
func TestDurableStreamPubSubCLI(t *testing.T) {
	_, u := serve(t)
	host := strings.TrimPrefix(u, "http://")
	ds := "ds://" + host + "/v1/stream/cli/a"
	if out, errs, code := run(t, "", "pub", ds, "hello "); code != 0 || out != ds+" appended=1\n" {
		t.Fatalf("pub ds:// hello: %d %q %s", code, out, errs)
	}
	if out, errs, code := run(t, "one\ntwo\n", "pub", ds, "--lines"); code != 0 || out != ds+" appended=2\n" {
		t.Fatalf("pub ds:// --lines: %d %q %s", code, out, errs)
	}
	// A byte stream holds the bytes: the message as given, the lines with
	// their newlines.
	if st, _, b := dsDo(t, "GET", u+"/v1/stream/cli/a?offset=-1", "", "", ""); st != 200 || b != "hello one\ntwo\n" {
		t.Fatalf("the stream holds %d %q", st, b)
	}
	// sub reads it from the start (a byte stream's read is one message).
	// Once it has its --count it stops, without a retry or a warning.
	if out, errs, code := run(t, "", "sub", ds, "--since", "all", "--count", "1", "--timeout", "20s"); code != 0 || !strings.HasPrefix(out, "hello one\ntwo\n") || errs != "" {
		t.Fatalf("sub ds:// --since all: %d %q %s", code, out, errs)
	}
	// A JSON stream: each value a message.
	dj := "ds://" + host + "/v1/stream/cli/j"
	for _, v := range []string{`{"n":1}`, `[{"n":2},{"n":3}]`} {
		if _, errs, code := run(t, "", "pub", dj, "--content-type", "application/json", v); code != 0 {
			t.Fatalf("pub %s: %d %s", v, code, errs)
		}
	}
	// Closed: sub reads to the end and stops there by itself.
	if st, _, b := dsDo(t, "POST", u+"/v1/stream/cli/j", "", "", "", "Stream-Closed", "true"); st != 204 {
		t.Fatalf("close: %d %s", st, b)
	}
	if out, errs, code := run(t, "", "sub", dj, "--since", "all", "--format", "line", "--timeout", "20s"); code != 0 ||
		out != "/v1/stream/cli/j\t{\"n\":1}\n/v1/stream/cli/j\t{\"n\":2}\n/v1/stream/cli/j\t{\"n\":3}\n" {
		t.Fatalf("sub of a closed JSON stream: %d %q %s", code, out, errs)
	}
	// An append to a closed stream fails, and says so.
	if _, errs, code := run(t, "", "pub", dj, "--content-type", "application/json", `{"n":4}`); code != 1 || !strings.Contains(errs, "closed") {
		t.Fatalf("pub to a closed stream: %d %s", code, errs)
	}
	for _, args := range [][]string{
		{"sub", ds, "--last", "3"},
		{"sub", ds, "news"},
		{"sub", ds + "?offset=-1", "--since", "all"},
		{"pub", ds, "--event", "x", "hi"},
		{"pub", ds, "--wait-subscribers", "1", "hi"},
		{"pub", "ds://" + host, "hi"},
	} {
		if _, errs, code := run(t, "", args...); code != 2 {
			t.Errorf("%v: exit %d (%s), want 2", args, code, errs)
		}
	}
}
