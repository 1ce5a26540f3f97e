package probe

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/miekg/dns"
)

// Many UDP services ignore a datagram that is not a request of their protocol, so a probe
// that sends one learns nothing but silence. Without --payload or --payload-hex, reachd sends
// the request of the protocol the port is known for, else payloadText. Every built-in request
// carries a fresh identifier, and its check tells the answer to this request from anything
// else (another datagram's answer, someone else's, a different protocol).

// Built-in payload names (--payload NAME, the verdict's udp.payload).
const (
	PayloadDNS       = "dns"
	PayloadNTP       = "ntp"
	PayloadSNMP      = "snmp"
	PayloadQUIC      = "quic"
	PayloadSTUN      = "stun"
	PayloadSSDP      = "ssdp"
	PayloadMDNS      = "mdns"
	PayloadNetBIOS   = "netbios"
	PayloadMemcached = "memcached"
	// PayloadText is the default for ports without a known protocol: payloadText.
	PayloadText = "text"
	// PayloadHex names --payload-hex's bytes in the verdict.
	PayloadHex = "hex"
)

// payloadText is the datagram for a port reachd knows no protocol of: short, printable and
// ending in a newline, which line-oriented services (echo, custom daemons) answer.
var payloadText = []byte("reachd\n")

// protocol builds one request of a built-in payload to dst and says what its answer is.
// id is the identifier of protocols whose identifier has 16 bits (DNS, NetBIOS, memcached):
// the attempt numbers its datagrams from a random start, so that no two of them share one;
// protocols with a longer one draw it at random.
type protocol struct {
	ports []uint16 // the well-known ports it is the default for
	build func(dst netip.AddrPort, id uint16) (request, error)
}

var protocols = map[string]protocol{
	PayloadDNS:     {[]uint16{53}, func(_ netip.AddrPort, id uint16) (request, error) { return dnsRequest(".", dns.TypeNS, id) }},
	PayloadNTP:     {[]uint16{123}, ntpRequest},
	PayloadNetBIOS: {[]uint16{137}, netbiosRequest},
	PayloadSNMP:    {[]uint16{161}, snmpRequest},
	PayloadQUIC:    {[]uint16{443}, quicRequest},
	PayloadSSDP:    {[]uint16{1900}, ssdpRequest},
	PayloadSTUN:    {[]uint16{3478}, stunRequest},
	PayloadMDNS: {[]uint16{5353}, func(_ netip.AddrPort, id uint16) (request, error) {
		return dnsRequest("_services._dns-sd._udp.local.", dns.TypePTR, id)
	}},
	PayloadMemcached: {[]uint16{11211}, memcachedRequest},
}

// Payloads returns the built-in payload names, sorted.
func Payloads() []string {
	out := make([]string, 0, len(protocols))
	for name := range protocols {
		out = append(out, name)
	}
	slices.Sort(out)
	return out
}

// IsPayload says whether name is a built-in payload.
func IsPayload(name string) bool { _, ok := protocols[name]; return ok }

// PayloadForPort is the built-in payload sent to port when none is given: the protocol the
// port is known for, else PayloadText.
func PayloadForPort(port uint16) string {
	for name, p := range protocols {
		if slices.Contains(p.ports, port) {
			return name
		}
	}
	return PayloadText
}

func random(n int) ([]byte, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return nil, fmt.Errorf("random bytes: %w", err)
	}
	return b, nil
}

// dnsRequest asks for name/typ without recursion: every server answers it, if only with
// REFUSED, and a responder on 5353 answers a query from another port by unicast (RFC 6762
// §6.7).
func dnsRequest(name string, typ, id uint16) (request, error) {
	m := new(dns.Msg)
	m.SetQuestion(name, typ)
	m.RecursionDesired = false
	m.Id = id
	b, err := m.Pack()
	if err != nil {
		return request{}, fmt.Errorf("build DNS query: %w", err)
	}
	return request{data: b, check: func(reply []byte) string { return checkDNSReply(reply, m.Id) }, describe: describeDNS}, nil
}

