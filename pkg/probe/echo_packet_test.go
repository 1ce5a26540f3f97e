package probe

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// ipv4Header returns a 20-byte IPv4 header (checksum left zero: the parser ignores it).
func ipv4Header(src, dst netip.Addr, proto uint8, ttl uint8, payloadLen int) []byte {
	h := make([]byte, 20)
	h[0] = 0x45
	binary.BigEndian.PutUint16(h[2:4], uint16(20+payloadLen))
	h[8], h[9] = ttl, proto
	s, d := src.As4(), dst.As4()
	copy(h[12:16], s[:])
	copy(h[16:20], d[:])
	return h
}

func ipv6Header(src, dst netip.Addr, next uint8, payloadLen int) []byte {
	h := make([]byte, 40)
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:6], uint16(payloadLen))
	h[6], h[7] = next, 64
	s, d := src.As16(), dst.As16()
	copy(h[8:24], s[:])
	copy(h[24:40], d[:])
	return h
}

var (
	me4, it4 = netip.MustParseAddr("198.51.100.2"), netip.MustParseAddr("203.0.113.10")
	me6, it6 = netip.MustParseAddr("2001:db8:c::2"), netip.MustParseAddr("2001:db8:5::10")
)

func TestEchoRoundTrip(t *testing.T) {
	payload := []byte("0123456789abcdef-pattern")
	req := buildEcho(false, 0x1234, 7, payload)
	if inetChecksum(req) != 0 {
		t.Fatal("request checksum does not verify")
	}
	// The reply as a raw IPv4 socket returns it: IP header first.
	rep := append([]byte(nil), req...)
	rep[0], rep[2], rep[3] = icmp4EchoReply, 0, 0
	binary.BigEndian.PutUint16(rep[2:4], inetChecksum(rep))
	pkt, err := parseICMP(append(ipv4Header(it4, me4, 1, 57, len(rep)), rep...), false, true)
	if err != nil || !pkt.IsEchoReply(false) || !pkt.ChecksumOK || pkt.ID != 0x1234 || pkt.Seq != 7 || pkt.TTL != 57 || !bytes.Equal(pkt.Payload, payload) {
		t.Fatalf("%+v %v", pkt, err)
	}
	// One flipped bit fails the checksum.
	rep[len(rep)-1] ^= 1
	pkt, _ = parseICMP(append(ipv4Header(it4, me4, 1, 57, len(rep)), rep...), false, true)
	if pkt.ChecksumOK {
		t.Error("damaged reply passed the checksum")
	}
	// Padding after the IPv4 total length is not payload.
	rep[len(rep)-1] ^= 1
	padded := append(append(ipv4Header(it4, me4, 1, 57, len(rep)), rep...), 0, 0, 0, 0)
	if pkt, _ = parseICMP(padded, false, true); !bytes.Equal(pkt.Payload, payload) || !pkt.ChecksumOK {
		t.Errorf("padding taken as payload: %q", pkt.Payload)
	}
}

func TestQuotedEcho(t *testing.T) {
	req := buildEcho(false, 0xbeef, 300, make([]byte, 56))
	quote := append(ipv4Header(me4, it4, 1, 1, len(req)), req[:8]...)
	errMsg := append([]byte{icmp4DestUnreach, 13, 0, 0, 0, 0, 0, 0}, quote...)
	binary.BigEndian.PutUint16(errMsg[2:4], inetChecksum(errMsg))
	pkt, err := parseICMP(append(ipv4Header(netip.MustParseAddr("198.51.100.1"), me4, 1, 64, len(errMsg)), errMsg...), false, true)
	if err != nil || !pkt.IsError(false) || pkt.Quote == nil || pkt.Quote.ID != 0xbeef || pkt.Quote.Seq != 300 || pkt.Quote.Dst != it4 || pkt.Code != 13 {
		t.Fatalf("%+v %+v %v", pkt, pkt.Quote, err)
	}

	// ICMPv6: the quote may carry extension headers before the echo.
	req6 := buildEcho(true, 0x0102, 9, make([]byte, 56))
	hbh := []byte{58, 0, 1, 4, 0, 0, 0, 0} // next header ICMPv6, 8 bytes, PadN
	quote6 := append(ipv6Header(me6, it6, 0, len(hbh)+len(req6)), hbh...)
	quote6 = append(quote6, req6...)
	err6 := append([]byte{icmp6DestUnreach, 1, 0, 0, 0, 0, 0, 0}, quote6...)
	pkt, err = parseICMP(err6, true, false)
	if err != nil || pkt.Quote == nil || pkt.Quote.ID != 0x0102 || pkt.Quote.Seq != 9 || pkt.Quote.Dst != it6 {
		t.Fatalf("%+v %v", pkt, err)
	}
	// A quote of something other than an echo request is not ours.
	quoteUDP := append(ipv4Header(me4, it4, 17, 1, 8), 0, 53, 0, 53, 0, 8, 0, 0)
	pkt, _ = parseICMP(append([]byte{3, 3, 0, 0, 0, 0, 0, 0}, quoteUDP...), false, false)
	if pkt.Quote != nil {
		t.Errorf("UDP quote taken for an echo: %+v", pkt.Quote)
	}
}

