package schedule

import (
	"sync"
	"time"
)

// Bucket is a token bucket: rate tokens a second, at most burst of them, full at first.
// It is not safe for concurrent use: its callers hold their own lock.
type Bucket struct {
	rate, burst, tokens float64
	at                  time.Time
}

// NewBucket returns a full bucket. A rate of 0 never refills.
func NewBucket(rate, burst float64) Bucket {
	return Bucket{rate: rate, burst: burst, tokens: burst}
}

// Take takes a token at now if one is left. A now earlier than the last one (read before
// the caller's lock, while another went first) counts as the last: time never runs back.
func (b *Bucket) Take(now time.Time) bool {
	if !b.at.IsZero() && now.After(b.at) {
		b.tokens = min(b.burst, b.tokens+now.Sub(b.at).Seconds()*b.rate)
	}
	if b.at.IsZero() || now.After(b.at) {
		b.at = now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// SharedBucket is a Bucket behind its own lock, for a process-wide cap.
type SharedBucket struct {
	mu sync.Mutex
	b  Bucket
}

// NewSharedBucket returns a full shared bucket.
func NewSharedBucket(rate, burst float64) *SharedBucket {
	return &SharedBucket{b: NewBucket(rate, burst)}
}

// Take takes a token at now if one is left.
func (s *SharedBucket) Take(now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Take(now)
}
