package daemon

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"reachd/pkg/config"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func mustConfig(t *testing.T, src string) *config.Config {
	t.Helper()
	c, err := config.Parse("t.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// manyTargets is a config of n icmp targets at interval.
func manyTargets(t *testing.T, n int, interval string) *config.Config {
	src := "probes:\n  - name: many\n    kind: icmp\n    interval: " + interval + "\n    timeout: 50ms\n    targets:\n"
	if n > 250 {
		t.Fatal("at most 250 targets")
	}
	for i := range n {
		src += fmt.Sprintf("      - 198.51.100.%d\n", i+1)
	}
	return mustConfig(t, src)
}

// clocked is a scheduler running cfg on a clock the test sets (*now).
func clocked(cfg *config.Config) (*scheduler, *time.Time) {
	now := time.Unix(1_800_000_000, 0)
	s := newScheduler()
	s.now = func() time.Time { return now }
	s.apply(cfg.Probes)
	return s, &now
}

// TestPhasesSpreadAndStable: the ticks of many targets spread over the interval (no herd),
// and the same config gives the same phases in another scheduler (a restart).
func TestPhasesSpreadAndStable(t *testing.T) {
	cfg := manyTargets(t, 200, "10s")
	now := time.Unix(1_800_000_000, 0)
	a, b := newScheduler(), newScheduler()
	a.now = func() time.Time { return now }
	b.now = func() time.Time { return now.Add(3 * time.Second) } // restarted 3 s later
	a.apply(cfg.Probes)
	b.apply(cfg.Probes)
	buckets := make([]int, 10)
	for key, sa := range a.slots {
		sb := b.slots[key]
		pa, pb := sa.due.UnixNano()%int64(10*time.Second), sb.due.UnixNano()%int64(10*time.Second)
		if pa != pb {
			t.Fatalf("%q: phase %v before the restart, %v after", key, time.Duration(pa), time.Duration(pb))
		}
		buckets[time.Duration(pa)/time.Second]++
	}
	for i, n := range buckets {
		if n < 5 || n > 40 { // 20 expected per second of the interval
			t.Errorf("second %d of the interval has %d of 200 ticks: not spread (%v)", i, n, buckets)
		}
	}
}

// TestTicksDoNotDrift: ticks stay on their phase however late the loop runs them, a tick
// whose chain is still running is skipped and counted, and ticks missed while reachd was
// stalled are skipped, not run in a burst.
func TestTicksDoNotDrift(t *testing.T) {
	cfg := manyTargets(t, 1, "1s")
	s, now := clocked(cfg)
	sl := s.heap[0]
	first := sl.due
	for i := range 5 {
		*now = first.Add(time.Duration(i)*time.Second + 300*time.Millisecond) // the loop runs 300 ms late
		s.queueDue()
		q := s.take()
		if !q.due.Equal(first.Add(time.Duration(i) * time.Second)) {
			t.Fatalf("tick %d due %v, want %v", i, q.due.Sub(first), time.Duration(i)*time.Second)
		}
		s.done(sl)
	}
	// A tick that finds the chain running is skipped.
	*now = first.Add(5 * time.Second)
	s.queueDue()
	*now = first.Add(6 * time.Second)
	s.queueDue()
	if s.skipped["many"] != 1 || len(s.queue) != 1 {
		t.Fatalf("skipped %d, queued %d; want 1 and 1", s.skipped["many"], len(s.queue))
	}
	s.take()
	s.done(sl)
	// Stalled for 10 s: one tick runs, nine are skipped, and the phase holds.
	*now = first.Add(16*time.Second + 500*time.Millisecond)
	s.queueDue()
	if len(s.queue) != 1 || s.skipped["many"] != 1+9 {
		t.Fatalf("after a stall: queued %d skipped %d; want 1 and 10", len(s.queue), s.skipped["many"])
	}
	if got := sl.due.Sub(first); got != 17*time.Second {
		t.Errorf("next tick at +%v, want +17s", got)
	}
	s.stop()
}

// TestTicksGoOutTogether: a pass of the loop queues the ticks due within a probe's early
// allowance of it (tickAhead, or a tenth of a short interval), none later, and sleeps until
// the next; so 200 targets at 1 s wake it at most once per tickAhead, not 200 times a second.
func TestTicksGoOutTogether(t *testing.T) {
	for _, c := range []struct {
		interval string
		allow    time.Duration
	}{{"1s", tickAhead}, {"100ms", 10 * time.Millisecond}} {
		cfg := manyTargets(t, 200, c.interval)
		period := cfg.Probes[0].Interval
		s, now := clocked(cfg)
		passes, queued := 0, 0
		for end := now.Add(period); now.Before(end); passes++ {
			wait := s.queueDue()
			for len(s.queue) > 0 {
				q := s.take()
				if q.due.After(now.Add(c.allow)) {
					t.Fatalf("%s: tick due %v queued at %v: more than %v early", c.interval, q.due, now, c.allow)
				}
				s.done(q.s)
				queued++
			}
			if next := s.heap[0].due; !next.After(now.Add(c.allow)) || !now.Add(wait).Equal(next) {
				t.Fatalf("%s: at %v: next tick %v left behind or slept past (wait %v)", c.interval, now, next, wait)
			}
			*now = now.Add(wait)
		}
		if len(s.skipped) != 0 {
			t.Errorf("%s: skipped %v: every chain ended before its next tick", c.interval, s.skipped)
		}
		if most := int(period/c.allow) + 1; queued < 200 || passes > most {
			t.Errorf("%s: %d ticks in %d passes over an interval; want 200 or more in at most %d", c.interval, queued, passes, most)
		}
		s.stop()
	}
}

// TestEarlyNeverSkips: a tick is skipped only if its chain still runs when it is due. A
// loop that wakes late, near the next tick, queues the slot and sees its next tick within
// the early allowance; that tick is not skipped then, but when it comes if the chain runs.
func TestEarlyNeverSkips(t *testing.T) {
	cfg := manyTargets(t, 1, "100ms")
	s, now := clocked(cfg)
	sl := s.heap[0]
	first := sl.due
	*now = first.Add(95 * time.Millisecond) // 5 ms before the next tick
	if wait := s.queueDue(); len(s.queue) != 1 || len(s.skipped) != 0 || wait != 5*time.Millisecond {
		t.Fatalf("queued %d, skipped %v, next pass in %v; want 1, none, 5ms", len(s.queue), s.skipped, wait)
	}
	s.take()
	*now = first.Add(100 * time.Millisecond) // due, and the chain still runs
	s.queueDue()
	if s.skipped["many"] != 1 {
		t.Fatalf("skipped %v; want the tick that found its chain running", s.skipped)
	}
	s.done(sl)
	s.stop()
}

// TestApplyIsADiff: a reload keeps unchanged slots (their phase and state), replaces
// changed ones and removes the rest.
func TestApplyIsADiff(t *testing.T) {
	s := newScheduler()
	c1 := mustConfig(t, "probes:\n  - {name: a, kind: icmp, targets: [198.51.100.1, 198.51.100.2]}\n  - {name: b, kind: icmp, targets: [198.51.100.3]}\n")
	s.apply(c1.Probes)
	keep := s.slots["a\x00198.51.100.1"]
	keep.legs = []*leg{{seen: true}}
	s.skipped["b"] = 3
	c2 := mustConfig(t, "probes:\n  - {name: a, kind: icmp, targets: [198.51.100.1, 198.51.100.4]}\n  - {name: c, kind: icmp, targets: [198.51.100.3]}\n")
	removed, added := s.apply(c2.Probes)
	if removed != 2 || added != 2 {
		t.Errorf("removed %d added %d, want 2 and 2", removed, added)
	}
	if s.slots["a\x00198.51.100.1"] != keep || len(keep.legs) != 1 {
		t.Error("an unchanged slot lost its state")
	}
	if _, ok := s.skipped["b"]; ok {
		t.Error("a removed probe's skipped series stays")
	}
	if len(s.heap) != 3 {
		t.Errorf("heap has %d slots, want 3", len(s.heap))
	}
	c3 := mustConfig(t, "probes:\n  - {name: a, kind: icmp, timeout: 1s, targets: [198.51.100.1]}\n")
	s.apply(c3.Probes)
	if s.slots["a\x00198.51.100.1"] == keep || !keep.removed {
		t.Error("a changed probe kept its old slot")
	}
}

// TestWatchdogFromTheLoop: the loop pings on each pass; when the loop is stuck, the pings
// stop (so systemd's watchdog restarts a stuck reachd); when it resumes, so do they.
func TestWatchdogFromTheLoop(t *testing.T) {
	s := newScheduler()
	var pings atomic.Int64
	s.tick = func() { pings.Add(1) }
	s.tickEvery = 5 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.loop(ctx) }()
	defer func() { cancel(); <-done }()
	time.Sleep(100 * time.Millisecond)
	if n := pings.Load(); n < 5 {
		t.Fatalf("%d pings in 100 ms at one per 5 ms", n)
	}
	s.mu.Lock() // the loop's next pass blocks here: a stuck scheduler
	time.Sleep(20 * time.Millisecond)
	stuck := pings.Load()
	time.Sleep(100 * time.Millisecond)
	if n := pings.Load(); n > stuck+1 {
		t.Errorf("%d pings while the loop was stuck", n-stuck)
	}
	s.mu.Unlock()
	time.Sleep(50 * time.Millisecond)
	if pings.Load() <= stuck+1 {
		t.Error("pings did not resume")
	}
}

// TestWorkersComeAndGo: due ticks get workers up to the cap, never more; idle workers
// go after their linger; the next tick brings one back.
func TestWorkersComeAndGo(t *testing.T) {
	defer func(l time.Duration) { workerLinger = l }(workerLinger)
	workerLinger = 50 * time.Millisecond
	cfg := manyTargets(t, 20, "1s")
	s, now := clocked(cfg)
	var wg sync.WaitGroup
	var ran atomic.Int64
	var c concurrency
	release := make(chan struct{})
	s.setWorkers(3, wg.Go, func(*queued) {
		c.enter()
		<-release
		c.leave()
		ran.Add(1)
	})
	*now = now.Add(time.Second) // every slot is due
	s.queueDue()
	close(release)
	deadline := time.Now().Add(2 * time.Second)
	for ran.Load() < 20 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if ran.Load() != 20 || c.peak.Load() > 3 {
		t.Fatalf("ran %d of 20 ticks, %d workers at once (cap 3)", ran.Load(), c.peak.Load())
	}
	time.Sleep(4 * workerLinger)
	s.mu.Lock()
	running := s.running
	s.mu.Unlock()
	if running != 0 {
		t.Errorf("%d workers still running after idling", running)
	}
	*now = now.Add(time.Second)
	s.queueDue()
	deadline = time.Now().Add(2 * time.Second)
	for ran.Load() < 40 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if ran.Load() != 40 {
		t.Errorf("after the workers left, %d of 20 new ticks ran", ran.Load()-20)
	}
	s.stop()
	wg.Wait()
}

// TestBurstReachesTheCap: with an idle worker waiting, a burst of due ticks still gets
// workers up to the cap (not only the idle one).
func TestBurstReachesTheCap(t *testing.T) {
	cfg := manyTargets(t, 20, "1s")
	s, now := clocked(cfg)
	var wg sync.WaitGroup
	var c concurrency
	gate := make(chan struct{})
	s.setWorkers(8, wg.Go, func(*queued) {
		c.enter()
		<-gate
		c.leave()
	})
	// One worker, idle.
	s.mu.Lock()
	s.running++
	s.spawn()
	s.mu.Unlock()
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		s.mu.Lock()
		w := len(s.idle)
		s.mu.Unlock()
		if w == 1 {
			break
		}
	}
	*now = now.Add(time.Second) // all 20 due at once
	s.queueDue()
	for deadline := time.Now().Add(time.Second); c.busy.Load() < 8 && time.Now().Before(deadline); time.Sleep(time.Millisecond) {
	}
	if got := c.peak.Load(); got != 8 {
		t.Errorf("%d ticks ran at once with a cap of 8", got)
	}
	close(gate)
	s.stop()
	wg.Wait()
}