func TestEchoTail(t *testing.T) {
	req := buildEcho(true, 77, 78, make([]byte, echoPayloadLen))
	frame := append(append(make([]byte, 14), ipv6Header(me6, it6, 58, len(req))...), req...)
	if id, seq, ok := echoTail(frame, len(req), true); !ok || id != 77 || seq != 78 {
		t.Fatalf("%d %d %v", id, seq, ok)
	}
	if _, _, ok := echoTail(frame[:20], len(req), true); ok {
		t.Error("short frame accepted")
	}
}

func TestPayloadChecks(t *testing.T) {
	dst := netip.MustParseAddrPort("198.51.100.7:123")
	o := &UDPOptions{Builtin: PayloadNTP}
	r, err := o.newRequest(dst, 7)
	if err != nil || len(r.data) != 48 || r.data[0] != 0x23 {
		t.Fatalf("%x %v", r.data, err)
	}
	reply := make([]byte, 48)
	reply[0], reply[1] = 0x24, 2 // version 4, mode 4 (server), stratum 2
	copy(reply[24:32], r.data[40:48])
	if why := r.check(reply); why != "" {
		t.Errorf("valid NTP reply rejected: %s", why)
	}
	if why := r.check(r.data); why == "" {
		t.Error("the request itself (mode 3) accepted as an answer")
	}

	o = &UDPOptions{Builtin: PayloadDNS}
	r, err = o.newRequest(dst, 8)
	if err != nil {
		t.Fatal(err)
	}
	if why := r.check(r.data); why == "" {
		t.Error("the DNS query itself accepted as a response")
	}
	resp := append([]byte(nil), r.data...)
	resp[2] |= 0x80 // QR
	if why := r.check(resp); why != "" {
		t.Errorf("valid DNS response rejected: %s", why)
	}
	resp[0] ^= 0xff
	if why := r.check(resp); why == "" {
		t.Error("DNS response with another id accepted")
	}
}

// FuzzParseICMP: the echo parser against golang.org/x/net, on bytes as each socket kind
// returns them. When the parser accepts a message, the library must accept it too; an echo's
// fields marshalled again by the library must give back the very bytes (its checksum
// aside, which the parser must judge as the library computes it); an error's quoted echo
// must be what the library reads in the quote.
func FuzzParseICMP(f *testing.F) {
	req := buildEcho(false, 1, 2, make([]byte, 56))
	rep := append([]byte(nil), req...)
	rep[0] = 0
	f.Add(append(ipv4Header(it4, me4, 1, 64, len(rep)), rep...), false, true)
	errMsg := append([]byte{3, 1, 0, 0, 0, 0, 0, 0}, append(ipv4Header(me4, it4, 1, 1, 8), req[:8]...)...)
	f.Add(append(ipv4Header(it4, me4, 1, 64, len(errMsg)), errMsg...), false, true)
	req6 := buildEcho(true, 1, 2, make([]byte, 56))
	f.Add(append([]byte{1, 4, 0, 0, 0, 0, 0, 0}, append(ipv6Header(me6, it6, 58, len(req6)), req6...)...), true, false)
	f.Add([]byte{129, 0, 0, 0, 0, 1, 0, 2}, true, false)
	f.Add([]byte{0x4f, 0, 0, 0}, false, true)
	f.Fuzz(func(t *testing.T, b []byte, v6, withIPv4 bool) {
		pkt, err := parseICMP(b, v6, withIPv4)
		if err != nil {
			// The converse: a message the library reads whole (an IPv4 header it accepts,
			// then at least an echo header's worth) must not be refused.
			if msg, ok := libraryMessage(b, withIPv4); ok && len(msg) >= echoHeaderLen {
				if _, merr := icmp.ParseMessage(icmpProto(v6), msg); merr == nil {
					t.Fatalf("refused a message the library reads: %v\n%x", err, b)
				}
			}
			return
		}
		msg, _ := libraryMessage(b, withIPv4)
		if withIPv4 {
			if h, _ := ipv4.ParseHeader(b); h.TTL != pkt.TTL {
				t.Fatalf("TTL %d, library %d", pkt.TTL, h.TTL)
			}
		}
		m, merr := icmp.ParseMessage(icmpProto(v6), msg)
		if merr != nil {
			t.Fatalf("parser took a message the library refuses: %v", merr)
		}
		if e, ok := m.Body.(*icmp.Echo); ok {
			checkEchoRoundTrip(t, pkt, m.Type, msg, e, v6)
		}
		checkQuote(t, pkt, m, v6)
	})
}

