package door

import (
	"sync"
	"time"
)

// rateLimiter is a token bucket per key.
type rateLimiter struct {
	rate  float64
	burst float64
	mu    sync.Mutex
	bkts  map[string]*Bucket
	last  time.Time
}

// Bucket is one token bucket, for limits kept per connection (a Pusher
// connection's client events) rather than per caller.
type Bucket struct {
	tokens float64
	at     time.Time
}

// NewBucket returns a full bucket of burst tokens.
func NewBucket(burst float64, now time.Time) *Bucket { return &Bucket{tokens: burst, at: now} }

func newRateLimiter(rate float64, burst int) *rateLimiter {
	if burst <= 0 {
		burst = max(1, int(rate))
	}
	return &rateLimiter{rate: rate, burst: float64(burst), bkts: map[string]*Bucket{}}
}

// take spends one token for key, or says how long until one is there.
func (l *rateLimiter) take(key string, now time.Time) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.last) > time.Minute { // forget idle keys, bounding memory
		for k, b := range l.bkts {
			if now.Sub(b.at) > time.Minute {
				delete(l.bkts, k)
			}
		}
		l.last = now
	}
	b := l.bkts[key]
	if b == nil {
		b = NewBucket(l.burst, now)
		l.bkts[key] = b
	}
	if b.Take(l.rate, l.burst, now) {
		return true, 0
	}
	return false, time.Duration((1 - b.tokens) / l.rate * float64(time.Second))
}

// Take refills the bucket for the time since its last use and spends one
// token if there is one.
func (b *Bucket) Take(rate, burst float64, now time.Time) bool {
	b.tokens = min(burst, b.tokens+now.Sub(b.at).Seconds()*rate)
	b.at = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
