// Package schedule decides when attempts run: retries with backoff and jitter, and bounded
// concurrency across targets.
package schedule

import (
	"context"
	"errors"
	"time"

	"github.com/cenkalti/backoff/v5"

	"reachd/pkg/verdict"
)

// Policy is a retry policy: the first attempt plus up to Retries more, separated by
// Initial × Multiplierⁿ with ±Jitter (a fraction) of random spread.
type Policy struct {
	Retries    int
	Initial    time.Duration
	Multiplier float64
	Jitter     float64
	Max        time.Duration
}

// DefaultPolicy is the seed's: 3 retries, 500 ms × 1.8ⁿ ± 15 %
// (425–575, 765–1035, 1377–1863 ms).
func DefaultPolicy() Policy {
	return Policy{Retries: 3, Initial: 500 * time.Millisecond, Multiplier: 1.8, Jitter: 0.15, Max: 60 * time.Second}
}

// Sleeper waits d or until ctx is done, whichever is first; it returns ctx's error if so.
// Tests pass a fake one so schedules are measured without real sleeping.
type Sleeper func(ctx context.Context, d time.Duration) error

// RealSleep sleeps on a timer that is released on every path.
func RealSleep(ctx context.Context, d time.Duration) error {
	return sleep(ctx, d, nil)
}

// ErrStopping ends a StoppableSleep whose stop channel closed.
var ErrStopping = errors.New("stopping")

// StoppableSleep is RealSleep that also ends when stop closes: a daemon that is stopping
// starts no new attempt, while the attempt in flight (on ctx) still ends.
func StoppableSleep(stop <-chan struct{}) Sleeper {
	return func(ctx context.Context, d time.Duration) error { return sleep(ctx, d, stop) }
}

func sleep(ctx context.Context, d time.Duration, stop <-chan struct{}) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-stop: // nil: never
		return ErrStopping
	}
}

// Attempt runs attempt n (1-based) and reports whether another attempt may help.
type Attempt func(ctx context.Context, n int) (retry bool)

// Do runs attempts under p until one says not to retry, the retries are used up or ctx is
// done. It never sleeps after the last attempt. It returns the number of attempts made and
// the delay slept after each attempt but the last (len = attempts-1).
func (p Policy) Do(ctx context.Context, sleep Sleeper, attempt Attempt) (attempts int, delays []time.Duration) {
	b := &backoff.ExponentialBackOff{
		InitialInterval:     p.Initial,
		RandomizationFactor: p.Jitter,
		Multiplier:          p.Multiplier,
		MaxInterval:         p.Max,
	}
	if b.MaxInterval <= 0 {
		b.MaxInterval = backoff.DefaultMaxInterval
	}
	b.Reset()
	for n := 1; ; n++ {
		retry := attempt(ctx, n)
		if !retry || n > p.Retries || ctx.Err() != nil {
			return n, delays
		}
		d := b.NextBackOff()
		if err := sleep(ctx, d); err != nil {
			return n, delays
		}
		delays = append(delays, d)
	}
}

// retryable says which reasons are worth another attempt, and why. A reason that is not
// listed is a definite answer (the host or a router said no, or local configuration is
// wrong) and retrying it would only delay the verdict and load the target.
var retryable = map[verdict.Reason]string{
	verdict.Timeout:         "loss is often transient: a dropped SYN or echo, a busy server backlog",
	verdict.HostUnreachable: "neighbor resolution fails transiently while a host or router reboots",
	verdict.NetUnreachable:  "routers send it while routing converges",
	verdict.Reset:           "a connection reset mid-probe is often a restarting peer",
	verdict.SelfOverload:    "the prober itself was late; the next attempt may not be",
	verdict.LocalError:      "file descriptors and ephemeral ports free up",
	verdict.DNSTimeout:      "resolvers drop queries under load",
	verdict.DNSServfail:     "SERVFAIL is often an upstream timeout at the resolver",
	verdict.OpenFiltered:    "a UDP reply may be lost like any datagram",
}

// Retryable reports whether r is worth another attempt.
func Retryable(r verdict.Reason) bool { _, ok := retryable[r]; return ok }

// RetryableWhy returns why r is retried, or "" when it is not.
func RetryableWhy(r verdict.Reason) string { return retryable[r] }