// libraryMessage strips what a raw IPv4 socket puts in front, with the library's header
// parser, bounded by the header's total length.
func libraryMessage(b []byte, withIPv4 bool) ([]byte, bool) {
	if !withIPv4 {
		return b, true
	}
	h, err := ipv4.ParseHeader(b)
	if err != nil {
		return nil, false
	}
	end := len(b)
	if h.TotalLen >= h.Len {
		end = min(end, h.TotalLen)
	}
	return b[h.Len:end], true
}

// checkEchoRoundTrip: the parsed fields, marshalled by the library, are the input again.
func checkEchoRoundTrip(t *testing.T, pkt icmpPacket, typ icmp.Type, msg []byte, e *icmp.Echo, v6 bool) {
	again, err := (&icmp.Message{Type: typ, Code: int(pkt.Code), Body: &icmp.Echo{ID: int(pkt.ID), Seq: int(pkt.Seq), Data: pkt.Payload}}).Marshal(nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(again) != len(msg) || !bytes.Equal(again[4:], msg[4:]) || again[0] != msg[0] || again[1] != msg[1] {
		t.Fatalf("fields %d/%d id %d seq %d payload %d bytes do not give back the message\n%x\n%x", pkt.Type, pkt.Code, pkt.ID, pkt.Seq, len(pkt.Payload), msg, again)
	}
	// One's complement has two zeros. Where the library writes 0x0000 (the rest of the
	// message sums to -0), a checksum of 0xffff verifies the same; the reverse does not:
	// 0xffff is written only for a message of all zero words, whose sum with a 0x0000
	// checksum is +0, which fails verification (RFC 1071, and the kernel).
	same := bytes.Equal(again[2:4], msg[2:4]) ||
		bytes.Equal(again[2:4], []byte{0, 0}) && bytes.Equal(msg[2:4], []byte{0xff, 0xff})
	if !v6 && pkt.ChecksumOK != same {
		t.Fatalf("checksum judged %v; the library's checksum %x, the message's %x", pkt.ChecksumOK, again[2:4], msg[2:4])
	}
	if int(pkt.ID) != e.ID || int(pkt.Seq) != e.Seq {
		t.Fatalf("id/seq %d/%d, library %d/%d", pkt.ID, pkt.Seq, e.ID, e.Seq)
	}
}

// checkQuote: an error's quoted echo is what the library reads in the quote (IPv6 quotes
// with extension headers aside: the library does not walk them).
func checkQuote(t *testing.T, pkt icmpPacket, m *icmp.Message, v6 bool) {
	if !pkt.IsError(v6) {
		return
	}
	want, ok := libraryQuote(errorQuote(m), v6)
	if !ok {
		return
	}
	if pkt.Quote == nil || *pkt.Quote != want {
		t.Fatalf("quote %+v, library %+v", pkt.Quote, want)
	}
}

// libraryQuote reads a quoted echo request with golang.org/x/net alone; ok false when the
// quote is not one, or has IPv6 extension headers.
func libraryQuote(b []byte, v6 bool) (quotedEcho, bool) {
	var q quotedEcho
	var rest []byte
	if v6 {
		h, err := ipv6.ParseHeader(b)
		if err != nil || h.NextHeader != 58 {
			return q, false
		}
		q.Dst, _ = netip.AddrFromSlice(h.Dst)
		rest = b[ipv6.HeaderLen:]
	} else {
		h, err := ipv4.ParseHeader(b)
		if err != nil || h.Protocol != 1 {
			return q, false
		}
		q.Dst, _ = netip.AddrFromSlice(h.Dst.To4())
		rest = b[h.Len:]
	}
	if len(rest) < 8 {
		return q, false
	}
	m, err := icmp.ParseMessage(icmpProto(v6), rest[:8])
	if err != nil || (m.Type != ipv4.ICMPTypeEcho && m.Type != ipv6.ICMPTypeEchoRequest) {
		return q, false
	}
	e := m.Body.(*icmp.Echo)
	q.ID, q.Seq = uint16(e.ID), uint16(e.Seq)
	return q, true
}

// FuzzParseQuotedEcho: the original packet an ICMP error quotes, from anyone on the path,
// against what golang.org/x/net reads in it.
func FuzzParseQuotedEcho(f *testing.F) {
	req := buildEcho(false, 1, 2, nil)
	f.Add(append(ipv4Header(me4, it4, 1, 1, 8), req...), false)
	req6 := buildEcho(true, 1, 2, nil)
	f.Add(append(ipv6Header(me6, it6, 58, 8), req6...), true)
	f.Add(append(ipv6Header(me6, it6, 0, 16), 43, 255, 0, 0, 0, 0, 0, 0), true)
	f.Fuzz(func(t *testing.T, b []byte, v6 bool) {
		q, err := parseQuotedEcho(b, v6)
		want, ok := libraryQuote(b, v6)
		switch {
		case ok && (err != nil || q != want):
			t.Fatalf("parsed %+v (%v), library %+v", q, err, want)
		case err == nil && q.Dst.Is4() == v6:
			t.Fatalf("family of %s for v6=%v", q.Dst, v6)
		}
	})
}

// FuzzRxControl: control messages of a received packet or an error-queue message (UDP and
// ICMP sockets), as the kernel writes them.
// The fuzzer picks what the kernel would report (a receive stamp, a TTL, an error with
// its sender); built into control messages as the kernel writes them, each must come back.
func FuzzRxControl(f *testing.F) {
	f.Add(int64(1764590000), int64(123456789), uint8(64), true, uint8(3), uint8(3), []byte{198, 51, 100, 1})
	f.Add(int64(0), int64(0), uint8(1), false, uint8(1), uint8(4), []byte{0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, sec, nsec int64, ttl uint8, v4 bool, typ, code uint8, from []byte) {
		var oob []byte
		ts := make([]byte, 48)
		binary.NativeEndian.PutUint64(ts[0:8], uint64(sec))
		binary.NativeEndian.PutUint64(ts[8:16], uint64(nsec))
		oob = append(oob, cmsg(unix.SOL_SOCKET, unix.SCM_TIMESTAMPING, ts)...)
		level, ttlType, eeLevel, eeType := int32(unix.SOL_IP), int32(unix.IP_TTL), int32(unix.SOL_IP), int32(unix.IP_RECVERR)
		offender, ok := netip.AddrFromSlice(from)
		if !v4 {
			level, ttlType, eeLevel, eeType = unix.SOL_IPV6, unix.IPV6_HOPLIMIT, unix.SOL_IPV6, unix.IPV6_RECVERR
		}
		if !ok || offender.Is4() != v4 {
			offender = netip.Addr{}
		}
		oob = append(oob, cmsg(level, ttlType, []byte{ttl, 0, 0, 0})...)
		oob = append(oob, cmsg(eeLevel, eeType, extErr(113, eeOriginICMP, typ, code, offender))...)
		m := parseRxOOB(oob)
		var want time.Time
		if sec != 0 || nsec != 0 {
			want = time.Unix(sec, nsec)
		}
		switch {
		case !m.at.Equal(want):
			t.Fatalf("stamp %v, want %v", m.at, want)
		case m.ttl != int(ttl):
			t.Fatalf("ttl %d, want %d", m.ttl, ttl)
		case m.ee == nil || m.ee.Type != typ || m.ee.Code != code || m.ee.Errno != 113 || !m.ee.IsICMP():
			t.Fatalf("error %+v, want type %d code %d", m.ee, typ, code)
		case m.ee.Offender != offender:
			t.Fatalf("offender %s, want %s", m.ee.Offender, offender)
		}
	})
}

// FuzzReplyChecks: a reply to a built-in payload is whatever the network sent. The bytes
// cannot know a fresh request's random identifier, so no check of a request whose
// identifier has 31 bits or more may accept them.
func FuzzReplyChecks(f *testing.F) {
	f.Add(make([]byte, 48))
	f.Add([]byte{0, 1, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 1})
	f.Add([]byte{0x30, 0x29, 0x02, 0x01, 0x01, 0x04, 0x06, 'p', 'u', 'b', 'l', 'i', 'c', 0xa2, 0x1c, 0x02, 0x04, 1, 2, 3, 4})
	f.Add([]byte{0x80, 0, 0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8, 8, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 1})
	f.Add([]byte{1, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12})
	dst := netip.MustParseAddrPort("198.51.100.7:9")
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, name := range Payloads() {
			o := &UDPOptions{Builtin: name}
			r, err := o.newRequest(dst, uint16(len(b)))
			if err != nil {
				t.Fatal(err)
			}
			_ = r.describeReply(b)
			switch name {
			case PayloadNTP, PayloadSNMP, PayloadQUIC, PayloadSTUN:
				if why := r.check(b); why == "" {
					t.Fatalf("%s: bytes that cannot know the request's identifier accepted as its answer: %x", name, b)
				}
			}
		}
		_ = quoteBytes(b, 64)
	})
}

func cmsg(level, typ int32, data []byte) []byte {
	b := make([]byte, unix.CmsgSpace(len(data)))
	h := (*unix.Cmsghdr)(unsafePointer(b))
	h.Level, h.Type = level, typ
	h.SetLen(unix.CmsgLen(len(data)))
	copy(b[unix.CmsgLen(0):], data)
	return b
}

func unsafePointer(b []byte) unsafe.Pointer { return unsafe.Pointer(&b[0]) }
