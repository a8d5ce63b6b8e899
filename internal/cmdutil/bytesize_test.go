package cmdutil

import "testing"

// FuzzParseByteSize: sizes parse to non-negative values that print and
// parse back to themselves.
func FuzzParseByteSize(f *testing.F) {
	for _, s := range []string{"512", "64KiB", "1MiB", "1 GiB", "10mb", "3k", "-1", "1e9", "9223372036854775807", "4611686018427387904", "", "kib"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseByteSize(s)
		if err != nil {
			return
		}
		if n < 0 || n > 1<<62 {
			t.Fatalf("%q parsed to %d", s, n)
		}
		b := ByteSize(n)
		again, err := ParseByteSize(b.String())
		if err != nil || again != n {
			t.Fatalf("%q -> %d -> %q -> %d %v", s, n, b.String(), again, err)
		}
	})
}
