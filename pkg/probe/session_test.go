package probe

import (
	"testing"

	"reachd/pkg/wire"
)

// TestRecordFraming: where the record holding each read's first byte starts, over reads
// that split headers and bodies anywhere.
func TestRecordFraming(t *testing.T) {
	rec := func(n int) []byte { // a record of n body bytes
		return append([]byte{23, 3, 3, byte(n >> 8), byte(n)}, make([]byte, n)...)
	}
	var stream []byte
	stream = append(stream, rec(10)...)  // 0..15
	stream = append(stream, rec(300)...) // 15..320
	stream = append(stream, rec(2)...)   // 320..327
	var r records
	for _, c := range []struct {
		from, to   int
		start, end int64
	}{
		{0, 3, 0, -1},      // the first header, split: its length not known yet
		{3, 17, 0, 15},     // its rest and the next header's first 2 bytes
		{17, 100, 15, 320}, // inside the second record's header, then its body
		{100, 320, 15, 320},
		{320, 321, 320, -1},
		{321, 327, 320, 327},
	} {
		if start, end := r.feed(int64(c.from), stream[c.from:c.to]); start != c.start || end != c.end {
			t.Errorf("read [%d, %d): record [%d, %d), want [%d, %d)", c.from, c.to, start, end, c.start, c.end)
		}
	}
}

// TestCarrier: the segment that carried a byte, by sequence number across the 2^32 wrap,
// and a read's bytes placed only when their segments came together.
func TestCarrier(t *testing.T) {
	var isn uint32 = 0xffff_fff0 // the stream's first byte is at 0xfffffff1; offset 15 wraps to 0
	seg := func(seq uint32, n uint32, ts uint64) wire.Event {
		return wire.Event{Kind: uint8(wire.EvDataRx), Seq: seq, Len: n, TsNs: ts}
	}
	evs := []wire.Event{
		seg(isn+1, 10, 1_000_000),   // offsets 0..9
		seg(isn+11, 100, 1_005_000), // offsets 10..109, across the wrap
		seg(isn+111, 50, 1_050_000), // offsets 110..159, 45 µs later
		{Kind: uint8(wire.EvDataTx), Seq: isn + 200, Len: 5, TsNs: 7},
	}
	for _, c := range []struct {
		off, span int64
		want      uint64
		ok        bool
	}{
		{0, 0, 1_000_000, true},
		{20, 0, 1_005_000, true},  // past the wrap
		{109, 0, 1_005_000, true}, // the segment's last byte
		{110, 0, 1_050_000, true},
		{160, 0, 0, false},       // not seen
		{-1, 0, 0, false},        // not known
		{5, 50, 1_000_000, true}, // a read over the first two segments, 5 µs apart
		{5, 120, 0, false},       // and the third, 50 µs after the first
		{110, 10, 1_050_000, true},
	} {
		got, ok := carrier(evs, wire.EvDataRx, isn, c.off, c.span)
		if got != c.want || ok != c.ok {
			t.Errorf("offset %d span %d: %d %v, want %d %v", c.off, c.span, got, ok, c.want, c.ok)
		}
	}
}
