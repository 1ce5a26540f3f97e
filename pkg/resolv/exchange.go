package resolv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

// Query is a query for name/typ with recursion desired and EDNS0 (a 1232-byte UDP payload,
// the DNS flag day's size that avoids fragments); dnssec sets the DO bit.
func Query(name string, typ uint16, dnssec bool) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), typ)
	m.RecursionDesired = true
	m.SetEdns0(EDNSSize, dnssec)
	return m
}

// EDNSSize is the UDP payload size reachd's queries offer.
const EDNSSize = 1232

// Exchange sends m to srv over UDP, and over TCP when the answer comes truncated (or
// straight away with tcp), until ctx ends.
func Exchange(ctx context.Context, srv netip.AddrPort, m *dns.Msg, tcp bool) (*dns.Msg, error) {
	if !tcp {
		r, err := exchange(ctx, "udp", srv, m)
		if err != nil || !r.Truncated {
			return r, err
		}
	}
	return exchange(ctx, "tcp", srv, m)
}

// exchange asks m over one connection. Over UDP, a datagram that is not m's answer (a late
// answer to an earlier query, garbage) is passed over; over TCP it ends the exchange.
func exchange(ctx context.Context, network string, srv netip.AddrPort, m *dns.Msg) (*dns.Msg, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, network, srv.String())
	if err != nil {
		return nil, err
	}
	defer c.Close()
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(5 * time.Second)
	}
	_ = c.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Now()) }) // cancelled
	defer stop()
	conn := &dns.Conn{Conn: c, UDPSize: dns.MaxMsgSize}
	if err := conn.WriteMsg(m); err != nil {
		return nil, ctxErr(ctx, err)
	}
	for {
		var h dns.Header
		b, err := conn.ReadMsgHeader(&h)
		var ne net.Error
		if err != nil && (network != "udp" || errors.As(err, &ne) || errors.Is(err, os.ErrDeadlineExceeded)) {
			return nil, ctxErr(ctx, err)
		}
		if err != nil { // a datagram too short to be DNS
			continue
		}
		r := new(dns.Msg)
		switch uerr := r.Unpack(b); {
		case uerr != nil && h.Id == m.Id && h.Bits&(bitQR|bitTC) == bitQR|bitTC:
			// Truncated in the middle of a record: the header says so, and TCP asks again.
			r = &dns.Msg{MsgHdr: dns.MsgHdr{Id: h.Id, Response: true, Truncated: true}}
			return r, nil
		case uerr == nil && IsAnswer(r, m) == "":
			return r, nil
		case network != "udp":
			if uerr != nil {
				return nil, fmt.Errorf("the server's message does not parse: %w", uerr)
			}
			return nil, fmt.Errorf("the server's message is not the answer: %s", IsAnswer(r, m))
		}
		// Over UDP, another datagram (garbage, an earlier query's answer) is passed over.
	}
}

// The header's QR and TC bits (RFC 1035 4.1.1).
const (
	bitQR = 1 << 15
	bitTC = 1 << 9
)

// ctxErr is err, or the context's when it ended the exchange (its deadline or a
// cancellation set the socket's deadline to now).
func ctxErr(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("%w (%v)", cerr, err)
	}
	return err
}

// IsAnswer says why r is not the answer to q ("" when it is): a response with q's id whose
// question is q's; an error answered with a bare header (REFUSED, FORMERR: some servers
// send no question back) is q's too.
func IsAnswer(r, q *dns.Msg) string {
	switch {
	case !r.Response:
		return "the message is a query, not a response"
	case r.Id != q.Id:
		return fmt.Sprintf("the response has id %d, not the query's %d", r.Id, q.Id)
	case r.Opcode != q.Opcode:
		return fmt.Sprintf("the response's opcode is %s, not the query's", dns.OpcodeToString[r.Opcode])
	case len(r.Question) == 0 && r.Rcode != dns.RcodeSuccess:
		return ""
	case len(r.Question) != 1 || !strings.EqualFold(r.Question[0].Name, q.Question[0].Name) ||
		r.Question[0].Qtype != q.Question[0].Qtype || r.Question[0].Qclass != q.Question[0].Qclass:
		return "the response answers another question"
	}
	return ""
}

// errClass says in a word or two what a query's error was, whether the server was silent,
// and whether the failure was this host's: a UDP socket it could not connect (that only
// looks up the route), or a datagram its own firewall refused. A TCP connect's error may be
// a router's ICMP error, and a read's is (port unreachable, host unreachable).
func errClass(err error) (what string, silent, local bool) {
	var ne net.Error
	var oe *net.OpError
	switch {
	case errors.Is(err, context.Canceled):
		return "cancelled", true, false
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.As(err, &ne) && ne.Timeout():
		return "timeout", true, false
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused (port unreachable)", false, false
	case errors.As(err, &oe) && oe.Err != nil:
		local := oe.Op == "dial" && strings.HasPrefix(oe.Net, "udp") ||
			oe.Op == "write" && (errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES))
		return oe.Err.Error(), false, local
	}
	return err.Error(), false, false
}

// Addresses are the answer's records of type typ (A or AAAA) for name, at the end of its
// CNAME chain.
func Addresses(m *dns.Msg, name string, typ uint16) []netip.Addr {
	owner := dns.Fqdn(name)
	for range 16 { // a longer chain is a loop
		next := ""
		for _, rr := range m.Answer {
			if cn, ok := rr.(*dns.CNAME); ok && strings.EqualFold(cn.Hdr.Name, owner) {
				next = cn.Target
			}
		}
		if next == "" {
			break
		}
		owner = next
	}
	var out []netip.Addr
	for _, rr := range m.Answer {
		if !strings.EqualFold(rr.Header().Name, owner) {
			continue
		}
		switch r := rr.(type) {
		case *dns.A:
			if a, ok := netip.AddrFromSlice(r.A.To4()); ok && typ == dns.TypeA {
				out = append(out, a)
			}
		case *dns.AAAA:
			// An IPv4-mapped AAAA is not an IPv6 address to probe.
			if a, ok := netip.AddrFromSlice(r.AAAA.To16()); ok && typ == dns.TypeAAAA && !a.Is4In6() {
				out = append(out, a)
			}
		}
	}
	return out
}