// TestReplacedSlotWaitsForTheOldChain: a reload that changes a probe while its chain
// runs gives a new slot that does not start a second chain for the target until the old
// one ends.
func TestReplacedSlotWaitsForTheOldChain(t *testing.T) {
	s := newScheduler()
	s.apply(mustConfig(t, "probes:\n  - {name: a, kind: icmp, timeout: 1s, targets: [198.51.100.1]}\n").Probes)
	old := s.slots["a\x00198.51.100.1"]
	old.running = true
	s.apply(mustConfig(t, "probes:\n  - {name: a, kind: icmp, timeout: 2s, targets: [198.51.100.1]}\n").Probes)
	s.apply(mustConfig(t, "probes:\n  - {name: a, kind: icmp, timeout: 3s, targets: [198.51.100.1]}\n").Probes)
	cur := s.slots["a\x00198.51.100.1"]
	if cur == old || !cur.running {
		t.Fatal("the replacement may start while the old chain runs")
	}
	s.done(old)
	if cur.running {
		t.Error("the old chain ended but its replacement stays blocked")
	}
}

// TestReaddedSlotWaitsForTheOldChain: a reload removes a target while its chain runs and a
// later one adds it back before that chain ends: the new slot waits for it too, so the
// target never has two chains at once.
func TestReaddedSlotWaitsForTheOldChain(t *testing.T) {
	s := newScheduler()
	withA := mustConfig(t, "probes:\n  - {name: a, kind: icmp, targets: [198.51.100.1]}\n  - {name: b, kind: icmp, targets: [198.51.100.2]}\n").Probes
	s.apply(withA)
	old := s.slots["a\x00198.51.100.1"]
	old.running = true
	s.apply(mustConfig(t, "probes:\n  - {name: b, kind: icmp, targets: [198.51.100.2]}\n").Probes)
	s.apply(withA)
	cur := s.slots["a\x00198.51.100.1"]
	if cur == old || !cur.running {
		t.Fatal("the target added back may start a chain while the removed one's runs")
	}
	s.done(old)
	if cur.running || len(s.gone) != 0 {
		t.Errorf("the old chain ended: the new slot must be free (running %v) and nothing kept (%d gone)", cur.running, len(s.gone))
	}
}

