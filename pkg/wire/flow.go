package wire

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// maxFlowEvents bounds what one flow keeps: a handshake needs a handful (SYNs, one answer);
// anything past this is a misbehaving peer and is dropped, not buffered without limit.
const maxFlowEvents = 64

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
	payload  bool // WatchPayload registered it (under mu)
}

// Register makes the TC programs report proto packets between local and remote. Call it
// after binding (so local is known) and before the first packet is sent.
//
// Without a valid local address the flow is registered for the tracepoints only (see
// AddSocket): the TC programs are not in use for it.
func (o *Observer) Register(proto uint8, local, remote netip.AddrPort) (*Flow, error) {
	return o.register(proto, local, remote, ebpf.UpdateAny)
}

// ErrFlowTaken is RegisterNew's error when another flow has the key.
var ErrFlowTaken = errors.New("the flow is registered already")

// RegisterNew is Register for a flow whose key another user may hold (an echo identifier
// picked at random): it fails with ErrFlowTaken rather than take the key over.
func (o *Observer) RegisterNew(proto uint8, local, remote netip.AddrPort) (*Flow, error) {
	return o.register(proto, local, remote, ebpf.UpdateNoExist)
}

func (o *Observer) register(proto uint8, local, remote netip.AddrPort, flags ebpf.MapUpdateFlags) (*Flow, error) {
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
	err := o.maps.Flows.Update(&f.key, &f.token, flags)
	o.keyMu.Unlock()
	if err != nil {
		o.mu.Lock()
		delete(o.flows, f.token)
		o.mu.Unlock()
		if errors.Is(err, ebpf.ErrKeyExist) {
			return nil, ErrFlowTaken
		}
		return nil, fmt.Errorf("register flow %s → %s: %w", local, remote, o.tableErr(o.maps.Flows, err))
	}
	return f, nil
}

// Roomy says whether the flow table is less than half full, so that a registration may be
// kept between uses without crowding out those of attempts in flight.
func (o *Observer) Roomy() bool {
	o.mu.Lock()
	n := len(o.flows)
	o.mu.Unlock()
	return n < int(o.maps.Flows.MaxEntries())/2
}

// AddSocket registers the flow's socket by cookie (SO_COOKIE) for the TCP tracepoints. In
// a one-shot run a flow TC watches goes without them, and the first that TC cannot watch
// loads them.
func (f *Flow) AddSocket(cookie uint64) error {
	if !f.hasKey {
		f.o.needTracer()
	}
	f.o.mu.Lock()
	t := f.o.tracer
	f.o.mu.Unlock()
	if t == nil {
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
	f.mu.Lock()
	payload := f.payload
	f.payload = false
	f.mu.Unlock()
	o.keyMu.Lock()
	if f.hasKey && o.maps.Flows.Lookup(&f.key, &tok) == nil && tok == f.token {
		_ = o.maps.Flows.Delete(&f.key)
	}
	if payload {
		f.unwatchPayload()
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

// WaitFor returns the flow's events once one satisfies match, or else after every event the
// kernel had written when WaitFor was called has been delivered (then match will not come:
// the packet was not seen). The caller knows from its socket that the answer has happened,
// so its event is in the ring already.
func (f *Flow) WaitFor(match func(Event) bool) []Event {
	if evs := f.Events(); slices.ContainsFunc(evs, match) {
		return evs
	}
	f.o.drain()
	return f.Events()
}

// Discard drops the flow's events, those already delivered and those still in the ring:
// a flow kept between users (an echo destination between ticks) starts each use empty.
func (f *Flow) Discard() {
	f.o.drain()
	f.mu.Lock()
	clear(f.events)
	f.events = f.events[:0]
	f.mu.Unlock()
}

// Sync returns the flow's events after every event already written by the kernel has
// been delivered.
func (f *Flow) Sync() []Event {
	f.o.drain()
	return f.Events()
}

// WatchPayload makes the TC programs report the flow's TCP segments that carry payload, up
// to tx leaving and rx arriving (the budget bounds what a large response costs the ring;
// the flow keeps that many events more). Close ends it.
func (f *Flow) WatchPayload(tx, rx uint32) error {
	if !f.hasKey || f.key.Proto != ProtoTCP {
		return errors.New("payload is watched at TC, for TCP flows it watches")
	}
	o := f.o
	w := tcWirePayloadWatch{Token: f.token, MaxTx: tx, MaxRx: rx}
	slot := f.gateSlot()
	o.keyMu.Lock()
	defer o.keyMu.Unlock()
	if err := o.maps.PayloadFlows.Put(&f.key, &w); err != nil {
		return fmt.Errorf("watch payload: %w", o.tableErr(o.maps.PayloadFlows, err))
	}
	if o.gate[slot]++; o.gate[slot] == 1 {
		err := o.maps.setGate(int(slot), true)
		if err == nil && len(o.gate) == 1 {
			err = o.maps.setGate(-1, true)
		}
		if err != nil {
			if o.gate[slot]--; o.gate[slot] == 0 {
				delete(o.gate, slot)
			}
			_ = o.maps.PayloadFlows.Delete(&f.key)
			return fmt.Errorf("open payload gate: %w", err)
		}
	}
	f.mu.Lock()
	f.payload = true
	f.reserved += int(tx + rx)
	f.mu.Unlock()
	return nil
}

// gateSlot is the flow's slot in the payload gate: the XOR of its ports as the packet
// carries them (network order), which is the same both ways.
func (f *Flow) gateSlot() uint32 { return uint32(f.key.Lport ^ f.key.Rport) }

// unwatchPayload ends WatchPayload, under keyMu.
func (f *Flow) unwatchPayload() {
	o := f.o
	var w tcWirePayloadWatch
	if o.maps.PayloadFlows.Lookup(&f.key, &w) == nil && w.Token == f.token {
		_ = o.maps.PayloadFlows.Delete(&f.key)
	}
	slot := f.gateSlot()
	if o.gate[slot]--; o.gate[slot] <= 0 {
		delete(o.gate, slot)
		_ = o.maps.setGate(int(slot), false)
		if len(o.gate) == 0 {
			_ = o.maps.setGate(-1, false)
		}
	}
}
