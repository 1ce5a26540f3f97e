package wire

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// attachment is the TC programs on one interface.
type attachment struct {
	detach func() error // removes them
	gone   func() error // releases what is left once the interface itself is gone
}

// TC attachment modes.
const (
	TCAuto   = ""       // TCX, falling back to legacy on kernels without it
	TCX      = "tcx"    // TCX links only
	TCLegacy = "legacy" // clsact + cls_bpf filters only
	TCOff    = "off"    // no TC programs: TCP timed by the tracepoints (timing_source kernel)
)

// Options configure an Observer.
type Options struct {
	TC string // TCAuto, TCX, TCLegacy or TCOff
	// NoTracepoints skips the TCP tracepoints, for runs that probe no TCP (their load
	// costs tens of milliseconds of CPU).
	NoTracepoints bool
	// MaxFlows sizes the flow and socket tables: the attempts (and echo destinations) in
	// flight at once. 0 means DefaultMaxFlows.
	MaxFlows int
	// OneShot: a run of seconds, which pays for every program it loads. The TCP
	// tracepoints are then loaded only for a handshake TC cannot watch (their load parses
	// the kernel's BTF: tens of milliseconds of CPU), and interface changes are not
	// followed.
	OneShot bool
}

// DefaultMaxFlows is the flow tables' size when Options.MaxFlows is 0.
const DefaultMaxFlows = 16384

// ErrFlowTableFull says a flow could not be registered because the flow table holds as many
// as it was sized for: the attempt is not wire-timed.
var ErrFlowTableFull = errors.New("reachd's eBPF flow table is full")

// FlowsFor sizes the flow tables for a front-end that runs concurrency attempts at once,
// each maybe for two families: room for twice that, and never less than a small floor.
func FlowsFor(concurrency int) int { return max(4*concurrency, 1024) }

// CheckTCMode says whether mode is one of the TC attachment modes.
func CheckTCMode(mode string) error {
	switch mode {
	case TCAuto, TCX, TCLegacy, TCOff:
		return nil
	}
	return fmt.Errorf("unknown TC mode %q: want %q, %q, %q or empty (TCX, falling back to legacy)", mode, TCX, TCLegacy, TCOff)
}

// Status says which parts of the observer work, and why a part does not.
type Status struct {
	TC          string // "tcx", "legacy", or "" when the TC programs did not load
	TCErr       error
	Tracepoints bool
	TraceErr    error
}

// Observer owns the loaded programs, their attachments and the ring-buffer reader, and
// hands each registered flow the events that belong to it. The TC programs (packets) and
// the TCP tracepoints (socket state) load independently: either one alone still serves.
type Observer struct {
	maps   *maps
	spec   *ebpf.CollectionSpec
	tc     *tcPair // nil when the TC programs did not load
	tcL3   *tcPair // for L3 devices: loaded at Open, or in a one-shot run on the first attach to one
	tracer *tracer // nil when the tracepoints did not load (or are not loaded yet)
	// lazyTrace: a one-shot run loads the tracepoints on first need (needTracer).
	lazyTrace bool
	traceOnce sync.Once
	rd        *ringbuf.Reader
	log       *slog.Logger
	status    Status

	mu      sync.Mutex
	tcMode  string
	links   map[int]attachment // by ifindex
	failed  map[int]error      // by ifindex: why attaching failed (not retried per probe)
	flows   map[uint64]*Flow   // by token
	closed  bool
	token   atomic.Uint64
	dropped atomic.Uint64
	full    atomic.Uint64 // registrations refused by a full flow table
	// keyMu orders the writes of the flows map: a closing flow's lookup and delete are
	// one step against a new flow's put of the same key. It also guards gate.
	keyMu sync.Mutex
	// gate counts the payload-watched flows per slot of the payload gate (their ports'
	// XOR); a slot is open in the kernel while its count is above zero.
	gate map[uint32]int

	// ringMu serializes draining the ring (see ring.go); rec is the drain's buffer.
	ringMu     sync.Mutex
	rec        ringbuf.Record
	ringWarned bool          // a read error was logged (under ringMu)
	drainStop  chan struct{} // closed by Close: ends the background drain
	drainDone  chan struct{}

	linkDone chan struct{}  // closed by Close: ends the link-update subscription
	linkWG   sync.WaitGroup // the goroutine that follows link updates
}