// ntpRequest is a client request with a random transmit timestamp, as modern clients send:
// the server echoes it as the origin timestamp, which ties its answer to this request.
func ntpRequest(netip.AddrPort, uint16) (request, error) {
	b := make([]byte, 48)
	b[0] = 0x23 // LI 0, version 4, mode 3 (client)
	xmt, err := random(8)
	if err != nil {
		return request{}, err
	}
	copy(b[40:48], xmt)
	org := binary.BigEndian.Uint64(xmt)
	return request{data: b, check: func(reply []byte) string { return checkNTPReply(reply, org) }, describe: describeNTP}, nil
}

// snmpRequest is an SNMPv2c get of sysDescr.0 with community "public": an agent that does
// not know the community stays silent, one that does answers with the system's description.
func snmpRequest(netip.AddrPort, uint16) (request, error) {
	id, err := random(4)
	if err != nil {
		return request{}, err
	}
	id[0] = id[0]&0x7f | 0x01 // a positive INTEGER in four bytes, minimally encoded
	b := []byte{0x30, 0x29, 0x02, 0x01, 0x01, 0x04, 0x06, 'p', 'u', 'b', 'l', 'i', 'c',
		0xa0, 0x1c, 0x02, 0x04, id[0], id[1], id[2], id[3], 0x02, 0x01, 0x00, 0x02, 0x01, 0x00,
		0x30, 0x0e, 0x30, 0x0c, 0x06, 0x08, 0x2b, 0x06, 0x01, 0x02, 0x01, 0x01, 0x01, 0x00, 0x05, 0x00}
	return request{data: b, check: func(reply []byte) string { return checkSNMPReply(reply, id) }, describe: describeSNMP}, nil
}

// quicRequest is a QUIC long-header packet of a version reserved to force version
// negotiation (RFC 9000 §6.3, 15.), padded to the 1200 bytes a server needs before it
// answers: the server replies with the versions it speaks and opens no connection.
func quicRequest(netip.AddrPort, uint16) (request, error) {
	cids, err := random(16)
	if err != nil {
		return request{}, err
	}
	dcid, scid := cids[:8], cids[8:]
	b := make([]byte, 1200)
	b[0] = 0xc0
	binary.BigEndian.PutUint32(b[1:5], 0x1a2a3a4a)
	b[5] = 8
	copy(b[6:14], dcid)
	b[14] = 8
	copy(b[15:23], scid)
	return request{data: b, check: func(reply []byte) string { return checkQUICReply(reply, dcid, scid) }, describe: describeQUIC}, nil
}

// stunRequest is a STUN Binding request (RFC 8489) with a random transaction id.
func stunRequest(netip.AddrPort, uint16) (request, error) {
	tx, err := random(12)
	if err != nil {
		return request{}, err
	}
	b := make([]byte, 20)
	binary.BigEndian.PutUint16(b[0:2], 0x0001)
	binary.BigEndian.PutUint32(b[4:8], stunCookie)
	copy(b[8:20], tx)
	return request{data: b, check: func(reply []byte) string { return checkSTUNReply(reply, tx) }, describe: describeSTUN}, nil
}

const stunCookie = 0x2112a442

// ssdpRequest is a unicast M-SEARCH for every service (UPnP Device Architecture 2.0 §1.3.2).
func ssdpRequest(dst netip.AddrPort, _ uint16) (request, error) {
	b := []byte("M-SEARCH * HTTP/1.1\r\nHOST: " + dst.String() + "\r\nMAN: \"ssdp:discover\"\r\nST: ssdp:all\r\n\r\n")
	return request{data: b, check: checkSSDPReply, describe: describeHTTPU}, nil
}

// netbiosRequest is a NetBIOS node status query for "*" (RFC 1002 §4.2.17), which Windows
// and Samba hosts answer with their names.
func netbiosRequest(_ netip.AddrPort, n uint16) (request, error) {
	id := []byte{byte(n >> 8), byte(n)}
	b := append([]byte{id[0], id[1], 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0x20}, netbiosName("*")...)
	b = append(b, 0, 0, 0x21, 0, 1) // end of name, type NBSTAT, class IN
	return request{data: b, check: func(reply []byte) string { return checkNetBIOSReply(reply, id) }, describe: describeNetBIOS}, nil
}

