package daemon

import (
	"container/heap"
	"context"
	"hash/fnv"
	"slices"
	"sync"
	"time"

	"reachd/pkg/config"
	"reachd/pkg/target"
)

// slot is one (probe, target) the scheduler runs: its phase, its next tick, whether its
// attempt chain is in flight, and what its legs said last.
type slot struct {
	key    string // probe name, NUL, target as written
	probe  *config.Probe
	target target.Target
	due    time.Time // next tick (monotonic)
	// running: a chain is queued or in flight; a tick that finds it so is skipped.
	running bool
	removed bool // a reload took it out; its chain in flight still writes its verdicts
	// successor replaced it in a reload while its chain ran: the successor's ticks are
	// skipped until that chain ends (one chain in flight per target).
	successor *slot
	legs      []*leg
	index     int // in the heap; -1 when out of it
}

// phase is where in its interval a slot's ticks fall: spread over the interval by a hash
// of the probe's name and target, so that 10,000 targets do not start together, and the
// same config gives the same phases after a restart or a reload.
func phase(key string, interval time.Duration) time.Duration {
	h := fnv.New64a()
	h.Write([]byte(key))
	return time.Duration(h.Sum64() % uint64(interval))
}

// firstTick is the slot's first tick after now: the next instant whose wall-clock time is
// its phase past a multiple of the interval. Later ticks add the interval to it on the
// monotonic clock, so they do not drift.
func firstTick(now time.Time, key string, interval time.Duration) time.Time {
	off := phase(key, interval)
	wall := time.Duration(now.UnixNano())
	since := (wall - off) % interval
	if since < 0 {
		since += interval
	}
	return now.Add(interval - since)
}

// slotHeap orders slots by their next tick.
type slotHeap []*slot

func (h slotHeap) Len() int           { return len(h) }
func (h slotHeap) Less(i, j int) bool { return h[i].due.Before(h[j].due) }
func (h slotHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i]; h[i].index = i; h[j].index = j }
func (h *slotHeap) Push(x any)        { s := x.(*slot); s.index = len(*h); *h = append(*h, s) }
func (h *slotHeap) Pop() any {
	old := *h
	s := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	s.index = -1
	return s
}

// scheduler ticks slots on their intervals and hands due ones to workers, at most cap at
// once (the concurrency cap). Its loop never waits for a worker: a due slot is queued, and
// the time it waits in the queue is its lateness. Workers come as the queue needs them and
// go after idling for workerLinger, so their stacks (a probe's calls grow one to tens of
// KiB) cost what the probes in flight need, not what the cap allows.
type scheduler struct {
	mu    sync.Mutex
	slots map[string]*slot
	// gone: slots a reload removed while their chain ran, by key, until it ends: a later
	// reload that adds the target again waits for that chain (see successor).
	gone  map[string]*slot
	heap  slotHeap
	queue []*queued
	wake  chan struct{}
	// stopping: no more ticks are queued, and queued ones are dropped.
	stopping bool
	stopped  chan struct{} // closed by stop

	// cap bounds the workers; spawn starts one (setWorkers).
	cap     int
	spawn   func()
	running int
	// idle are the workers waiting in next, the most recent last: a tick wakes the most
	// recent, so that under a steady load the others idle long enough to go (woken in
	// turn, every worker of a burst would stay).
	idle []*worker

	// tick is called from the loop on each pass (the watchdog's ping); nil: none.
	tick func()
	// tickEvery bounds the loop's sleep, so that tick runs at least this often.
	tickEvery time.Duration
	// skipped counts ticks that found their slot's chain still running, by probe.
	skipped map[string]uint64
	now     func() time.Time
}

// queued is a slot's tick waiting for a worker.
type queued struct {
	s     *slot
	probe *config.Probe // the slot's probe when queued (a reload may replace it meanwhile)
	due   time.Time
}

func newScheduler() *scheduler {
	return &scheduler{slots: map[string]*slot{}, gone: map[string]*slot{}, wake: make(chan struct{}, 1), skipped: map[string]uint64{},
		tickEvery: time.Second, now: time.Now, stopped: make(chan struct{})}
}

// workerLinger is how long a worker with nothing to do waits for more before it goes.
var workerLinger = 2 * time.Second

