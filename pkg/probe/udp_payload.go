package probe

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/miekg/dns"
)

// UDPOptions are the udp kind's flags (CONTRACT.md).
type UDPOptions struct {
	Payload      []byte         // --payload-hex
	Builtin      string         // --payload dns|ntp: a valid request, checked against its answer
	Expect       *regexp.Regexp // --expect: matched against the reply's bytes
	ExpectHex    []byte         // --expect-hex: the reply must contain these bytes
	ExpectClosed bool           // --expect-closed: ok on port unreachable
}

// Builtin payloads.
const (
	PayloadDNS = "dns"
	PayloadNTP = "ntp"
)

// request is one datagram's payload and how to recognise the answer to it.
type request struct {
	data []byte
	// check says whether reply answers this request; "" means it does, else why not.
	check func(reply []byte) string
}

// newRequest builds the payload of one datagram. Built-in requests carry a fresh
// identifier (DNS id, NTP transmit timestamp) so that an answer to an earlier datagram,
// or to someone else, is not taken for this one's.
func (o *UDPOptions) newRequest() (request, error) {
	var r request
	switch o.Builtin {
	case PayloadDNS:
		m := new(dns.Msg)
		m.SetQuestion(".", dns.TypeNS) // every DNS server can answer it, if only with REFUSED
		m.RecursionDesired = false
		m.Id = dns.Id()
		b, err := m.Pack()
		if err != nil {
			return r, fmt.Errorf("build DNS query: %w", err)
		}
		r.data = b
		r.check = func(reply []byte) string { return checkDNSReply(reply, m.Id) }
	case PayloadNTP:
		b := make([]byte, 48)
		b[0] = 0x23 // LI 0, version 4, mode 3 (client)
		// A random transmit timestamp, as modern clients send: the server echoes it as
		// the origin timestamp, which ties its answer to this request.
		if _, err := rand.Read(b[40:48]); err != nil {
			return r, err
		}
		xmt := binary.BigEndian.Uint64(b[40:48])
		r.data = b
		r.check = func(reply []byte) string { return checkNTPReply(reply, xmt) }
	default:
		r.data = o.Payload
	}
	return r, nil
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

// describeReply says what a reply was in the verdict's detail: the DNS rcode or NTP
// stratum for built-in payloads.
func (o *UDPOptions) describeReply(reply []byte) string {
	switch o.Builtin {
	case PayloadDNS:
		var m dns.Msg
		if m.Unpack(reply) == nil {
			return fmt.Sprintf("DNS response %s with %d answer(s)", dns.RcodeToString[m.Rcode], len(m.Answer))
		}
	case PayloadNTP:
		if len(reply) >= 48 {
			if reply[1] == 0 {
				return "NTP response, stratum 0 (kiss-o'-death " + strconv.Quote(string(reply[12:16])) + ")"
			}
			return fmt.Sprintf("NTP response, stratum %d", reply[1])
		}
	}
	return fmt.Sprintf("%d-byte reply", len(reply))
}

// expectation says why reply fails --expect / --expect-hex, or "" when it passes.
func (o *UDPOptions) expectation(reply []byte) string {
	if o.Expect != nil && !o.Expect.Match(reply) {
		return fmt.Sprintf("the reply %s does not match --expect %s", quoteBytes(reply, 64), o.Expect)
	}
	if len(o.ExpectHex) > 0 && !bytes.Contains(reply, o.ExpectHex) {
		return fmt.Sprintf("the reply %s does not contain --expect-hex %x", quoteBytes(reply, 64), o.ExpectHex)
	}
	return ""
}

// quoteBytes shows at most n bytes: quoted text when printable, else hex.
func quoteBytes(b []byte, n int) string {
	more := ""
	if len(b) > n {
		b, more = b[:n], "…"
	}
	printable := true
	for _, c := range b {
		if (c < 0x20 || c > 0x7e) && c != '\n' && c != '\r' && c != '\t' {
			printable = false
			break
		}
	}
	if printable {
		return strconv.Quote(string(b)) + more
	}
	return "0x" + strings.ToLower(fmt.Sprintf("%X", b)) + more
}
