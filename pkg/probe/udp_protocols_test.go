package probe

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// answer is what a server of each protocol sends back to req, written from the protocols'
// specifications rather than from the checks under test.
func answer(t *testing.T, name string, req []byte) []byte {
	t.Helper()
	switch name {
	case PayloadDNS, PayloadMDNS:
		var q dns.Msg
		if err := q.Unpack(req); err != nil {
			t.Fatal(err)
		}
		r := new(dns.Msg)
		r.SetReply(&q)
		b, err := r.Pack()
		if err != nil {
			t.Fatal(err)
		}
		return b
	case PayloadNTP:
		b := make([]byte, 48)
		b[0], b[1] = 0x24, 2
		copy(b[24:32], req[40:48])
		return b
	case PayloadSNMP:
		// The request with its PDU type turned into GetResponse (same lengths).
		b := append([]byte(nil), req...)
		b[13] = 0xa2
		return b
	case PayloadQUIC:
		dcid, scid := req[6:14], req[15:23]
		b := []byte{0x80 | 0x2a, 0, 0, 0, 0, 8}
		b = append(b, scid...)
		b = append(append(b, 8), dcid...)
		return append(b, 0, 0, 0, 1, 0x6b, 0x33, 0x43, 0xcf)
	case PayloadSTUN:
		b := append([]byte(nil), req...)
		binary.BigEndian.PutUint16(b[0:2], 0x0101)
		return b
	case PayloadSSDP:
		return []byte("HTTP/1.1 200 OK\r\nST: upnp:rootdevice\r\n\r\n")
	case PayloadNetBIOS:
		b := append([]byte(nil), req...)
		b[2] |= 0x84 // response, authoritative
		return b
	case PayloadMemcached:
		return append(append([]byte(nil), req[:8]...), "VERSION 1.6.21\r\n"...)
	}
	t.Fatalf("no reference answer for %s", name)
	return nil
}

func TestBuiltinPayloads(t *testing.T) {
	dst := netip.MustParseAddrPort("198.51.100.7:9")
	describes := map[string]string{
		PayloadDNS: "DNS response NOERROR", PayloadMDNS: "DNS response", PayloadNTP: "stratum 2",
		PayloadSNMP: "error-status 0", PayloadQUIC: "0x00000001", PayloadSTUN: "success",
		PayloadSSDP: "200 OK", PayloadNetBIOS: "NetBIOS", PayloadMemcached: "VERSION 1.6.21",
	}
	for _, name := range Payloads() {
		t.Run(name, func(t *testing.T) {
			o := &UDPOptions{Builtin: name}
			r, err := o.newRequest(dst, 1000)
			if err != nil || len(r.data) == 0 || r.name != name {
				t.Fatalf("request %q %x: %v", r.name, r.data, err)
			}
			ans := answer(t, name, r.data)
			if why := r.check(ans); why != "" {
				t.Errorf("the protocol's answer rejected: %s", why)
			}
			if d := r.describeReply(ans); !strings.Contains(d, describes[name]) {
				t.Errorf("described as %q, want %q in it", d, describes[name])
			}
			if why := r.check(r.data); why == "" {
				t.Error("the request itself (an echo server's answer) accepted")
			}
			// Another request's answer: same protocol, another identifier.
			other, _ := o.newRequest(dst, 1001)
			if name != PayloadSSDP && bytes.Equal(other.data, r.data) {
				t.Fatal("two requests with the same identifier")
			}
			if why := r.check(answer(t, name, other.data)); why == "" && name != PayloadSSDP {
				t.Error("another request's answer accepted")
			}
		})
	}
}

func TestPayloadForPort(t *testing.T) {
	for port, want := range map[uint16]string{53: PayloadDNS, 123: PayloadNTP, 137: PayloadNetBIOS, 161: PayloadSNMP,
		443: PayloadQUIC, 1900: PayloadSSDP, 3478: PayloadSTUN, 5353: PayloadMDNS, 11211: PayloadMemcached, 7: PayloadText, 9999: PayloadText} {
		if got := PayloadForPort(port); got != want {
			t.Errorf("port %d: %s, want %s", port, got, want)
		}
	}
	dst := netip.MustParseAddrPort("198.51.100.7:7")
	for _, c := range []struct {
		o    UDPOptions
		want string
		data []byte
	}{
		{UDPOptions{}, PayloadText, payloadText},
		{UDPOptions{PayloadSet: true}, PayloadHex, nil},
		{UDPOptions{Payload: []byte{1, 2}, PayloadSet: true}, PayloadHex, []byte{1, 2}},
	} {
		r, err := c.o.newRequest(dst, 1)
		if err != nil || r.name != c.want || !bytes.Equal(r.data, c.data) || r.check != nil {
			t.Errorf("%+v: %s %q %v", c.o, r.name, r.data, err)
		}
	}
	if r, _ := (&UDPOptions{}).newRequest(netip.MustParseAddrPort("[2001:db8::1]:53"), 1); r.name != PayloadDNS || r.check == nil {
		t.Errorf("port 53 without a payload sends %s", r.name)
	}
}

// TestRepliesGoToTheDatagramTheyAnswer: each reply goes to the oldest datagram still
// waiting that it answers — by identifier for DNS, in order for SSDP (whose answers name no
// request) — and a second answer to one datagram is a duplicate.
func TestRepliesGoToTheDatagramTheyAnswer(t *testing.T) {
	for _, name := range []string{PayloadDNS, PayloadSSDP} {
		t.Run(name, func(t *testing.T) {
			u := &udpConn{opts: &UDPOptions{Builtin: name}, dst: netip.MustParseAddrPort("198.51.100.7:53"), idBase: 65534}
			for range 4 {
				req, err := u.opts.newRequest(u.dst, u.idBase+uint16(len(u.dgrams)))
				if err != nil {
					t.Fatal(err)
				}
				u.dgrams = append(u.dgrams, &dgram{req: req, until: time.Now().Add(time.Minute)})
			}
			// Answers to datagrams 2, 0, 1 and 3, then 1 again.
			for _, i := range []int{2, 0, 1, 3, 1} {
				u.received(answer(t, name, u.dgrams[i].req.data), nil)
			}
			for i, d := range u.dgrams {
				if !d.replied {
					t.Errorf("datagram %d unanswered", i)
				}
			}
			if u.extra != 1 || u.late != 0 {
				t.Errorf("%d duplicates and %d late, want 1 and 0", u.extra, u.late)
			}
		})
	}
}
