package wire

import (
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"testing"
)

// TestFlowReserveSums: attempts sharing a flow each reserve room for their own events; what
// no reservation covers is dropped and counted, never silently.
func TestFlowReserveSums(t *testing.T) {
	o := &Observer{}
	f := &Flow{o: o}
	r1, r2 := f.Reserve(40), f.Reserve(40)
	for range maxFlowEvents + 80 {
		f.add(Event{})
	}
	if n := len(f.Events()); n != maxFlowEvents+80 || o.Dropped() != 0 {
		t.Fatalf("kept %d, dropped %d: two reservations of 40 must add up", n, o.Dropped())
	}
	r1()
	r1() // a second release gives nothing back twice
	f.Take(func(Event) bool { return true })
	for range maxFlowEvents + 80 {
		f.add(Event{})
	}
	if n := len(f.Events()); n != maxFlowEvents+40 || o.Dropped() != 40 {
		t.Fatalf("kept %d, dropped %d after one release; want %d and 40", n, o.Dropped(), maxFlowEvents+40)
	}
	r2()
}

// TestFlowTableFullFailsVisibly: a registration past the table's size fails, with
// ErrFlowTableFull, and is counted; the flows already registered stay (an LRU table
// silently evicted the oldest live flow instead).
func TestFlowTableFullFailsVisibly(t *testing.T) {
	o := openObserver(t)
	local, remote := netip.MustParseAddr("198.51.100.2"), netip.MustParseAddr("203.0.113.2")
	var flows []*Flow
	defer func() {
		for _, f := range flows {
			f.Close()
		}
	}()
	size := int(o.maps.Flows.MaxEntries())
	for i := range size {
		f, err := o.Register(ProtoUDP, ap(local, uint16(1024+i%60000)), ap(remote, uint16(1+i/60000)))
		if err != nil {
			t.Fatalf("flow %d of %d: %v", i+1, size, err)
		}
		flows = append(flows, f)
	}
	f, err := o.Register(ProtoUDP, ap(local, 9), ap(remote, 9))
	if err == nil {
		f.Close()
		t.Fatalf("the flow table accepted flow %d with room for %d", size+1, size)
	}
	if !errors.Is(err, ErrFlowTableFull) || o.Refused() != 1 {
		t.Errorf("err %v, refused %d: want ErrFlowTableFull, counted once", err, o.Refused())
	}
	var tok uint64
	if err := o.maps.Flows.Lookup(flows[0].key, &tok); err != nil || tok != flows[0].token {
		t.Errorf("the first flow is gone from the table: %v", err)
	}
}

// TestRegisterNew: a key another flow holds is not taken over (Register would: the other
// flow would stop being watched), and is free again once that flow closes.
func TestRegisterNew(t *testing.T) {
	o := openObserver(t)
	local, remote := ap(netip.MustParseAddr("198.51.100.2"), 4242), ap(netip.MustParseAddr("203.0.113.2"), 0)
	a, err := o.Register(ProtoICMP, local, remote)
	if err != nil {
		t.Fatal(err)
	}
	if f, err := o.RegisterNew(ProtoICMP, local, remote); !errors.Is(err, ErrFlowTaken) {
		if f != nil {
			f.Close()
		}
		t.Fatalf("RegisterNew on a held key: %v", err)
	}
	var tok uint64
	if err := o.maps.Flows.Lookup(a.key, &tok); err != nil || tok != a.token {
		t.Fatalf("the holder lost its key: %v", err)
	}
	a.Close()
	b, err := o.RegisterNew(ProtoICMP, local, remote)
	if err != nil {
		t.Fatalf("RegisterNew on a free key: %v", err)
	}
	b.Close()
}

// TestPayloadGateCounts: flows whose ports share a gate slot keep it open until the last of
// them closes, and a closed flow's watch is gone.
func TestPayloadGateCounts(t *testing.T) {
	o := openObserver(t)
	local, remote := netip.MustParseAddr("198.51.100.2"), netip.MustParseAddr("203.0.113.2")
	// Two flows whose ports XOR alike: (p, q) and (p^x, q^x).
	a, err := o.Register(ProtoTCP, ap(local, 40000), ap(remote, 443))
	if err != nil {
		t.Fatal(err)
	}
	b, err := o.Register(ProtoTCP, ap(local, 40000^0x0f0f), ap(remote, 443^0x0f0f))
	if err != nil {
		t.Fatal(err)
	}
	slot := a.gateSlot()
	if b.gateSlot() != slot {
		t.Fatalf("slots %d and %d: the test wants them equal", slot, b.gateSlot())
	}
	gate := func() uint8 {
		b := []byte{0}
		if _, err := o.maps.gate.ReadAt(b, o.maps.gateOff+int64(slot)); err != nil {
			t.Fatal(err)
		}
		return b[0]
	}
	for _, f := range []*Flow{a, b} {
		if err := f.WatchPayload(4, 8); err != nil {
			t.Fatal(err)
		}
	}
	a.Close()
	var w tcWirePayloadWatch
	if gate() != 1 || o.maps.PayloadFlows.Lookup(&a.key, &w) == nil {
		t.Fatalf("after the first close: gate %d, its watch still there: %v", gate(), o.maps.PayloadFlows.Lookup(&a.key, &w) == nil)
	}
	b.Close()
	if gate() != 0 || len(o.gate) != 0 {
		t.Fatalf("after the last close: gate %d, counts %v", gate(), o.gate)
	}
}

// openObserver opens an observer without TC programs (its maps and tracepoints) for the
// test.
func openObserver(t *testing.T) *Observer {
	t.Helper()
	requireBPF(t)
	o, err := Open(slog.New(slog.NewTextHandler(os.Stderr, nil)), Options{TC: TCOff})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.Close() })
	return o
}
