package wire

import (
	"encoding/binary"
	"net/netip"
)

// The Go model of the TC programs: what reachd_tc_ingress and reachd_tc_egress must emit
// for a frame, given the registered flows, written from the protocols' layouts rather than
// from the C. FuzzTCParser runs both on the same bytes and wants the same event, or none
// from either.

// modelEvent is the part of an event the model predicts.
type modelEvent struct {
	kind      EventKind
	length    uint32 // EvDataTx/Rx: payload bytes
	token     uint64
	egress    bool
	seq       uint32
	ack       uint32
	itype     uint8
	icode     uint8
	from      netip.Addr
	keyFamily uint8
}

// packetKey is the flow key of a packet as seen from the prober (egress: source is local).
type packetKey struct {
	family         uint8
	proto          uint8
	local, remote  netip.Addr
	lport, rport   uint16
	l4             []byte // the bytes from the L4 header on
	src            netip.Addr
	fragmentOffset bool // a later fragment: no L4 header
	ipEnd          int  // where the IP packet ends by its header (0: its length field is 0)
}

// modelPayload holds the flows whose payload is watched (payload_flows, with a budget the
// fuzzer never spends): their TCP segments with payload are reported.
var modelPayload = map[FlowKey]bool{}

// modelL2 strips Ethernet and up to two VLAN tags; it returns the ethertype and the rest.
func modelL2(b []byte) (uint16, []byte, bool) {
	if len(b) < 14 {
		return 0, nil, false
	}
	et, rest := binary.BigEndian.Uint16(b[12:14]), b[14:]
	for range 2 {
		if et != 0x8100 && et != 0x88a8 {
			break
		}
		if len(rest) < 4 {
			return 0, nil, false
		}
		et, rest = binary.BigEndian.Uint16(rest[2:4]), rest[4:]
	}
	return et, rest, true
}

// modelIP parses an IPv4 or IPv6 header (with extension headers) into a key.
func modelIP(v6 bool, b []byte, egress bool) (packetKey, bool) {
	var k packetKey
	var src, dst netip.Addr
	if !v6 {
		if len(b) < 20 {
			return k, false
		}
		hl := int(b[0]&0x0f) * 4
		if hl < 20 || len(b) < hl {
			return k, false
		}
		if binary.BigEndian.Uint16(b[6:8])&0x1fff != 0 {
			return k, false
		}
		k.family, k.proto = 4, b[9]
		src, dst = netip.AddrFrom4([4]byte(b[12:16])), netip.AddrFrom4([4]byte(b[16:20]))
		k.l4 = b[hl:]
		k.ipEnd = int(binary.BigEndian.Uint16(b[2:4]))
	} else {
		if len(b) < 40 {
			return k, false
		}
		k.family = 6
		src, dst = netip.AddrFrom16([16]byte(b[8:24])), netip.AddrFrom16([16]byte(b[24:40]))
		if pl := int(binary.BigEndian.Uint16(b[4:6])); pl > 0 {
			k.ipEnd = 40 + pl
		}
		nh, rest, ok := modelExtHeaders(b[6], b[40:])
		if !ok {
			return k, false
		}
		k.proto, k.l4 = nh, rest
	}
	k.src = src
	k.local, k.remote = dst, src
	if egress {
		k.local, k.remote = src, dst
	}
	return k, true
}

// modelExtHeaders follows up to six IPv6 extension headers; each needs its first two bytes
// present (the C reads next-header and length before knowing the header's kind).
func modelExtHeaders(nh uint8, b []byte) (uint8, []byte, bool) {
	for range 6 {
		if len(b) < 2 {
			return 0, nil, false
		}
		var n int
		switch nh {
		case 0, 43, 60:
			n = (int(b[1]) + 1) * 8
		case 51:
			n = (int(b[1]) + 2) * 4
		case 44:
			if len(b) < 4 || binary.BigEndian.Uint16(b[2:4])&0xfff8 != 0 {
				return 0, nil, false
			}
			n = 8
		default:
			return nh, b, true
		}
		if n > len(b) {
			// The C moves its cursor past the end; the next read fails.
			return 0, nil, false
		}
		nh, b = b[0], b[n:]
	}
	return 0, nil, false
}

func (k packetKey) flowKey() (FlowKey, error) {
	return Key(k.proto, netip.AddrPortFrom(k.local, k.lport), netip.AddrPortFrom(k.remote, k.rport))
}

// modelTC predicts the event for frame b through the ingress (egress false) or egress
// program, with flows registered as keys → tokens.
func modelTC(b []byte, egress bool, flows map[FlowKey]uint64) (modelEvent, bool) {
	et, rest, ok := modelL2(b)
	if !ok {
		return modelEvent{}, false
	}
	return modelIPPacket(b, et, rest, egress, flows)
}

// modelTCL3 predicts the event of the L3 programs, whose packets start with the IP header.
// Under BPF_PROG_TEST_RUN the kernel takes skb->protocol from bytes 12-13 of the data as if
// they were an Ethernet header's type: the model does the same.
func modelTCL3(b []byte, egress bool, flows map[FlowKey]uint64) (modelEvent, bool) {
	if len(b) < 14 {
		return modelEvent{}, false
	}
	return modelIPPacket(b, binary.BigEndian.Uint16(b[12:14]), b, egress, flows)
}

