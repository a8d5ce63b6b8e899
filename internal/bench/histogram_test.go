package bench

import (
	"testing"
	"time"
)

func TestHistogramPercentiles(t *testing.T) {
	var h Histogram
	for i := 1; i <= 10000; i++ {
		h.Record(time.Duration(i) * time.Microsecond)
	}
	for _, c := range []struct {
		p    float64
		want time.Duration
	}{{50, 5 * time.Millisecond}, {99, 9900 * time.Microsecond}, {100, 10 * time.Millisecond}} {
		got := h.Percentile(c.p)
		if diff := float64(got-c.want) / float64(c.want); diff < -0.04 || diff > 0.04 {
			t.Errorf("p%v = %v, want %v ±4%%", c.p, got, c.want)
		}
	}
	if h.Max() != 10*time.Millisecond || h.Count() != 10000 {
		t.Fatalf("max %v count %d", h.Max(), h.Count())
	}
	for _, d := range []time.Duration{0, 1, 31, 32, 33, 1 << 40} {
		if b := bucketValue(bucketOf(d)); b < d || float64(b-d) > float64(d)/30+1 {
			t.Errorf("bucket of %d has bound %d", d, b)
		}
	}
}
