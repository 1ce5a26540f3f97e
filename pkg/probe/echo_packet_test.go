package probe

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"
	"unsafe"

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
	r, err := o.newRequest(dst)
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
	r, err = o.newRequest(dst)
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

// FuzzParseICMP feeds arbitrary bytes to the echo parser as each socket kind returns them.
// It must never panic, and what it returns must come from the input.
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
			return
		}
		if len(pkt.Payload) > len(b) {
			t.Fatalf("payload longer than the input")
		}
		if pkt.Quote != nil && !pkt.IsError(v6) {
			t.Fatalf("a quote on a non-error message")
		}
		if pkt.TTL > 255 {
			t.Fatalf("TTL %d", pkt.TTL)
		}
	})
}

// FuzzParseQuotedEcho: the original packet an ICMP error quotes, from anyone on the path.
func FuzzParseQuotedEcho(f *testing.F) {
	req := buildEcho(false, 1, 2, nil)
	f.Add(append(ipv4Header(me4, it4, 1, 1, 8), req...), false)
	req6 := buildEcho(true, 1, 2, nil)
	f.Add(append(ipv6Header(me6, it6, 58, 8), req6...), true)
	f.Add(append(ipv6Header(me6, it6, 0, 16), 43, 255, 0, 0, 0, 0, 0, 0), true)
	f.Fuzz(func(t *testing.T, b []byte, v6 bool) {
		q, err := parseQuotedEcho(b, v6)
		if err == nil && q.Dst.Is4() == v6 {
			t.Fatalf("family of %s for v6=%v", q.Dst, v6)
		}
	})
}

// FuzzRxControl: control messages of a received packet or an error-queue message (UDP and
// ICMP sockets), as the kernel writes them.
func FuzzRxControl(f *testing.F) {
	ts := make([]byte, 48)
	binary.NativeEndian.PutUint64(ts[0:8], uint64(time.Now().Unix()))
	f.Add(cmsg(unix.SOL_SOCKET, unix.SCM_TIMESTAMPING, ts))
	ee := make([]byte, 16+16)
	ee[4], ee[5], ee[6] = eeOriginICMP, 3, 3
	binary.NativeEndian.PutUint16(ee[16:18], unix.AF_INET)
	f.Add(append(cmsg(unix.SOL_IP, unix.IP_RECVERR, ee), cmsg(unix.SOL_IP, unix.IP_TTL, []byte{64, 0, 0, 0})...))
	f.Add(cmsg(unix.SOL_IPV6, unix.IPV6_HOPLIMIT, []byte{1}))
	f.Fuzz(func(t *testing.T, b []byte) {
		m := parseRxOOB(b)
		if m.ee != nil && m.ee.Offender.IsValid() && !m.ee.Offender.Is4() && !m.ee.Offender.Is6() {
			t.Fatal("bad offender")
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
			r, err := o.newRequest(dst)
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
