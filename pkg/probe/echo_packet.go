package probe

import (
	"encoding/binary"
	"errors"
	"net/netip"
)

// ICMP message types of echo probes (RFC 792, RFC 4443).
const (
	icmp4EchoReply   = 0
	icmp4EchoRequest = 8
	icmp6EchoRequest = 128
	icmp6EchoReply   = 129
)

// echoHeaderLen is the ICMP echo header: type, code, checksum, identifier, sequence.
const echoHeaderLen = 8

// buildEcho returns an echo request. The IPv4 checksum is computed here; ICMPv6's covers a
// pseudo-header with addresses only the kernel knows for sure, and the kernel fills it in
// (raw ICMPv6 sockets always checksum at offset 2; ping sockets checksum both families).
func buildEcho(v6 bool, id, seq uint16, payload []byte) []byte {
	b := make([]byte, echoHeaderLen+len(payload))
	b[0] = icmp4EchoRequest
	if v6 {
		b[0] = icmp6EchoRequest
	}
	binary.BigEndian.PutUint16(b[4:6], id)
	binary.BigEndian.PutUint16(b[6:8], seq)
	copy(b[echoHeaderLen:], payload)
	if !v6 {
		binary.BigEndian.PutUint16(b[2:4], inetChecksum(b))
	}
	return b
}

// inetChecksum is the Internet checksum (RFC 1071) of b.
func inetChecksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

// icmpPacket is one ICMP or ICMPv6 message as an echo prober reads it.
type icmpPacket struct {
	Type, Code uint8
	TTL        int  // reply TTL (IPv4 header); -1 when not in the bytes
	ChecksumOK bool // false: the bytes were damaged on the way (IPv4; the kernel checks ICMPv6)
	ID, Seq    uint16
	Payload    []byte // echo replies: the echoed data
	// Quote is set for ICMP errors that quote an echo request: the original packet's
	// destination, identifier and sequence.
	Quote *quotedEcho
}

type quotedEcho struct {
	Dst     netip.Addr
	ID, Seq uint16
}

// IsError reports whether the message is an ICMP error (not an echo, not informational).
func (p *icmpPacket) IsError(v6 bool) bool {
	if v6 {
		return p.Type >= 1 && p.Type <= 4
	}
	return p.Type == icmp4DestUnreach || p.Type == icmp4SourceQuench || p.Type == icmp4TimeExceeded || p.Type == icmp4ParamProblem
}

// IsEchoReply reports whether the message is an echo reply.
func (p *icmpPacket) IsEchoReply(v6 bool) bool {
	if v6 {
		return p.Type == icmp6EchoReply
	}
	return p.Type == icmp4EchoReply
}

var (
	errShortPacket = errors.New("packet too short")
	errNotIPv4     = errors.New("not an IPv4 header")
	errNotIPv6     = errors.New("not an IPv6 header")
	errBadQuote    = errors.New("quoted packet is not an echo request")
)

// parseICMP decodes what an ICMP socket returned: with the IPv4 header in front (raw IPv4
// sockets) when withIPv4 is set, else the ICMP message itself (raw ICMPv6 and ping sockets).
// It never trusts a length field beyond the bytes it has.
func parseICMP(b []byte, v6, withIPv4 bool) (icmpPacket, error) {
	p := icmpPacket{TTL: -1}
	if withIPv4 {
		if len(b) < 20 {
			return p, errShortPacket
		}
		if b[0]>>4 != 4 {
			return p, errNotIPv4
		}
		hl := int(b[0]&0x0f) * 4
		if hl < 20 || len(b) < hl {
			return p, errShortPacket
		}
		p.TTL = int(b[8])
		// The total length bounds the message: a socket may hand over padding after it.
		if tl := int(binary.BigEndian.Uint16(b[2:4])); tl >= hl && tl < len(b) {
			b = b[:tl]
		}
		b = b[hl:]
	}
	if len(b) < echoHeaderLen {
		return p, errShortPacket
	}
	p.Type, p.Code = b[0], b[1]
	p.ChecksumOK = v6 || inetChecksum(b) == 0
	p.ID = binary.BigEndian.Uint16(b[4:6])
	p.Seq = binary.BigEndian.Uint16(b[6:8])
	p.Payload = b[echoHeaderLen:]
	if p.IsError(v6) {
		p.ID, p.Seq = 0, 0
		p.Payload = nil
		q, err := parseQuotedEcho(b[echoHeaderLen:], v6)
		if err == nil {
			p.Quote = &q
		}
	}
	return p, nil
}

// parseQuotedEcho decodes the packet an ICMP error quotes (its IP header and at least the
// first 8 bytes after it, RFC 792 / RFC 4443) when that packet was an echo request.
func parseQuotedEcho(b []byte, v6 bool) (quotedEcho, error) {
	var q quotedEcho
	var rest []byte
	if v6 {
		if len(b) < 40 {
			return q, errShortPacket
		}
		if b[0]>>4 != 6 {
			return q, errNotIPv6
		}
		q.Dst = netip.AddrFrom16([16]byte(b[24:40]))
		nh, off := b[6], 40
		// Extension headers a quoted echo may carry (hop-by-hop, routing, destination
		// options); a fragment or anything else is not our echo.
		for range 8 {
			if nh != 0 && nh != 43 && nh != 60 {
				break
			}
			if len(b) < off+2 {
				return q, errShortPacket
			}
			nh, off = b[off], off+(int(b[off+1])+1)*8
		}
		if nh != 58 {
			return q, errBadQuote
		}
		if len(b) < off {
			return q, errShortPacket
		}
		rest = b[off:]
	} else {
		if len(b) < 20 {
			return q, errShortPacket
		}
		if b[0]>>4 != 4 {
			return q, errNotIPv4
		}
		hl := int(b[0]&0x0f) * 4
		if hl < 20 || len(b) < hl {
			return q, errShortPacket
		}
		if b[9] != 1 {
			return q, errBadQuote
		}
		q.Dst = netip.AddrFrom4([4]byte(b[16:20]))
		rest = b[hl:]
	}
	if len(rest) < echoHeaderLen {
		return q, errShortPacket
	}
	want := uint8(icmp4EchoRequest)
	if v6 {
		want = icmp6EchoRequest
	}
	if rest[0] != want {
		return q, errBadQuote
	}
	q.ID = binary.BigEndian.Uint16(rest[4:6])
	q.Seq = binary.BigEndian.Uint16(rest[6:8])
	return q, nil
}

// echoTail finds our echo request in the bytes of a transmit-timestamp report, which hold
// the packet as it was handed to the device: link-layer and IP headers of unknown length,
// then the echo. The echo's length is known, so it is the tail.
func echoTail(b []byte, echoLen int, v6 bool) (id, seq uint16, ok bool) {
	if echoLen < echoHeaderLen || len(b) < echoLen {
		return 0, 0, false
	}
	e := b[len(b)-echoLen:]
	want := uint8(icmp4EchoRequest)
	if v6 {
		want = icmp6EchoRequest
	}
	if e[0] != want || e[1] != 0 {
		return 0, 0, false
	}
	return binary.BigEndian.Uint16(e[4:6]), binary.BigEndian.Uint16(e[6:8]), true
}
