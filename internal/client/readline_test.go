package client

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"testing"
)

// FuzzReadLine: the client's reader of broker lines returns every line
// as sent and in order, and refuses (rather than buffers) a line past
// its bound.
func FuzzReadLine(f *testing.F) {
	f.Add([]byte("a\nbb\n\nccc"), 4)
	f.Add([]byte("{\"type\":\"message\"}\n"), 64)
	f.Add(bytes.Repeat([]byte("x"), 100), 10)
	f.Fuzz(func(t *testing.T, body []byte, max int) {
		if max < 1 || max > 1<<12 {
			return
		}
		br := bufio.NewReaderSize(bytes.NewReader(body), 16)
		var got []string
		var end error
		for {
			l, err := readLine(br, nil, max)
			if err != nil {
				if err == io.EOF && len(l) > 0 {
					got = append(got, "partial:"+string(l))
				}
				end = err
				break
			}
			got = append(got, string(l))
		}
		var want []string
		wantErr := "EOF"
		pieces := bytes.Split(body, []byte("\n"))
		for i, p := range pieces {
			last := i == len(pieces)-1
			if len(p)+1 > max+1 && !last || last && len(p) > max {
				wantErr = "long"
				break
			}
			if last {
				if len(p) > 0 {
					want = append(want, "partial:"+string(p))
				}
				break
			}
			want = append(want, string(p))
		}
		gotErr := "EOF"
		if end != io.EOF {
			gotErr = "long"
		}
		if fmt.Sprint(got) != fmt.Sprint(want) || gotErr != wantErr {
			t.Fatalf("max %d, body %q: got %q (%v), want %q (%s)", max, body, got, end, want, wantErr)
		}
	})
}