// Open loads the programs and starts reading events. It attaches no TC program yet:
// Attach does, per interface, when a probe needs it. It fails only when neither the TC
// programs nor the tracepoints can be used.
func Open(log *slog.Logger, opt Options) (*Observer, error) {
	if err := CheckTCMode(opt.TC); err != nil {
		return nil, err
	}
	// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; later ones ignore it.
	if err := rlimit.RemoveMemlock(); err != nil {
		log.Debug("raise RLIMIT_MEMLOCK", "err", err)
	}
	spec, err := loadTcWire()
	if err != nil {
		return nil, fmt.Errorf("read embedded eBPF objects: %w", err)
	}
	maxFlows := opt.MaxFlows
	if maxFlows <= 0 {
		maxFlows = DefaultMaxFlows
	}
	for _, name := range []string{"flows", "socks", "payload_flows"} {
		spec.Maps[name].MaxEntries = uint32(maxFlows)
	}
	m, err := loadMaps(spec)
	if err != nil {
		return nil, err
	}
	o := &Observer{spec: spec, maps: m, log: log, tcMode: opt.TC, links: map[int]attachment{}, failed: map[int]error{}, flows: map[uint64]*Flow{}, gate: map[uint32]int{}}
	if n, err := ReapStale(); err != nil {
		log.Warn("delete stale reachd TC filters", "err", err)
	} else if n > 0 {
		log.Info("deleted TC filters left by reachd processes that are gone", "filters", n)
	}
	if opt.TC == TCOff {
		o.status.TCErr = errors.New("TC programs turned off (REACHD_TC=off)")
	} else if o.tc, err = loadTC(spec, m, false); err != nil {
		o.status.TCErr = err
	} else {
		o.status.TC = opt.TC
		if opt.TC == TCAuto {
			o.status.TC = TCX // until an attach says the kernel has no TCX
		}
	}
	switch {
	case opt.NoTracepoints:
		o.status.TraceErr = errors.New("TCP tracepoints not needed")
	case opt.OneShot && o.tc != nil:
		o.lazyTrace = true // see needTracer
	default:
		o.loadTracer()
	}
	if o.tc == nil && o.tracer == nil {
		m.Close()
		if opt.NoTracepoints {
			return nil, o.status.TCErr
		}
		// Neither part loaded: both reasons (REACHD_TC=off leaves only the tracepoints').
		return nil, errors.Join(o.status.TCErr, o.status.TraceErr)
	}
	if err := o.openRing(); err != nil {
		o.closeProgs()
		return nil, fmt.Errorf("open ring buffer: %w", err)
	}
	if o.tc != nil && !opt.OneShot {
		// A long-running observer loads the pair for layer-3 links now, not on the first
		// such link: after its start a daemon holds no privilege to load programs.
		o.mu.Lock()
		if o.tcL3, err = loadTC(spec, m, true); err != nil {
			log.Warn("TC programs for layer-3 links (tun, WireGuard) unavailable: probes through them are not wire-timed", "err", err)
		}
		o.mu.Unlock()
		if err := o.followLinks(); err != nil {
			// Attachments still work; an interface that is deleted and re-created is then
			// attached afresh only under its new index, which it gets anyway.
			log.Warn("cannot follow interface changes", "err", err)
		}
	}
	return o, nil
}

// loadTracer loads and attaches the TCP tracepoints, recording why not if it cannot.
func (o *Observer) loadTracer() {
	t, err := loadTracer(o.maps)
	o.mu.Lock()
	defer o.mu.Unlock()
	if err != nil {
		o.status.TraceErr = err
		return
	}
	o.tracer, o.status.Tracepoints, o.status.TraceErr = t, true, nil
}

