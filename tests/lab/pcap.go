package lab

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
)

// Handshake is one TCP handshake read from a capture, from the prober's side: the last
// SYN it sent before the SYN-ACK, and the SYN-ACK, in capture time (ns).
type Handshake struct {
	LastSYN, SYNACK int64
}

// ReadHandshakes parses a pcap file (nanosecond or microsecond, Ethernet) and returns the
// handshakes it saw, keyed by "local remote" as netip.AddrPort strings, local being the
// side that sent the SYN.
func ReadHandshakes(path string) (map[string]Handshake, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(b) < 24 {
		return nil, errors.New("pcap: short file")
	}
	var scale int64
	switch binary.LittleEndian.Uint32(b[0:4]) {
	case 0xa1b2c3d4:
		scale = 1000
	case 0xa1b23c4d:
		scale = 1
	default:
		return nil, fmt.Errorf("pcap: unknown magic %#x (want little-endian pcap)", binary.LittleEndian.Uint32(b[0:4]))
	}
	if lt := binary.LittleEndian.Uint32(b[20:24]); lt != 1 {
		return nil, fmt.Errorf("pcap: link type %d, want Ethernet (1)", lt)
	}
	syns := map[string]int64{}
	out := map[string]Handshake{}
	for off := 24; off+16 <= len(b); {
		sec := int64(binary.LittleEndian.Uint32(b[off:]))
		frac := int64(binary.LittleEndian.Uint32(b[off+4:]))
		incl := int(binary.LittleEndian.Uint32(b[off+8:]))
		off += 16
		if off+incl > len(b) {
			break
		}
		pkt := b[off : off+incl]
		off += incl
		ts := sec*1e9 + frac*scale
		src, dst, flags, ok := tcpOf(pkt)
		if !ok {
			continue
		}
		switch {
		case flags&0x12 == 0x02: // SYN
			syns[src.String()+" "+dst.String()] = ts
		case flags&0x12 == 0x12: // SYN-ACK: the key is the SYN's direction
			k := dst.String() + " " + src.String()
			if s, ok := syns[k]; ok {
				if _, seen := out[k]; !seen {
					out[k] = Handshake{LastSYN: s, SYNACK: ts}
				}
			}
		}
	}
	return out, nil
}

// tcpOf decodes Ethernet / IPv4 or IPv6 (no extension headers) / TCP.
func tcpOf(p []byte) (src, dst netip.AddrPort, flags byte, ok bool) {
	if len(p) < 14 {
		return
	}
	et := binary.BigEndian.Uint16(p[12:14])
	p = p[14:]
	var sa, da netip.Addr
	switch {
	case et == 0x0800 && len(p) >= 20 && p[9] == 6:
		hl := int(p[0]&0x0f) * 4
		sa, da = netip.AddrFrom4([4]byte(p[12:16])), netip.AddrFrom4([4]byte(p[16:20]))
		p = p[min(hl, len(p)):]
	case et == 0x86dd && len(p) >= 40 && p[6] == 6:
		sa, da = netip.AddrFrom16([16]byte(p[8:24])), netip.AddrFrom16([16]byte(p[24:40]))
		p = p[40:]
	default:
		return
	}
	if len(p) < 14 {
		return
	}
	return netip.AddrPortFrom(sa, binary.BigEndian.Uint16(p[0:2])), netip.AddrPortFrom(da, binary.BigEndian.Uint16(p[2:4])), p[13], true
}
