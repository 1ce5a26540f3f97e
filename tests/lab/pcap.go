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
	pkts, err := readPcap(path)
	if err != nil {
		return nil, err
	}
	syns := map[string]int64{}
	out := map[string]Handshake{}
	for _, pk := range pkts {
		src, dst, flags, ok := tcpOf(pk.data)
		if !ok {
			continue
		}
		switch {
		case flags&0x12 == 0x02: // SYN
			syns[src.String()+" "+dst.String()] = pk.ts
		case flags&0x12 == 0x12: // SYN-ACK: the key is the SYN's direction
			k := dst.String() + " " + src.String()
			if s, ok := syns[k]; ok {
				if _, seen := out[k]; !seen {
					out[k] = Handshake{LastSYN: s, SYNACK: pk.ts}
				}
			}
		}
	}
	return out, nil
}

// tcpOf decodes Ethernet / IPv4 or IPv6 (no extension headers) / TCP.
func tcpOf(p []byte) (src, dst netip.AddrPort, flags byte, ok bool) {
	src, dst, flags, _, ok = segmentOf(p)
	return
}

// segmentOf is tcpOf with the segment's payload length, from the IP header's length field
// (a capture truncates packets, and pads none).
func segmentOf(p []byte) (src, dst netip.AddrPort, flags byte, payload int, ok bool) {
	if len(p) < 14 {
		return
	}
	et := binary.BigEndian.Uint16(p[12:14])
	p = p[14:]
	var sa, da netip.Addr
	var l4len int
	switch {
	case et == 0x0800 && len(p) >= 20 && p[9] == 6:
		hl := int(p[0]&0x0f) * 4
		sa, da = netip.AddrFrom4([4]byte(p[12:16])), netip.AddrFrom4([4]byte(p[16:20]))
		l4len = int(binary.BigEndian.Uint16(p[2:4])) - hl
		p = p[min(hl, len(p)):]
	case et == 0x86dd && len(p) >= 40 && p[6] == 6:
		sa, da = netip.AddrFrom16([16]byte(p[8:24])), netip.AddrFrom16([16]byte(p[24:40]))
		l4len = int(binary.BigEndian.Uint16(p[4:6]))
		p = p[40:]
	default:
		return
	}
	if len(p) < 14 {
		return
	}
	payload = max(l4len-int(p[12]>>4)*4, 0)
	return netip.AddrPortFrom(sa, binary.BigEndian.Uint16(p[0:2])), netip.AddrPortFrom(da, binary.BigEndian.Uint16(p[2:4])), p[13], payload, true
}

// Exchange is one request and response read from a capture, in capture time (ns): the
// first segment with payload the client sent, and the first with payload the server sent
// after it.
type Exchange struct {
	Request, Response int64
}

// ReadExchanges parses a pcap file as ReadHandshakes does and returns each connection's
// first exchange, keyed by "local remote", local being the side that sent the SYN. The
// request is the client's first segment with payload after skip such segments (a TLS 1.3
// handshake: the ClientHello and the client's Finished).
func ReadExchanges(path string, skip int) (map[string]Exchange, error) {
	pkts, err := readPcap(path)
	if err != nil {
		return nil, err
	}
	clients := map[string]bool{} // "local remote" of each SYN seen
	sent := map[string]int{}     // client segments with payload so far
	out := map[string]Exchange{}
	for _, pk := range pkts {
		src, dst, flags, n, ok := segmentOf(pk.data)
		if !ok {
			continue
		}
		fwd, rev := src.String()+" "+dst.String(), dst.String()+" "+src.String()
		switch {
		case flags&0x12 == 0x02:
			clients[fwd] = true
		case n == 0:
		case clients[fwd]:
			if sent[fwd]++; sent[fwd] == skip+1 {
				out[fwd] = Exchange{Request: pk.ts}
			}
		case clients[rev]:
			if x := out[rev]; x.Request != 0 && x.Response == 0 {
				x.Response = pk.ts
				out[rev] = x
			}
		}
	}
	return out, nil
}

type pcapPacket struct {
	ts   int64 // ns
	data []byte
}

// readPcap reads a little-endian pcap file of Ethernet frames.
func readPcap(path string) ([]pcapPacket, error) {
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
	var out []pcapPacket
	for off := 24; off+16 <= len(b); {
		sec := int64(binary.LittleEndian.Uint32(b[off:]))
		frac := int64(binary.LittleEndian.Uint32(b[off+4:]))
		incl := int(binary.LittleEndian.Uint32(b[off+8:]))
		off += 16
		if off+incl > len(b) {
			break
		}
		out = append(out, pcapPacket{sec*1e9 + frac*scale, b[off : off+incl]})
		off += incl
	}
	return out, nil
}

// ReadDatagramExchanges parses a pcap file as ReadHandshakes does and returns, for each
// pair of UDP endpoints, the first datagram one side sent and the first the other sent
// back, keyed by "local remote", local being the side that sent first.
func ReadDatagramExchanges(path string) (map[string]Exchange, error) {
	pkts, err := readPcap(path)
	if err != nil {
		return nil, err
	}
	out := map[string]Exchange{}
	for _, pk := range pkts {
		src, dst, ok := udpOf(pk.data)
		if !ok {
			continue
		}
		fwd, rev := src.String()+" "+dst.String(), dst.String()+" "+src.String()
		if x, ok := out[rev]; ok {
			if x.Response == 0 {
				x.Response = pk.ts
				out[rev] = x
			}
			continue
		}
		if _, ok := out[fwd]; !ok {
			out[fwd] = Exchange{Request: pk.ts}
		}
	}
	return out, nil
}

// udpOf decodes Ethernet / IPv4 or IPv6 (no extension headers) / UDP.
func udpOf(p []byte) (src, dst netip.AddrPort, ok bool) {
	if len(p) < 14 {
		return
	}
	et := binary.BigEndian.Uint16(p[12:14])
	p = p[14:]
	var sa, da netip.Addr
	switch {
	case et == 0x0800 && len(p) >= 20 && p[9] == 17:
		hl := int(p[0]&0x0f) * 4
		sa, da = netip.AddrFrom4([4]byte(p[12:16])), netip.AddrFrom4([4]byte(p[16:20]))
		p = p[min(hl, len(p)):]
	case et == 0x86dd && len(p) >= 40 && p[6] == 17:
		sa, da = netip.AddrFrom16([16]byte(p[8:24])), netip.AddrFrom16([16]byte(p[24:40]))
		p = p[40:]
	default:
		return
	}
	if len(p) < 8 {
		return
	}
	return netip.AddrPortFrom(sa, binary.BigEndian.Uint16(p[0:2])), netip.AddrPortFrom(da, binary.BigEndian.Uint16(p[2:4])), true
}