// TestSteadyLoadLetsTheBurstGo: after a burst brought workers up to the cap, a steady
// trickle of ticks is served by the most recently idle worker, and the others go (woken in
// turn, every one would stay, with its stack).
func TestSteadyLoadLetsTheBurstGo(t *testing.T) {
	defer func(l time.Duration) { workerLinger = l }(workerLinger)
	workerLinger = 40 * time.Millisecond
	cfg := manyTargets(t, 200, "1s")
	s, now := clocked(cfg)
	var wg sync.WaitGroup
	s.setWorkers(8, wg.Go, func(*queued) { time.Sleep(time.Millisecond) })
	*now = now.Add(2 * time.Second) // a burst: every slot due
	s.queueDue()
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		s.mu.Lock()
		n := len(s.idle)
		s.mu.Unlock()
		if n == 8 {
			break
		}
	}
	// Then one tick at a time, 3 ms apart: 8 workers woken in turn would each see one
	// every 24 ms, within their 40 ms linger.
	sl := s.heap[0]
	for range 60 {
		s.mu.Lock()
		sl.running = true
		s.queue = append(s.queue, &queued{s: sl, probe: sl.probe, due: *now})
		s.dispatch()
		s.mu.Unlock()
		for busy := true; busy; time.Sleep(100 * time.Microsecond) {
			s.mu.Lock()
			busy = sl.running
			s.mu.Unlock()
		}
		time.Sleep(3 * time.Millisecond)
	}
	s.mu.Lock()
	running := s.running
	s.mu.Unlock()
	if running > 2 {
		t.Errorf("%d of 8 workers stay for a load one serves", running)
	}
	s.stop()
	wg.Wait()
}

// TestStuckWorkers: a tick left in the queue longer than the limit says the workers are
// stuck (the daemon then stops feeding the watchdog); a fresh one does not.
func TestStuckWorkers(t *testing.T) {
	cfg := manyTargets(t, 1, "1s")
	s, now := clocked(cfg)
	*now = now.Add(time.Second)
	s.queueDue() // queued; no worker takes it
	if s.stuck(now.Add(30*time.Second), time.Minute) {
		t.Error("stuck after 30 s with a limit of a minute")
	}
	if !s.stuck(now.Add(2*time.Minute), time.Minute) {
		t.Error("not stuck after 2 minutes with a limit of a minute")
	}
	s.take()
	if s.stuck(now.Add(2*time.Minute), time.Minute) {
		t.Error("stuck with nothing queued")
	}
}

// concurrency counts the jobs running at once, and the most there were.
type concurrency struct{ busy, peak atomic.Int64 }

func (c *concurrency) enter() {
	n := c.busy.Add(1)
	for p := c.peak.Load(); n > p && !c.peak.CompareAndSwap(p, n); p = c.peak.Load() {
	}
}

func (c *concurrency) leave() { c.busy.Add(-1) }