// needTracer loads the tracepoints on first need in a one-shot run, once.
func (o *Observer) needTracer() {
	o.traceOnce.Do(func() {
		if !o.lazyTrace {
			return
		}
		o.loadTracer()
		if err := o.Status().TraceErr; err != nil {
			o.log.Warn("TCP tracepoints unavailable: a handshake TC cannot watch is timed in userspace", "err", err)
		}
	})
}

// followLinks subscribes to the namespace's link updates: when an interface goes away its
// attachment is forgotten (the kernel removed it with the device), and when one appears or
// changes, an earlier failure to attach to it is forgotten too, so the next probe retries.
func (o *Observer) followLinks() error {
	ch := make(chan netlink.LinkUpdate, 64)
	o.linkDone = make(chan struct{})
	err := netlink.LinkSubscribeWithOptions(ch, o.linkDone, netlink.LinkSubscribeOptions{
		ErrorCallback: func(err error) { o.log.Debug("link updates", "err", err) },
	})
	if err != nil {
		close(o.linkDone)
		o.linkDone = nil
		return fmt.Errorf("subscribe to link updates: %w", err)
	}
	o.linkWG.Add(1)
	go func() {
		defer o.linkWG.Done()
		for u := range ch { // closed by the library once linkDone is closed
			idx := int(u.Index)
			switch u.Header.Type {
			case unix.RTM_DELLINK:
				o.Forget(idx)
			case unix.RTM_NEWLINK:
				o.mu.Lock()
				delete(o.failed, idx)
				o.mu.Unlock()
			}
		}
	}()
	return nil
}

// Attached returns the interfaces the TC programs are attached to, by index.
func (o *Observer) Attached() []int {
	o.mu.Lock()
	defer o.mu.Unlock()
	var idx []int
	for i := range o.links {
		idx = append(idx, i)
	}
	slices.Sort(idx)
	return idx
}

// Status reports which parts loaded.
func (o *Observer) Status() Status {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.status
}

func (o *Observer) closeProgs() {
	if o.tracer != nil {
		o.tracer.close()
	}
	o.tc.Close()
	o.tcL3.Close()
	o.maps.Close()
}

// Close detaches every TC attachment and releases the programs; flows still open get no
// more events.
func (o *Observer) Close() error {
	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		return nil
	}
	o.closed = true
	var errs []error
	for ifindex, a := range o.links {
		if err := a.detach(); err != nil {
			errs = append(errs, fmt.Errorf("detach from ifindex %d: %w", ifindex, err))
		}
	}
	o.links = nil
	o.mu.Unlock()
	if o.linkDone != nil {
		close(o.linkDone)
		o.linkWG.Wait()
	}
	o.closeRing()
	o.closeProgs()
	return errors.Join(errs...)
}

// HasTC says whether packets can be seen: the TC programs loaded.
func (o *Observer) HasTC() bool { return o.tc != nil }

// Attach puts the TC programs on ifindex's ingress and egress, once: a TCX link, or on
// kernels without TCX a legacy cls_bpf filter.
func (o *Observer) Attach(ifindex int) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return errors.New("observer closed")
	}
	if o.tc == nil {
		return fmt.Errorf("TC programs not loaded: %w", o.status.TCErr)
	}
	if _, ok := o.links[ifindex]; ok {
		return nil
	}
	if err, ok := o.failed[ifindex]; ok {
		return err
	}
	if err := o.attach(ifindex); err != nil {
		// Once per interface: probes through it time in the kernel or in userspace.
		o.log.Warn("cannot watch an interface's packets: probes through it are not wire-timed", "ifindex", ifindex, "err", err)
		o.failed[ifindex] = err
		return err
	}
	return nil
}

