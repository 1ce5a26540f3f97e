package wire

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// maxFlowEvents bounds what one flow keeps: a handshake needs a handful (SYNs, one answer);
// anything past this is a misbehaving peer and is dropped, not buffered without limit.
const maxFlowEvents = 64

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
	tcL3   *tcPair // for L3 devices: loaded on the first attach to one
	tracer *tracer // nil when the tracepoints did not load
	rd     *ringbuf.Reader
	log    *slog.Logger
	status Status

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
	// one step against a new flow's put of the same key.
	keyMu    sync.Mutex
	readDone chan struct{}

	// Each time the reader has handed out every record that was in the ring when a Flush
	// reached it, flushSeq goes up and flushed is closed and replaced (see sync).
	flushMu  sync.Mutex
	flushSeq uint64
	flushed  chan struct{}

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
	for _, name := range []string{"flows", "socks"} {
		spec.Maps[name].MaxEntries = uint32(maxFlows)
	}
	m, err := loadMaps(spec)
	if err != nil {
		return nil, err
	}
	o := &Observer{spec: spec, maps: m, log: log, tcMode: opt.TC, links: map[int]attachment{}, failed: map[int]error{}, flows: map[uint64]*Flow{}, readDone: make(chan struct{}), flushed: make(chan struct{})}
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
	if opt.NoTracepoints {
		o.status.TraceErr = errors.New("TCP tracepoints not needed")
	} else if o.tracer, err = loadTracer(m); err != nil {
		o.status.TraceErr = err
	} else {
		o.status.Tracepoints = true
	}
	if o.tc == nil && o.tracer == nil {
		m.Close()
		return nil, o.status.TCErr
	}
	if o.rd, err = ringbuf.NewReader(m.Events); err != nil {
		o.closeProgs()
		return nil, fmt.Errorf("open ring buffer: %w", err)
	}
	go o.read()
	if o.tc != nil {
		if err := o.followLinks(); err != nil {
			// Attachments still work; an interface that is deleted and re-created is then
			// attached afresh only under its new index, which it gets anyway.
			log.Warn("cannot follow interface changes", "err", err)
		}
	}
	return o, nil
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
	o.rd.Close() // ends read()
	<-o.readDone
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
		if o.tcL3 == nil {
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

func (o *Observer) read() {
	defer close(o.readDone)
	var rec ringbuf.Record
	for {
		if err := o.rd.ReadInto(&rec); err != nil {
			if errors.Is(err, ringbuf.ErrClosed) {
				return
			}
			if errors.Is(err, ringbuf.ErrFlushed) {
				o.flushMu.Lock()
				o.flushSeq++
				close(o.flushed)
				o.flushed = make(chan struct{})
				o.flushMu.Unlock()
				continue
			}
			o.log.Warn("read eBPF events", "err", err)
			continue
		}
		var e Event
		if len(rec.RawSample) < int(unsafe.Sizeof(e)) {
			continue
		}
		// The sample is the C struct, written by this host's kernel: a plain copy. (A
		// reflective decode cost more than the rest of handling an event.)
		e = *(*Event)(unsafe.Pointer(unsafe.SliceData(rec.RawSample)))
		o.mu.Lock()
		f := o.flows[e.Token]
		o.mu.Unlock()
		if f != nil {
			f.add(e)
		}
	}
}

// Flow is one registered probe flow and the events seen for it.
type Flow struct {
	o      *Observer
	key    FlowKey
	hasKey bool   // registered with the TC programs
	cookie uint64 // socket cookie registered for the tracepoints, 0 if none
	token  uint64
	mu     sync.Mutex
	events []Event
	// reserved: events kept beyond maxFlowEvents, for the multi-packet attempts using it.
	reserved int
}

// Register makes the TC programs report proto packets between local and remote. Call it
// after binding (so local is known) and before the first packet is sent.
//
// Without a valid local address the flow is registered for the tracepoints only (see
// AddSocket): the TC programs are not in use for it.
func (o *Observer) Register(proto uint8, local, remote netip.AddrPort) (*Flow, error) {
	f := &Flow{o: o, token: o.token.Add(1)}
	if local.IsValid() {
		k, err := Key(proto, local, remote)
		if err != nil {
			return nil, err
		}
		f.key, f.hasKey = k, true
	}
	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		return nil, errors.New("observer closed")
	}
	o.flows[f.token] = f
	o.mu.Unlock()
	if !f.hasKey {
		return f, nil
	}
	o.keyMu.Lock()
	err := o.maps.Flows.Put(f.key, f.token)
	o.keyMu.Unlock()
	if err != nil {
		o.mu.Lock()
		delete(o.flows, f.token)
		o.mu.Unlock()
		return nil, fmt.Errorf("register flow %s → %s: %w", local, remote, o.tableErr(o.maps.Flows, err))
	}
	return f, nil
}

// AddSocket registers the flow's socket by cookie (SO_COOKIE) for the TCP tracepoints.
func (f *Flow) AddSocket(cookie uint64) error {
	if f.o.tracer == nil {
		return errors.New("TCP tracepoints not loaded")
	}
	if err := f.o.maps.Socks.Put(cookie, f.token); err != nil {
		return fmt.Errorf("register socket cookie %d: %w", cookie, f.o.tableErr(f.o.maps.Socks, err))
	}
	f.cookie = cookie
	return nil
}

