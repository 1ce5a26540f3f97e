package wire

import (
	"encoding/binary"
	"net/netip"
)

// Hand-built packets for BPF_PROG_TEST_RUN. Checksums are left zero: the TC program never
// checks them (the kernel does, later), so they would test nothing here.

var (
	macs = make([]byte, 12)
	cli4 = netip.MustParseAddr("198.51.100.2")
	srv4 = netip.MustParseAddr("203.0.113.2")
	rtr4 = netip.MustParseAddr("198.51.100.1")
	cli6 = netip.MustParseAddr("2001:db8:c::2")
	srv6 = netip.MustParseAddr("2001:db8:5::2")
	rtr6 = netip.MustParseAddr("2001:db8:c::1")
)

const (
	flagSYN = 0x02
	flagRST = 0x04
	flagACK = 0x10
)

func eth(ethertype uint16, vlans ...uint16) []byte {
	b := append([]byte{}, macs...)
	for _, tpid := range vlans {
		b = binary.BigEndian.AppendUint16(b, tpid)
		b = binary.BigEndian.AppendUint16(b, 100) // TCI
	}
	return binary.BigEndian.AppendUint16(b, ethertype)
}

func ipv4(src, dst netip.Addr, proto uint8, payload []byte, opts []byte, fragOff uint16) []byte {
	hl := 20 + len(opts)
	b := make([]byte, hl)
	b[0] = 0x40 | byte(hl/4)
	binary.BigEndian.PutUint16(b[2:], uint16(hl+len(payload)))
	binary.BigEndian.PutUint16(b[6:], fragOff)
	b[8], b[9] = 64, proto
	s, d := src.As4(), dst.As4()
	copy(b[12:], s[:])
	copy(b[16:], d[:])
	copy(b[20:], opts)
	return append(b, payload...)
}

// ipv6 with optional extension headers, each given as (type, body) where body length+2 is a
// multiple of 8.
func ipv6(src, dst netip.Addr, proto uint8, payload []byte, ext ...[]byte) []byte {
	b := make([]byte, 40)
	b[0] = 0x60
	s, d := src.As16(), dst.As16()
	copy(b[8:], s[:])
	copy(b[24:], d[:])
	b[7] = 64
	next := proto
	var chain []byte
	for i := len(ext) - 1; i >= 0; i-- {
		h := ext[i]
		hdr := append([]byte{next}, h[1:]...)
		chain = append(hdr, chain...)
		next = h[0]
	}
	b[6] = next
	body := append(chain, payload...)
	binary.BigEndian.PutUint16(b[4:], uint16(len(body)))
	return append(b, body...)
}

// extHdr builds an extension header of the given type with 8*(1+len) bytes: the first
// byte is replaced by the next header when chained.
func extHdr(typ uint8, len8 uint8) []byte {
	h := make([]byte, 8*(1+int(len8)))
	h[0] = typ
	h[1] = len8
	return h
}

func fragHdr(offset uint16, more bool) []byte {
	h := make([]byte, 8)
	h[0] = 44
	v := offset << 3
	if more {
		v |= 1
	}
	binary.BigEndian.PutUint16(h[2:], v)
	return h
}

func tcp(sport, dport uint16, flags uint8, seq, ack uint32) []byte {
	b := make([]byte, 20)
	binary.BigEndian.PutUint16(b[0:], sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	binary.BigEndian.PutUint32(b[4:], seq)
	binary.BigEndian.PutUint32(b[8:], ack)
	b[12] = 5 << 4
	b[13] = flags
	return b
}

func udp(sport, dport uint16, payload []byte) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint16(b[0:], sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	binary.BigEndian.PutUint16(b[4:], uint16(8+len(payload)))
	return append(b, payload...)
}

func icmpMsg(typ, code uint8, rest4 []byte, body []byte) []byte {
	b := []byte{typ, code, 0, 0}
	if rest4 == nil {
		rest4 = make([]byte, 4)
	}
	b = append(b, rest4...)
	return append(b, body...)
}

func echo(typ uint8, id, seq uint16) []byte {
	r := binary.BigEndian.AppendUint16(nil, id)
	r = binary.BigEndian.AppendUint16(r, seq)
	return icmpMsg(typ, 0, r, []byte("reachd-nonce"))
}
