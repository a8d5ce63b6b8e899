package bench

import (
	"math/bits"
	"time"
)

// Histogram records durations in log-linear buckets: 32 per power of two,
// so any reported percentile is within about 3% of the true value.
type Histogram struct {
	counts [64 * 32]uint64
	n      uint64
	max    time.Duration
}

func bucketOf(d time.Duration) int {
	v := uint64(max(d, 0))
	if v < 32 {
		return int(v)
	}
	e := bits.Len64(v) - 1 // v in [2^e, 2^(e+1))
	return (e-4)*32 + int((v>>(e-5))&31)
}

// bucketValue returns the upper bound of a bucket.
func bucketValue(i int) time.Duration {
	if i < 32 {
		return time.Duration(i)
	}
	e := i/32 + 4
	sub := uint64(i % 32)
	return time.Duration((uint64(1) << e) + (sub+1)<<(e-5) - 1)
}

// Record adds one observation.
func (h *Histogram) Record(d time.Duration) {
	h.counts[bucketOf(d)]++
	h.n++
	if d > h.max {
		h.max = d
	}
}

// Merge adds o's observations to h.
func (h *Histogram) Merge(o *Histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.max = max(h.max, o.max)
}

// Count returns the number of observations.
func (h *Histogram) Count() uint64 { return h.n }

// Max returns the largest observation.
func (h *Histogram) Max() time.Duration { return h.max }

// Percentile returns the value at or below which p (0–100) percent of the
// observations fall.
func (h *Histogram) Percentile(p float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(p/100*float64(h.n) + 0.5)
	rank = max(rank, 1)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return min(bucketValue(i), h.max)
		}
	}
	return h.max
}
