package probe

import (
	"encoding/binary"
	"errors"
	"net/netip"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// Echo messages are built and parsed with golang.org/x/net/icmp. Own code remains only
// where the library does not serve: the IPv4 checksum check of a received message (the
// library does not verify checksums), the walk over the extension headers of an IPv6
// packet quoted in an error (ipv6.ParseHeader reads the fixed header only), and finding our
// echo in a transmit-timestamp report, whose link and IP headers are of unknown length.

// ICMP message types of echo probes and the errors they draw (RFC 792, RFC 4443), as the
// socket filters and the error classifier need them.
const (
	icmp4EchoReply    = uint8(ipv4.ICMPTypeEchoReply)
	icmp4DestUnreach  = uint8(ipv4.ICMPTypeDestinationUnreachable)
	icmp4SourceQuench = 4 // deprecated (RFC 6633): x/net has no name for it
	icmp4EchoRequest  = uint8(ipv4.ICMPTypeEcho)
	icmp4TimeExceeded = uint8(ipv4.ICMPTypeTimeExceeded)
	icmp4ParamProblem = uint8(ipv4.ICMPTypeParameterProblem)

	icmp6DestUnreach  = uint8(ipv6.ICMPTypeDestinationUnreachable)
	icmp6PacketTooBig = uint8(ipv6.ICMPTypePacketTooBig)
	icmp6TimeExceeded = uint8(ipv6.ICMPTypeTimeExceeded)
	icmp6ParamProblem = uint8(ipv6.ICMPTypeParameterProblem)
	icmp6EchoRequest  = uint8(ipv6.ICMPTypeEchoRequest)
	icmp6EchoReply    = uint8(ipv6.ICMPTypeEchoReply)
)

// echoHeaderLen is the ICMP echo header: type, code, checksum, identifier, sequence.
const echoHeaderLen = 8

// buildEcho returns an echo request. The IPv4 checksum is computed by Marshal; ICMPv6's
// covers a pseudo-header with addresses only the kernel knows for sure, and the kernel fills
// it in (raw ICMPv6 sockets always checksum at offset 2; ping sockets checksum both).
func buildEcho(v6 bool, id, seq uint16, payload []byte) []byte {
	m := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: int(id), Seq: int(seq), Data: payload}}
	if v6 {
		m.Type = ipv6.ICMPTypeEchoRequest
	}
	b, err := m.Marshal(nil)
	if err != nil { // only for a body the library cannot encode, which an echo is not
		panic(err)
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
	errBadQuote    = errors.New("quoted packet is not an echo request")
)

func icmpProto(v6 bool) int {
	if v6 {
		return 58
	}
	return 1
}

// parseICMP decodes what an ICMP socket returned: with the IPv4 header in front (raw IPv4
// sockets) when withIPv4 is set, else the ICMP message itself (raw ICMPv6 and ping sockets).
// It never trusts a length field beyond the bytes it has.
func parseICMP(b []byte, v6, withIPv4 bool) (icmpPacket, error) {
	p := icmpPacket{TTL: -1}
	if withIPv4 {
		h, err := ipv4.ParseHeader(b)
		if err != nil {
			return p, err
		}
		p.TTL = h.TTL
		// The total length bounds the message: a socket may hand over padding after it.
		if h.TotalLen >= h.Len && h.TotalLen < len(b) {
			b = b[:h.TotalLen]
		}
		b = b[h.Len:]
	}
	if len(b) < echoHeaderLen {
		return p, errShortPacket
	}
	m, err := icmp.ParseMessage(icmpProto(v6), b)
	if err != nil {
		return p, err
	}
	p.Type, p.Code = b[0], uint8(m.Code)
	p.ChecksumOK = v6 || inetChecksum(b) == 0
	if e, ok := m.Body.(*icmp.Echo); ok {
		p.ID, p.Seq, p.Payload = uint16(e.ID), uint16(e.Seq), e.Data
	}
	if p.IsError(v6) {
		if q, err := parseQuotedEcho(errorQuote(m), v6); err == nil {
			p.Quote = &q
		}
	}
	return p, nil
}

// errorQuote is the packet an ICMP error quotes, as the library parsed the error (for
// source quench, which it does not know, the bytes after the 4 unused ones).
func errorQuote(m *icmp.Message) []byte {
	switch body := m.Body.(type) {
	case *icmp.DstUnreach:
		return body.Data
	case *icmp.TimeExceeded:
		return body.Data
	case *icmp.ParamProb:
		return body.Data
	case *icmp.PacketTooBig:
		return body.Data
	case *icmp.RawBody:
		if len(body.Data) >= 4 {
			return body.Data[4:]
		}
	}
	return nil
}

// parseQuotedEcho decodes the packet an ICMP error quotes (its IP header and at least the
// first 8 bytes after it, RFC 792 / RFC 4443) when that packet was an echo request.
func parseQuotedEcho(b []byte, v6 bool) (quotedEcho, error) {
	var q quotedEcho
	var rest []byte
	if v6 {
		h, err := ipv6.ParseHeader(b)
		if err != nil {
			return q, err
		}
		dst, _ := netip.AddrFromSlice(h.Dst)
		q.Dst = dst
		if rest, err = skipExtHeaders(h.NextHeader, b[ipv6.HeaderLen:]); err != nil {
			return q, err
		}
	} else {
		h, err := ipv4.ParseHeader(b)
		if err != nil {
			return q, err
		}
		if h.Protocol != 1 {
			return q, errBadQuote
		}
		dst, _ := netip.AddrFromSlice(h.Dst.To4())
		q.Dst = dst
		rest = b[h.Len:]
	}
	if len(rest) < echoHeaderLen {
		return q, errShortPacket
	}
	m, err := icmp.ParseMessage(icmpProto(v6), rest[:echoHeaderLen])
	if err != nil {
		return q, err
	}
	e, ok := m.Body.(*icmp.Echo)
	if !ok || (m.Type != ipv4.ICMPTypeEcho && m.Type != ipv6.ICMPTypeEchoRequest) {
		return q, errBadQuote
	}
	q.ID, q.Seq = uint16(e.ID), uint16(e.Seq)
	return q, nil
}

// skipExtHeaders walks the extension headers a quoted echo may carry (hop-by-hop, routing,
// destination options) and returns what follows them if it is ICMPv6; a fragment or
// anything else is not our echo.
func skipExtHeaders(nh int, b []byte) ([]byte, error) {
	off := 0
	for range 8 {
		if nh != 0 && nh != 43 && nh != 60 {
			break
		}
		if len(b) < off+2 {
			return nil, errShortPacket
		}
		nh, off = int(b[off]), off+(int(b[off+1])+1)*8
	}
	if nh != 58 {
		return nil, errBadQuote
	}
	if len(b) < off {
		return nil, errShortPacket
	}
	return b[off:], nil
}

// echoTail finds our echo request in the bytes of a transmit-timestamp report, which hold
// the packet as it was handed to the device: link-layer and IP headers of unknown length,
// then the echo. The echo's length is known, so it is the tail.
func echoTail(b []byte, echoLen int, v6 bool) (id, seq uint16, ok bool) {
	if echoLen < echoHeaderLen || len(b) < echoLen {
		return 0, 0, false
	}
	e := b[len(b)-echoLen:]
	want := icmp4EchoRequest
	if v6 {
		want = icmp6EchoRequest
	}
	if e[0] != want || e[1] != 0 {
		return 0, 0, false
	}
	return binary.BigEndian.Uint16(e[4:6]), binary.BigEndian.Uint16(e[6:8]), true
}
