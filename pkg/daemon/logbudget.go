package daemon

import (
	"sync"
	"time"

	"reachd/pkg/schedule"
)

// logBudget bounds the verdict records logged per second over all targets: with
// log.verdicts changes a quiet gateway logs little, but 10,000 targets that flap would
// flood the journal (whose own rate limit drops records without saying which). Beyond the
// budget records are counted, not written, and a line says how many, once a minute.
type logBudget struct {
	mu         sync.Mutex
	rate       int // records per second; 0: no limit
	bucket     schedule.Bucket
	suppressed uint64 // since the last summary
	summaryAt  time.Time
}

func newLogBudget(rate, burst int, now time.Time) *logBudget {
	return &logBudget{rate: rate, bucket: schedule.NewBucket(float64(rate), float64(burst)), summaryAt: now}
}

// configure gives the budget a reload's rate and burst, with the burst's tokens for the new
// config's first round. The count not yet summarised stays: a reload does not hide what
// was suppressed before it.
func (b *logBudget) configure(rate, burst int, now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.rate, b.bucket = rate, schedule.NewBucket(float64(rate), float64(burst))
}

// take says whether a record may be written now; summary is the count of records
// suppressed since the last summary, when one is due (else 0).
func (b *logBudget) take(now time.Time) (ok bool, summary uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if ok = b.rate <= 0 || b.bucket.Take(now); !ok {
		b.suppressed++
	}
	if b.suppressed > 0 && now.Sub(b.summaryAt) >= time.Minute {
		summary, b.suppressed, b.summaryAt = b.suppressed, 0, now
	}
	return ok, summary
}