// netbiosName is the first-level encoding of a NetBIOS name padded with NULs to 16 bytes.
func netbiosName(name string) []byte {
	var raw [16]byte
	copy(raw[:], name)
	out := make([]byte, 0, 32)
	for _, c := range raw {
		out = append(out, 'A'+c>>4, 'A'+c&0x0f)
	}
	return out
}

// memcachedRequest is "version" behind the UDP frame header (request id, sequence 0 of 1).
func memcachedRequest(_ netip.AddrPort, n uint16) (request, error) {
	id := []byte{byte(n >> 8), byte(n)}
	b := append([]byte{id[0], id[1], 0, 0, 0, 1, 0, 0}, "version\r\n"...)
	return request{data: b, check: func(reply []byte) string { return checkMemcachedReply(reply, id) }, describe: describeMemcached}, nil
}

// checkDNSReply says why reply is not the answer to query id, or "" when it is.
func checkDNSReply(reply []byte, id uint16) string {
	var m dns.Msg
	if err := m.Unpack(reply); err != nil {
		return fmt.Sprintf("the reply is not a DNS message (%v)", err)
	}
	if !m.Response {
		return "the reply is a DNS query, not a response"
	}
	if m.Id != id {
		return fmt.Sprintf("the DNS response has id %d, not the query's %d", m.Id, id)
	}
	return ""
}

func describeDNS(reply []byte) string {
	var m dns.Msg
	if m.Unpack(reply) != nil {
		return ""
	}
	return fmt.Sprintf("DNS response %s with %d answer(s)", dns.RcodeToString[m.Rcode], len(m.Answer))
}

// checkNTPReply says why reply is not a server's answer to the request whose transmit
// timestamp was xmt, or "" when it is.
func checkNTPReply(reply []byte, xmt uint64) string {
	if len(reply) < 48 {
		return fmt.Sprintf("the reply has %d bytes, an NTP packet at least 48", len(reply))
	}
	if mode := reply[0] & 7; mode != 4 {
		return fmt.Sprintf("the reply is NTP mode %d, not 4 (server)", mode)
	}
	if org := binary.BigEndian.Uint64(reply[24:32]); org != xmt {
		return "the NTP reply's origin timestamp is not the request's transmit timestamp"
	}
	return ""
}

func describeNTP(reply []byte) string {
	if len(reply) < 48 {
		return ""
	}
	if reply[1] == 0 {
		return "NTP response, stratum 0 (kiss-o'-death " + strconv.Quote(string(reply[12:16])) + ")"
	}
	return fmt.Sprintf("NTP response, stratum %d", reply[1])
}

// berTLV reads one BER element (short or long definite length) at b: its tag, its contents
// and what follows it.
func berTLV(b []byte) (tag byte, val, rest []byte, ok bool) {
	if len(b) < 2 {
		return 0, nil, nil, false
	}
	tag, n, off := b[0], int(b[1]), 2
	if n&0x80 != 0 {
		k := n & 0x7f
		if k == 0 || k > 2 || len(b) < 2+k {
			return 0, nil, nil, false
		}
		n, off = 0, 2+k
		for _, c := range b[2 : 2+k] {
			n = n<<8 | int(c)
		}
	}
	if len(b) < off+n {
		return 0, nil, nil, false
	}
	return tag, b[off : off+n], b[off+n:], true
}

// snmpPDU walks an SNMP message down to its PDU: version, community, then the PDU's tag and
// contents.
func snmpPDU(reply []byte) (tag byte, pdu []byte, ok bool) {
	t, msg, _, ok := berTLV(reply)
	if !ok || t != 0x30 {
		return 0, nil, false
	}
	for range 2 { // version, community
		if _, _, msg, ok = berTLV(msg); !ok {
			return 0, nil, false
		}
	}
	tag, pdu, _, ok = berTLV(msg)
	return tag, pdu, ok
}

func checkSNMPReply(reply, id []byte) string {
	tag, pdu, ok := snmpPDU(reply)
	if !ok {
		return "the reply is not an SNMP message"
	}
	if tag != 0xa2 {
		return fmt.Sprintf("the SNMP reply is PDU type 0x%02x, not a response (0xa2)", tag)
	}
	if t, rid, _, ok := berTLV(pdu); !ok || t != 0x02 || !bytes.Equal(rid, id) {
		return "the SNMP response's request-id is not the request's"
	}
	return ""
}