func (o *Observer) attach(ifindex int) error {
	l3, err := linkLayer(ifindex)
	if err != nil {
		return err
	}
	progs := o.tc
	if l3 {
		if o.tcL3 == nil { // a one-shot run's first L3 link, or the load at Open failed
			if o.tcL3, err = loadTC(o.spec, o.maps, true); err != nil {
				return err
			}
		}
		progs = o.tcL3
	}
	if o.tcMode != TCLegacy {
		detach, err := o.attachTCX(ifindex, progs)
		if err == nil {
			// The links' fds must still be closed when the device is gone.
			o.links[ifindex] = attachment{detach: detach, gone: detach}
			return nil
		}
		if o.tcMode == TCX || !errors.Is(err, ebpf.ErrNotSupported) {
			return err
		}
		o.log.Info("kernel has no TCX: attaching as legacy clsact/cls_bpf filters", "err", err)
		o.tcMode, o.status.TC = TCLegacy, TCLegacy
	}
	detach, err := legacyAttach(ifindex, progs.Ingress, progs.Egress)
	if err != nil {
		return err
	}
	// A deleted device took its filters with it: nothing to release then.
	o.links[ifindex] = attachment{detach: detach, gone: func() error { return nil }}
	return nil
}

func (o *Observer) attachTCX(ifindex int, progs *tcPair) (func() error, error) {
	var ls []link.Link
	closeAll := func() error {
		var errs []error
		for _, l := range ls {
			errs = append(errs, l.Close())
		}
		return errors.Join(errs...)
	}
	for _, a := range []struct {
		prog *ebpf.Program
		typ  ebpf.AttachType
		name string
	}{{progs.Ingress, ebpf.AttachTCXIngress, "ingress"}, {progs.Egress, ebpf.AttachTCXEgress, "egress"}} {
		// First in the chain: a program before ours that ends it (TCX_PASS, TCX_DROP)
		// would hide every probe packet from us, and ours always lets the chain go on.
		l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: a.prog, Attach: a.typ, Anchor: link.Head()})
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("attach tcx %s on ifindex %d: %w", a.name, ifindex, err)
		}
		ls = append(ls, l)
	}
	return closeAll, nil
}

// Forget drops what is known of ifindex's attachment after the interface went away (the
// kernel removed its TCX links and filters with it), so that a new interface that reuses
// the index is attached afresh.
func (o *Observer) Forget(ifindex int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return
	}
	if a, ok := o.links[ifindex]; ok {
		_ = a.gone()
		delete(o.links, ifindex)
	}
	delete(o.failed, ifindex)
}

// Lost returns how many events the kernel dropped because the ring buffer was full.
func (o *Observer) Lost() (uint64, error) {
	var perCPU []uint64
	if err := o.maps.LostEvents.Lookup(uint32(0), &perCPU); err != nil {
		return 0, fmt.Errorf("read lost-event counter: %w", err)
	}
	var n uint64
	for _, v := range perCPU {
		n += v
	}
	return n, nil
}

// monoBase pairs a CLOCK_MONOTONIC reading with Go's clock, whose monotonic part is the
// same clock read through the vDSO: Monotonic then costs no system call (it is taken for
// every packet a probe sends).
var monoBase, monoAt = func() (int64, time.Time) {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano(), time.Now()
}()

// Monotonic returns CLOCK_MONOTONIC in ns, the clock of bpf_ktime_get_ns().
func Monotonic() int64 { return monoBase + int64(time.Since(monoAt)) }

// TCStats is the kernel's accounting of the TC programs (while run-time statistics are
// enabled: ebpf.EnableStats or kernel.bpf_stats_enabled).
type TCStats struct {
	Runs    uint64
	Runtime time.Duration
}

// TCStats returns the run count and total run time of the ingress and egress programs
// (both pairs: Ethernet and layer-3 links).
func (o *Observer) TCStats() (ingress, egress TCStats, err error) {
	if o.tc == nil {
		return ingress, egress, errors.New("TC programs not loaded")
	}
	o.mu.Lock()
	pairs := []*tcPair{o.tc, o.tcL3}
	o.mu.Unlock()
	for _, pair := range pairs {
		if pair == nil {
			continue
		}
		for _, p := range []struct {
			prog *ebpf.Program
			out  *TCStats
		}{{pair.Ingress, &ingress}, {pair.Egress, &egress}} {
			st, err := p.prog.Stats()
			if err != nil {
				return ingress, egress, fmt.Errorf("read program stats: %w", err)
			}
			p.out.Runs += st.RunCount
			p.out.Runtime += st.Runtime
		}
	}
	return ingress, egress, nil
}
