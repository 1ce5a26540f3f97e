package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"
)

// maxFlowEvents bounds what one flow keeps: a handshake needs a handful (SYNs, one answer);
// anything past this is a misbehaving peer and is dropped, not buffered without limit.
const maxFlowEvents = 64

// Observer owns the loaded programs, their TCX links and the ring-buffer reader, and hands
// each registered flow the events that belong to it.
type Observer struct {
	objs *Objects
	rd   *ringbuf.Reader
	log  *slog.Logger

	mu       sync.Mutex
	links    map[int][]link.Link // by ifindex: ingress and egress
	flows    map[uint64]*Flow    // by token
	closed   bool
	token    atomic.Uint64
	readDone chan struct{}
}

// Open loads the programs and starts reading events. It attaches nothing yet: Attach does,
// per interface, when a probe needs it.
func Open(log *slog.Logger) (*Observer, error) {
	objs, err := LoadObjects()
	if err != nil {
		return nil, err
	}
	rd, err := ringbuf.NewReader(objs.Events)
	if err != nil {
		objs.Close()
		return nil, fmt.Errorf("open ring buffer: %w", err)
	}
	o := &Observer{objs: objs, rd: rd, log: log, links: map[int][]link.Link{}, flows: map[uint64]*Flow{}, readDone: make(chan struct{})}
	go o.read()
	return o, nil
}

// Close detaches every link and releases the programs; flows still open get no more events.
func (o *Observer) Close() error {
	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		return nil
	}
	o.closed = true
	var errs []error
	for ifindex, ls := range o.links {
		for _, l := range ls {
			if err := l.Close(); err != nil {
				errs = append(errs, fmt.Errorf("detach from ifindex %d: %w", ifindex, err))
			}
		}
	}
	o.links = nil
	o.mu.Unlock()
	o.rd.Close() // ends read()
	<-o.readDone
	o.objs.Close()
	return errors.Join(errs...)
}

// Attach puts the TC programs on ifindex's ingress and egress with TCX links, once.
func (o *Observer) Attach(ifindex int) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return errors.New("observer closed")
	}
	if _, ok := o.links[ifindex]; ok {
		return nil
	}
	var ls []link.Link
	for _, a := range []struct {
		prog *ebpf.Program
		typ  ebpf.AttachType
		name string
	}{{o.objs.ReachdTcIngress, ebpf.AttachTCXIngress, "ingress"}, {o.objs.ReachdTcEgress, ebpf.AttachTCXEgress, "egress"}} {
		l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: a.prog, Attach: a.typ})
		if err != nil {
			for _, l := range ls {
				l.Close()
			}
			return fmt.Errorf("attach tcx %s on ifindex %d: %w", a.name, ifindex, err)
		}
		ls = append(ls, l)
	}
	o.links[ifindex] = ls
	return nil
}

// Lost returns how many events the kernel dropped because the ring buffer was full.
func (o *Observer) Lost() (uint64, error) {
	var perCPU []uint64
	if err := o.objs.LostEvents.Lookup(uint32(0), &perCPU); err != nil {
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
			o.log.Warn("read eBPF events", "err", err)
			continue
		}
		var e Event
		if len(rec.RawSample) < int(unsafe.Sizeof(e)) {
			continue
		}
		if err := binary.Read(bytes.NewReader(rec.RawSample), binary.NativeEndian, &e); err != nil {
			continue
		}
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
	token  uint64
	mu     sync.Mutex
	events []Event
	notify chan struct{} // closed and replaced on each event
}

// Register makes the TC programs report proto packets between local and remote. Call it
// after binding (so local is known) and before the first packet is sent.
func (o *Observer) Register(proto uint8, local, remote netip.AddrPort) (*Flow, error) {
	k, err := Key(proto, local, remote)
	if err != nil {
		return nil, err
	}
	f := &Flow{o: o, key: k, token: o.token.Add(1), notify: make(chan struct{})}
	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		return nil, errors.New("observer closed")
	}
	o.flows[f.token] = f
	o.mu.Unlock()
	if err := o.objs.Flows.Put(k, f.token); err != nil {
		o.mu.Lock()
		delete(o.flows, f.token)
		o.mu.Unlock()
		return nil, fmt.Errorf("register flow %s → %s: %w", local, remote, err)
	}
	return f, nil
}

// Close unregisters the flow.
func (f *Flow) Close() {
	o := f.o
	o.mu.Lock()
	delete(o.flows, f.token)
	closed := o.closed
	o.mu.Unlock()
	if !closed {
		// Only ours: a later flow with the same key has another token and its own entry.
		var tok uint64
		if err := o.objs.Flows.Lookup(f.key, &tok); err == nil && tok == f.token {
			_ = o.objs.Flows.Delete(f.key)
		}
	}
}

func (f *Flow) add(e Event) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.events) >= maxFlowEvents {
		return
	}
	f.events = append(f.events, e)
	close(f.notify)
	f.notify = make(chan struct{})
}

// Events returns a copy of the events seen so far.
func (f *Flow) Events() []Event {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Event(nil), f.events...)
}

// WaitFor waits until an event satisfies match or the deadline passes, and returns the
// events seen by then. Used to let the ring-buffer reader catch up with what the socket
// already told us (the SYN-ACK is in the ring before connect() returns to us).
func (f *Flow) WaitFor(deadline time.Time, match func(Event) bool) []Event {
	for {
		f.mu.Lock()
		evs := append([]Event(nil), f.events...)
		ch := f.notify
		f.mu.Unlock()
		for _, e := range evs {
			if match(e) {
				return evs
			}
		}
		wait := time.Until(deadline)
		if wait <= 0 {
			return evs
		}
		t := time.NewTimer(wait)
		select {
		case <-ch:
			t.Stop()
		case <-t.C:
			return f.Events()
		}
	}
}

// Monotonic returns CLOCK_MONOTONIC in ns, the clock of bpf_ktime_get_ns().
func Monotonic() int64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}