// setWorkers makes the scheduler start workers, at most cap at once, each a goroutine that
// start runs (a WaitGroup's Go) and that runs queued ticks with run.
func (s *scheduler) setWorkers(cap int, start func(func()), run func(*queued)) {
	s.mu.Lock()
	s.cap, s.spawn = cap, func() { start(func() { s.work(run) }) }
	s.mu.Unlock()
}

// work is one worker: it runs queued ticks until it idles too long or the scheduler stops.
func (s *scheduler) work(run func(*queued)) {
	w := newWorker()
	defer w.idle.Stop()
	for q := s.next(w); q != nil; q = s.next(w) {
		run(q)
		s.done(q.s)
	}
}

// apply makes the scheduler run cfg: slots whose probe and target are unchanged keep their
// phase and state; removed ones leave the heap (a chain in flight still ends); new ones
// start at their phase. It returns the slots removed and added.
func (s *scheduler) apply(probes []*config.Probe) (removed, added int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	next := make(map[string]*slot, len(s.slots))
	for _, p := range probes {
		for _, t := range p.Targets {
			key := p.Name + "\x00" + t.Raw
			old, ok := s.slots[key]
			if ok && old.probe.Settings == p.Settings {
				old.probe = p
				next[key] = old
				continue
			}
			sl := &slot{key: key, probe: p, target: t, due: firstTick(now, key, p.Interval), index: -1}
			if !ok {
				old, ok = s.gone[key]
				delete(s.gone, key)
			}
			if ok && old.running {
				sl.running, old.successor = true, sl
			}
			next[key] = sl
			added++
		}
	}
	for key, old := range s.slots {
		if next[key] != old {
			if next[key] == nil && old.running {
				s.gone[key] = old
			}
			old.removed = true
			if old.index >= 0 {
				heap.Remove(&s.heap, old.index)
			}
			removed++
		}
	}
	for _, sl := range next {
		if sl.index < 0 && !sl.removed {
			heap.Push(&s.heap, sl)
		}
	}
	s.slots = next
	names := map[string]bool{}
	for _, p := range probes {
		names[p.Name] = true
	}
	for name := range s.skipped { // a removed probe's series go
		if !names[name] {
			delete(s.skipped, name)
		}
	}
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return removed, added
}

// loop runs until ctx is done, queueing due slots.
func (s *scheduler) loop(ctx context.Context) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-s.wake:
		}
		if s.tick != nil {
			s.tick()
		}
		wait := s.queueDue()
		timer.Reset(min(wait, s.tickEvery))
	}
}

// tickAhead is how early a tick may start so that it runs with others due about then: a
// thousand targets a second spread over the interval would otherwise wake reachd (and the
// machine, and the kernel's packet path) a thousand times a second, a tick at a time.
// Woken at most every tickAhead, the ticks of that span go out together: CPU per echo at
// 1,000 targets a second fell from 150 to about 90 µs with 10 ms (71 µs with 50 ms, but
// each batch's chains are in memory at once: 10,000 targets peaked 4 MiB higher at 20 ms
// than without batches). A tick is never late for it, and a probe starts at most a tenth
// of its interval early.
const tickAhead = 10 * time.Millisecond

// early is how long before its tick a slot may be queued (see tickAhead).
func early(sl *slot) time.Duration { return min(tickAhead, sl.probe.Interval/10) }

// queueDue queues every slot whose tick has come, or comes within its early allowance of
// now, and says how long until the next one is due.
func (s *scheduler) queueDue() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	var held []*slot
	for len(s.heap) > 0 && !s.heap[0].due.After(now.Add(early(s.heap[0]))) {
		sl := s.heap[0]
		due := sl.due
		if sl.running && due.After(now) {
			// Early, and its chain still runs: whether its tick finds the chain running
			// is for the tick to say, when it is due.
			held = append(held, heap.Pop(&s.heap).(*slot))
			continue
		}
		if sl.running {
			s.skipped[sl.probe.Name]++
		} else {
			sl.running = true
			s.queue = append(s.queue, &queued{s: sl, probe: sl.probe, due: due})
			s.dispatch()
		}
		sl.due = due.Add(sl.probe.Interval)
		if behind := now.Sub(sl.due); behind > 0 {
			// reachd did not run for more than an interval (SIGSTOP, a stalled loop):
			// the ticks it missed are skipped and counted, not run in a burst.
			n := behind/sl.probe.Interval + 1
			s.skipped[sl.probe.Name] += uint64(n)
			sl.due = sl.due.Add(n * sl.probe.Interval)
		}
		heap.Fix(&s.heap, 0)
	}
	for _, sl := range held {
		heap.Push(&s.heap, sl)
	}
	if len(s.heap) == 0 {
		return time.Hour
	}
	return s.heap[0].due.Sub(now)
}