// modelIPPacket: b is the whole frame, rest its IP packet of ethertype et.
func modelIPPacket(b []byte, et uint16, rest []byte, egress bool, flows map[FlowKey]uint64) (modelEvent, bool) {
	if et != 0x0800 && et != 0x86dd {
		return modelEvent{}, false
	}
	v6 := et == 0x86dd
	k, ok := modelIP(v6, rest, egress)
	if !ok {
		return modelEvent{}, false
	}
	lookup := func(k packetKey) (uint64, bool) {
		fk, err := k.flowKey()
		if err != nil {
			return 0, false
		}
		tok, ok := flows[fk]
		return tok, ok
	}
	l4 := k.l4
	switch {
	case k.proto == 6:
		// Offsets in the frame, as the C has them: the IP packet's end by its header (the
		// whole frame when the header says 0), and the TCP header's start.
		if k.ipEnd > 0 {
			k.ipEnd += len(b) - len(rest)
		} else {
			k.ipEnd = len(b)
		}
		return modelTCP(k, l4, len(b)-len(l4), egress, lookup)
	case k.proto == 17:
		if len(l4) < 8 {
			return modelEvent{}, false
		}
		k.lport, k.rport = ports(l4, egress)
		tok, ok := lookup(k)
		kind := EvUDPRx
		if egress {
			kind = EvUDPTx
		}
		return modelEvent{kind: kind, token: tok, egress: egress, keyFamily: k.family}, ok
	case k.proto == 1 && !v6, k.proto == 58 && v6:
		return modelICMP(k, l4, v6, egress, len(b)-len(l4)+8, lookup)
	}
	return modelEvent{}, false
}

func ports(l4 []byte, egress bool) (local, remote uint16) {
	s, d := binary.BigEndian.Uint16(l4[0:2]), binary.BigEndian.Uint16(l4[2:4])
	if egress {
		return s, d
	}
	return d, s
}

func modelTCP(k packetKey, l4 []byte, l4Off int, egress bool, lookup func(packetKey) (uint64, bool)) (modelEvent, bool) {
	if len(l4) < 20 {
		return modelEvent{}, false
	}
	flags := l4[13]
	k.lport, k.rport = ports(l4, egress)
	ev := modelEvent{egress: egress, keyFamily: k.family, seq: binary.BigEndian.Uint32(l4[4:8]), ack: binary.BigEndian.Uint32(l4[8:12])}
	switch {
	case egress && flags&0x12 == 0x02:
		ev.kind = EvSYN
	case !egress && flags&0x12 == 0x12:
		ev.kind = EvSYNACK
	case !egress && flags&0x04 != 0:
		ev.kind = EvRST
	default:
		// Payload of a watched flow: the length the headers give, in 32 bits as the C has it.
		fk, err := k.flowKey()
		doff := int(l4[12]>>4) * 4
		if err != nil || !modelPayload[fk] || uint32(k.ipEnd) <= uint32(l4Off+doff) {
			return modelEvent{}, false
		}
		ev.kind, ev.length = EvDataRx, uint32(k.ipEnd-l4Off-doff)
		if egress {
			ev.kind = EvDataTx
		}
	}
	tok, ok := lookup(k)
	ev.token = tok
	return ev, ok
}

// modelICMP: an echo of a registered flow, or an error quoting one. quoteOff is where the
// quote starts in the frame: the C follows quotes up to 1024 bytes in (a bound its
// verifier needs; real headers are far shorter).
func modelICMP(k packetKey, l4 []byte, v6, egress bool, quoteOff int, lookup func(packetKey) (uint64, bool)) (modelEvent, bool) {
	if len(l4) < 8 {
		return modelEvent{}, false
	}
	typ, code := l4[0], l4[1]
	req, rep := uint8(8), uint8(0)
	if v6 {
		req, rep = 128, 129
	}
	if (egress && typ == req) || (!egress && typ == rep) {
		k.lport, k.rport = binary.BigEndian.Uint16(l4[4:6]), 0
		tok, ok := lookup(k)
		kind := EvEchoReply
		if typ == req {
			kind = EvEchoRequest
		}
		return modelEvent{kind: kind, token: tok, egress: egress, keyFamily: k.family, itype: typ, icode: code,
			seq: uint32(binary.BigEndian.Uint16(l4[6:8]))}, ok
	}
	isErr := typ == 3 || typ == 4 || typ == 11 || typ == 12
	if v6 {
		isErr = typ >= 1 && typ <= 4
	}
	if egress || !isErr || quoteOff > 1024 {
		return modelEvent{}, false
	}
	q, ok := modelIP(v6, l4[8:], true)
	if !ok {
		return modelEvent{}, false
	}
	var seq uint32
	switch {
	case q.proto == 6 || q.proto == 17:
		if len(q.l4) < 4 {
			return modelEvent{}, false
		}
		q.lport, q.rport = ports(q.l4, true)
		if q.proto == 6 && len(q.l4) >= 8 {
			seq = binary.BigEndian.Uint32(q.l4[4:8])
		}
	case q.proto == 1 && !v6, q.proto == 58 && v6:
		if len(q.l4) < 8 || q.l4[0] != req {
			return modelEvent{}, false
		}
		q.lport, q.rport = binary.BigEndian.Uint16(q.l4[4:6]), 0
		seq = uint32(binary.BigEndian.Uint16(q.l4[6:8]))
	default:
		return modelEvent{}, false
	}
	tok, found := lookup(q)
	return modelEvent{kind: EvICMPError, token: tok, keyFamily: q.family, itype: typ, icode: code, seq: seq, from: k.src}, found
}
