package server

import (
	"encoding/binary"
	"testing"
)

// FuzzFrameTracker: fed a stream of frames of any lengths and length
// forms, masked or not, in pieces of any sizes, the tracker says
// "between frames" exactly where a frame ends.
func FuzzFrameTracker(f *testing.F) {
	f.Add([]byte{0, 1, 125, 126, 200, 255}, []byte{1, 2, 3})
	f.Add([]byte{7}, []byte{1})
	f.Fuzz(func(t *testing.T, sizes []byte, cuts []byte) {
		var stream []byte
		ends := map[int]bool{0: true}
		for i, sz := range sizes {
			n := int(sz)
			switch i % 3 { // the three length forms
			case 1:
				n += 126
			case 2:
				n += 1 << 16
			}
			b := []byte{0x81}
			switch {
			case n > 0xffff:
				b = append(b, 127, 0, 0, 0, 0, 0, 0, 0, 0)
				binary.BigEndian.PutUint64(b[2:], uint64(n))
			case n > 125:
				b = append(b, 126, 0, 0)
				binary.BigEndian.PutUint16(b[2:], uint16(n))
			default:
				b = append(b, byte(n))
			}
			if sz%2 == 1 {
				b[1] |= 0x80
				b = append(b, 1, 2, 3, 4)
			}
			stream = append(stream, b...)
			stream = append(stream, make([]byte, n)...)
			ends[len(stream)] = true
		}
		var tr frameTracker
		pos := 0
		for i := 0; pos < len(stream); i++ {
			k := 1
			if len(cuts) > 0 {
				k = int(cuts[i%len(cuts)])*int(cuts[i%len(cuts)]) + 1
			}
			k = min(k, len(stream)-pos)
			tr.feed(stream[pos : pos+k])
			pos += k
			if got := tr.between(); got != ends[pos] {
				t.Fatalf("after %d bytes: between %v, want %v", pos, got, ends[pos])
			}
		}
	})
}