// dispatch gets a worker for a queued tick: an idle one, or a new one under the cap
// (else one that is busy takes it when done). Called with mu held.
func (s *scheduler) dispatch() {
	switch n := len(s.idle); {
	case n > 0:
		w := s.idle[n-1]
		s.idle[n-1] = nil
		s.idle = s.idle[:n-1]
		w.wake <- struct{}{} // buffered: popped once, woken once
	case s.running < s.cap && s.spawn != nil:
		s.running++
		s.spawn()
	}
}

// worker is one worker's means of waiting in next.
type worker struct {
	wake chan struct{}
	idle *time.Timer
}

func newWorker() *worker {
	w := &worker{wake: make(chan struct{}, 1), idle: time.NewTimer(workerLinger)}
	w.idle.Stop()
	return w
}

// take returns the oldest queued tick, or nil.
func (s *scheduler) take() *queued {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.takeLocked()
}

func (s *scheduler) takeLocked() *queued {
	for len(s.queue) > 0 && !s.stopping {
		q := s.queue[0]
		s.queue[0] = nil
		s.queue = s.queue[1:]
		if !q.s.removed { // a reload took it out while it waited
			return q
		}
		s.doneLocked(q.s)
	}
	return nil
}

// next returns the next queued tick for worker w, waiting up to workerLinger for one; nil
// tells the worker to go (idle too long, or the scheduler stopped).
func (s *scheduler) next(w *worker) *queued {
	for {
		s.mu.Lock()
		if q := s.takeLocked(); q != nil || s.stopping {
			if q == nil {
				s.running--
			}
			s.mu.Unlock()
			return q
		}
		s.idle = append(s.idle, w)
		s.mu.Unlock()
		w.idle.Reset(workerLinger)
		select {
		case <-w.wake:
			w.idle.Stop()
		case <-s.stopped:
			w.idle.Stop()
		case <-w.idle.C:
			s.mu.Lock()
			if i := slices.Index(s.idle, w); i >= 0 {
				// Still idle: no queued tick counts on it (dispatch gave each a popped
				// or a new worker, or a busy one takes it), so it may go even now.
				s.idle = slices.Delete(s.idle, i, i+1)
				s.running--
				s.mu.Unlock()
				return nil
			}
			<-w.wake // dispatch popped it as the timer fired: the wake is sent
			s.mu.Unlock()
		}
	}
}

// done marks a slot's chain ended.
func (s *scheduler) done(sl *slot) {
	s.mu.Lock()
	s.doneLocked(sl)
	s.mu.Unlock()
}

func (s *scheduler) doneLocked(sl *slot) {
	// Its replacements (a reload, or several) waited for this chain to end.
	for next := sl; next != nil; next = next.successor {
		next.running = false
		if s.gone[next.key] == next {
			delete(s.gone, next.key)
		}
	}
}

// stop ends the queueing: workers return once their current chain ends, and ticks still
// queued are dropped (they never started, so they have no verdict to lose).
func (s *scheduler) stop() (dropped int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopping = true
	dropped = len(s.queue)
	for _, q := range s.queue {
		q.s.running = false
	}
	s.queue = nil
	close(s.stopped)
	return dropped
}

// stuck says whether the oldest queued tick has waited longer than limit: the workers
// (all of them, since one would have taken it) are not coming back.
func (s *scheduler) stuck(now time.Time, limit time.Duration) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.queue) > 0 && now.Sub(s.queue[0].due) > limit
}

// queueLen is how many ticks wait for a worker.
func (s *scheduler) queueLen() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.queue)
}
