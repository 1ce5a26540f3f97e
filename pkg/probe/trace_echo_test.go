package probe

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"testing"
)

// TestTraceEchoChecksum: a trace's echo request has the probe's type, code and checksum
// (the first four bytes, which routers that hash ICMP use) whatever its identifier and
// sequence; only its first data word differs from the probe's.
func TestTraceEchoChecksum(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 2000 {
		v6 := i%2 == 1
		data := make([]byte, 2+r.IntN(60))
		for j := range data {
			data[j] = byte(r.Uint32())
		}
		probe := buildEcho(v6, uint16(r.Uint32()), uint16(r.Uint32()), data)
		id, seq := uint16(r.Uint32()), uint16(r.Uint32())
		tr := traceEcho(v6, probe, id, seq)
		if binary.BigEndian.Uint16(tr[4:6]) != id || binary.BigEndian.Uint16(tr[6:8]) != seq {
			t.Fatalf("id/seq %x %x, want %x %x", tr[4:6], tr[6:8], id, seq)
		}
		if !bytes.Equal(tr[echoHeaderLen+2:], probe[echoHeaderLen+2:]) || len(tr) != len(probe) {
			t.Fatalf("more than the first data word changed")
		}
		// ICMPv6's checksum is the kernel's, over a pseudo-header both share: compare the
		// sums of the messages with the field zero, as for IPv4 the fields themselves.
		sum := func(b []byte) uint16 {
			c := append([]byte(nil), b...)
			c[2], c[3] = 0, 0
			return inetChecksum(c)
		}
		if !v6 && !bytes.Equal(tr[:4], probe[:4]) {
			t.Fatalf("v4: type, code, checksum % x, probe's % x", tr[:4], probe[:4])
		}
		if a, b := sum(tr), sum(probe); a != b && a^b != 0xffff {
			t.Fatalf("v6=%v: checksum %04x, probe's %04x", v6, a, b)
		}
	}
}