func describeSNMP(reply []byte) string {
	_, pdu, ok := snmpPDU(reply)
	if !ok {
		return ""
	}
	_, _, rest, _ := berTLV(pdu) // request-id
	if t, st, _, ok := berTLV(rest); ok && t == 0x02 && len(st) == 1 {
		return fmt.Sprintf("SNMP response, error-status %d", st[0])
	}
	return "SNMP response"
}

func checkQUICReply(reply, dcid, scid []byte) string {
	if len(reply) < 7 || reply[0]&0x80 == 0 {
		return "the reply is not a QUIC long-header packet"
	}
	if v := binary.BigEndian.Uint32(reply[1:5]); v != 0 {
		return fmt.Sprintf("the QUIC reply has version 0x%08x, not version negotiation (0)", v)
	}
	// The server swaps the connection ids: its destination is our source.
	d := int(reply[5])
	if len(reply) < 7+d || !bytes.Equal(reply[6:6+d], scid) {
		return "the QUIC version negotiation is not for this request's connection id"
	}
	s := int(reply[6+d])
	if len(reply) < 7+d+s || !bytes.Equal(reply[7+d:7+d+s], dcid) {
		return "the QUIC version negotiation is not for this request's connection id"
	}
	return ""
}

func describeQUIC(reply []byte) string {
	if len(reply) < 7 {
		return ""
	}
	off := 6 + int(reply[5])
	if off >= len(reply) {
		return ""
	}
	off += 1 + int(reply[off])
	var vs []string
	for ; off+4 <= len(reply) && len(vs) < 8; off += 4 {
		vs = append(vs, fmt.Sprintf("0x%08x", binary.BigEndian.Uint32(reply[off:off+4])))
	}
	return "QUIC version negotiation: " + strings.Join(vs, " ")
}

func checkSTUNReply(reply, tx []byte) string {
	if len(reply) < 20 || binary.BigEndian.Uint32(reply[4:8]) != stunCookie {
		return "the reply is not a STUN message"
	}
	if t := binary.BigEndian.Uint16(reply[0:2]); t != 0x0101 && t != 0x0111 {
		return fmt.Sprintf("the STUN reply is type 0x%04x, not a Binding response", t)
	}
	if !bytes.Equal(reply[8:20], tx) {
		return "the STUN response's transaction id is not the request's"
	}
	return ""
}

func describeSTUN(reply []byte) string {
	if len(reply) >= 2 && binary.BigEndian.Uint16(reply[0:2]) == 0x0111 {
		return "STUN Binding error response"
	}
	return "STUN Binding success response"
}

func checkSSDPReply(reply []byte) string {
	if !bytes.HasPrefix(reply, []byte("HTTP/1.1 ")) {
		return "the reply is not an SSDP (HTTP over UDP) response"
	}
	return ""
}

func describeHTTPU(reply []byte) string {
	line, _, _ := bytes.Cut(reply, []byte("\r\n"))
	return "SSDP response " + strconv.Quote(string(line))
}

func checkNetBIOSReply(reply, id []byte) string {
	if len(reply) < 12 || reply[2]&0x80 == 0 {
		return "the reply is not a NetBIOS name service response"
	}
	if !bytes.Equal(reply[0:2], id) {
		return "the NetBIOS response's transaction id is not the request's"
	}
	return ""
}

func describeNetBIOS([]byte) string { return "NetBIOS node status response" }

func checkMemcachedReply(reply, id []byte) string {
	if len(reply) < 8 || !bytes.Equal(reply[0:2], id) {
		return "the reply is not a memcached UDP response to this request"
	}
	// "VERSION x.y.z", or an error line: never the request's own lower-case command.
	if body := reply[8:]; !bytes.HasPrefix(body, []byte("VERSION ")) && !bytes.Contains(body, []byte("ERROR")) {
		return "the memcached reply is not an answer to \"version\""
	}
	return ""
}

func describeMemcached(reply []byte) string {
	if len(reply) < 8 {
		return ""
	}
	line, _, _ := bytes.Cut(reply[8:], []byte("\r\n"))
	return "memcached " + strconv.Quote(string(line))
}
