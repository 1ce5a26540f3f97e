package wire

import "testing"

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