// Close unregisters the flow.
func (f *Flow) Close() {
	o := f.o
	o.mu.Lock()
	delete(o.flows, f.token)
	closed := o.closed
	o.mu.Unlock()
	if closed {
		return
	}
	// Only ours: a later flow with the same key has another token and its own entry.
	var tok uint64
	o.keyMu.Lock()
	if f.hasKey && o.maps.Flows.Lookup(f.key, &tok) == nil && tok == f.token {
		_ = o.maps.Flows.Delete(f.key)
	}
	o.keyMu.Unlock()
	if f.cookie != 0 {
		_ = o.maps.Socks.Delete(f.cookie)
	}
}

func (f *Flow) add(e Event) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.events) >= maxFlowEvents+f.reserved {
		// Counted, and reported at close: the attempts whose events these were fall
		// back to kernel or userspace timing.
		f.o.dropped.Add(1)
		return
	}
	f.events = append(f.events, e)
}

// Reserve makes the flow keep n more events than it would (a multi-packet attempt expects
// two per packet) until the returned function gives them back. Attempts that share a flow
// (echoes to one destination) each reserve their own.
func (f *Flow) Reserve(n int) (release func()) {
	f.mu.Lock()
	f.reserved += n
	f.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			f.mu.Lock()
			f.reserved -= n
			f.mu.Unlock()
		})
	}
}

// tableErr turns a full table's E2BIG into ErrFlowTableFull, counted.
func (o *Observer) tableErr(m *ebpf.Map, err error) error {
	if !errors.Is(err, unix.E2BIG) {
		return err
	}
	o.full.Add(1)
	return fmt.Errorf("%w (%d entries)", ErrFlowTableFull, m.MaxEntries())
}

// Refused returns how many registrations a full flow table refused.
func (o *Observer) Refused() uint64 { return o.full.Load() }

// Dropped returns how many events were dropped because their flow kept as many as it
// could (a peer answering far more than asked).
func (o *Observer) Dropped() uint64 { return o.dropped.Load() }

// Take removes the events that satisfy match and returns them, so that a flow shared by
// consecutive users (echoes to one destination) does not fill up with spent events.
func (f *Flow) Take(match func(Event) bool) []Event {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []Event
	kept := f.events[:0]
	for _, e := range f.events {
		if match(e) {
			out = append(out, e)
		} else {
			kept = append(kept, e)
		}
	}
	clear(f.events[len(kept):])
	f.events = kept
	return out
}

// Events returns a copy of the events seen so far.
func (f *Flow) Events() []Event {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Event(nil), f.events...)
}

// WaitFor returns the flow's events once one satisfies match, or once every event the
// kernel had written when WaitFor was called has been delivered (then match will not come:
// the packet was not seen), or at the deadline. The caller knows from its socket that the
// answer has happened; the event is in the ring already, but the reader goroutine that
// delivers it may not have run yet — under load, for tens of milliseconds.
func (f *Flow) WaitFor(deadline time.Time, match func(Event) bool) []Event {
	if evs := f.Events(); slices.ContainsFunc(evs, match) {
		return evs
	}
	f.o.sync(deadline)
	return f.Events()
}

// Sync returns the flow's events after every event already written by the kernel has
// been delivered (or at the deadline).
func (f *Flow) Sync(deadline time.Time) []Event {
	f.o.sync(deadline)
	return f.Events()
}

// sync waits until the reader has delivered every record that was in the ring when sync
// was called, and reports whether that happened before the deadline. A Flush makes the
// reader return what is in the ring and then ErrFlushed; flushes from several callers can
// merge into one ErrFlushed, and the first one seen may belong to a pass that had read the
// ring before our record was counted. A pass that starts after one we saw end cannot have,
// so sync waits for two.
func (o *Observer) sync(deadline time.Time) bool {
	for range 2 {
		o.flushMu.Lock()
		seq, ch := o.flushSeq, o.flushed
		o.flushMu.Unlock()
		if err := o.rd.Flush(); err != nil {
			return false
		}
		t := time.NewTimer(time.Until(deadline))
		for done := false; !done; {
			select {
			case <-ch:
				o.flushMu.Lock()
				done, ch = o.flushSeq > seq, o.flushed
				o.flushMu.Unlock()
			case <-t.C:
				return false
			case <-o.readDone:
				t.Stop()
				return false
			}
		}
		t.Stop()
	}
	return true
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

// TCStats returns the run count and total run time of the ingress and egress programs.
func (o *Observer) TCStats() (ingress, egress TCStats, err error) {
	if o.tc == nil {
		return ingress, egress, errors.New("TC programs not loaded")
	}
	for _, p := range []struct {
		prog *ebpf.Program
		out  *TCStats
	}{{o.tc.Ingress, &ingress}, {o.tc.Egress, &egress}} {
		st, err := p.prog.Stats()
		if err != nil {
			return ingress, egress, fmt.Errorf("read program stats: %w", err)
		}
		*p.out = TCStats{Runs: st.RunCount, Runtime: st.Runtime}
	}
	return ingress, egress, nil
}
