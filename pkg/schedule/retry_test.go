package schedule

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.uber.org/goleak"

	"reachd/pkg/verdict"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeSleep records the delays asked for and returns at once: no real sleeping.
type fakeSleep struct{ got []time.Duration }

func (f *fakeSleep) sleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	f.got = append(f.got, d)
	return nil
}

func TestDefaultScheduleWithinSeedRanges(t *testing.T) {
	ranges := [][2]time.Duration{
		{425 * time.Millisecond, 575 * time.Millisecond},
		{765 * time.Millisecond, 1035 * time.Millisecond},
		{1377 * time.Millisecond, 1863 * time.Millisecond},
	}
	const runs = 1000
	var sum [3]time.Duration
	var lo, hi [3]time.Duration
	for i := range 3 {
		lo[i], hi[i] = time.Hour, 0
	}
	for range runs {
		fs := &fakeSleep{}
		attempts, delays := DefaultPolicy().Do(context.Background(), fs.sleep, func(context.Context, int) bool { return true })
		if attempts != 4 {
			t.Fatalf("attempts = %d, want 4 (first + 3 retries)", attempts)
		}
		if len(fs.got) != 3 || len(delays) != 3 {
			t.Fatalf("slept %d times (recorded %d), want 3: no sleep after the last attempt", len(fs.got), len(delays))
		}
		for i, d := range fs.got {
			// Allow the library's +1 ns of its closed interval.
			if d < ranges[i][0] || d > ranges[i][1]+time.Nanosecond {
				t.Fatalf("delay %d = %s, want within %s–%s", i+1, d, ranges[i][0], ranges[i][1])
			}
			sum[i] += d
			lo[i], hi[i] = min(lo[i], d), max(hi[i], d)
		}
	}
	for i := range 3 {
		mean := sum[i] / runs
		mid := (ranges[i][0] + ranges[i][1]) / 2
		span := ranges[i][1] - ranges[i][0]
		// Jitter must actually spread: the mean near the middle, the extremes near the ends.
		if d := mean - mid; d > span/20 || d < -span/20 {
			t.Errorf("delay %d mean %s, want near %s", i+1, mean, mid)
		}
		if lo[i] > ranges[i][0]+span/10 || hi[i] < ranges[i][1]-span/10 {
			t.Errorf("delay %d spread %s–%s does not cover %s–%s", i+1, lo[i], hi[i], ranges[i][0], ranges[i][1])
		}
		t.Logf("delay %d over %d schedules: min %s mean %s max %s", i+1, runs, lo[i], mean, hi[i])
	}
}

func TestStopsWhenNotRetryable(t *testing.T) {
	fs := &fakeSleep{}
	attempts, _ := DefaultPolicy().Do(context.Background(), fs.sleep, func(_ context.Context, n int) bool { return n < 2 })
	if attempts != 2 || len(fs.got) != 1 {
		t.Fatalf("attempts %d sleeps %d, want 2 and 1", attempts, len(fs.got))
	}
}

func TestZeroRetries(t *testing.T) {
	p := DefaultPolicy()
	p.Retries = 0
	fs := &fakeSleep{}
	attempts, _ := p.Do(context.Background(), fs.sleep, func(context.Context, int) bool { return true })
	if attempts != 1 || len(fs.got) != 0 {
		t.Fatalf("attempts %d sleeps %d, want 1 and 0", attempts, len(fs.got))
	}
}

func TestCancelledDuringBackoff(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var slept error
	sleep := func(ctx context.Context, d time.Duration) error {
		cancel()
		slept = RealSleep(ctx, d)
		return slept
	}
	// An hour's backoff: a sleep that did not end on cancellation would still be asleep when
	// the watchdog fires, however loaded the host, and one that ended early for another reason
	// would not return context.Canceled.
	p := Policy{Retries: 1, Initial: time.Hour, Multiplier: 1, Max: time.Hour}
	type result struct {
		attempts int
		delays   []time.Duration
	}
	done := make(chan result, 1)
	go func() {
		attempts, delays := p.Do(ctx, sleep, func(context.Context, int) bool { return true })
		done <- result{attempts, delays}
	}()
	var r result
	select {
	case r = <-done:
	case <-time.After(time.Minute):
		t.Fatal("the backoff did not end when its context was cancelled")
	}
	if r.attempts != 1 || len(r.delays) != 0 {
		t.Fatalf("attempts %d delays %v, want 1 attempt and no completed delay", r.attempts, r.delays)
	}
	if !errors.Is(slept, context.Canceled) {
		t.Fatalf("RealSleep returned %v, want context.Canceled", slept)
	}
}

func TestRetryableTable(t *testing.T) {
	for _, r := range []verdict.Reason{verdict.Timeout, verdict.SelfOverload, verdict.DNSTimeout} {
		if !Retryable(r) || RetryableWhy(r) == "" {
			t.Errorf("%s should be retryable with a reason", r)
		}
	}
	for _, r := range []verdict.Reason{verdict.OK, verdict.Refused, verdict.AdminProhibited, verdict.NoRoute, verdict.Permission, verdict.DNSNXDomain} {
		if Retryable(r) {
			t.Errorf("%s is a definite answer and must not be retried", r)
		}
	}
	for r := range retryable {
		if !r.Known() {
			t.Errorf("retryable table names unknown reason %q", r)
		}
	}
}

func TestForEachBounded(t *testing.T) {
	const n, limit = 200, 7
	var running, peak int32
	mu := make(chan struct{}, 1)
	ForEach(context.Background(), n, limit, func(int) {
		mu <- struct{}{}
		running++
		peak = max(peak, running)
		<-mu
		time.Sleep(time.Millisecond)
		mu <- struct{}{}
		running--
		<-mu
	})
	if peak > limit || peak < 2 {
		t.Fatalf("peak concurrency %d, want 2..%d", peak, limit)
	}
}

// TestStoppableSleep: it ends at its time, with its context, or when stop closes.
func TestStoppableSleep(t *testing.T) {
	stop := make(chan struct{})
	sleep := StoppableSleep(stop)
	if err := sleep(context.Background(), time.Millisecond); err != nil {
		t.Errorf("a plain sleep: %v", err)
	}
	close(stop)
	start := time.Now()
	if err := sleep(context.Background(), time.Hour); !errors.Is(err, ErrStopping) || time.Since(start) > time.Second {
		t.Errorf("after stop: %v in %v", err, time.Since(start))
	}
}
