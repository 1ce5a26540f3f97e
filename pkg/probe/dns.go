package probe

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"
	"github.com/spf13/pflag"

	"reachd/pkg/resolv"
	"reachd/pkg/target"
	"reachd/pkg/verdict"
)

// dnsKind: one question asked of each resolver, a verdict each: the servers given, else
// every nameserver of resolv.conf, so that a gateway sees which of its resolvers is broken.
// Over UDP the query and its answer are timed at the wire like any datagram; a truncated
// answer asks again over TCP; --transport tcp and dot go over the wire-timed dialer, so a
// failure below DNS keeps the tcp and tls kinds' reasons and evidence.
var dnsKind = register(&Kind{
	Name:    "dns",
	Order:   4,
	Summary: "DNS query to each resolver: rcode, answers and their TTLs, the query's round trip",
	Example: "  reachd probe dns example.com\n" +
		"  reachd probe dns --server 198.51.100.53 --server '[2001:db8::53]' --type AAAA example.com\n" +
		"  reachd probe dns --transport dot --server 198.51.100.53 --server-name dns.example.net example.com\n" +
		"  reachd probe dns --type MX --expect-answer 'mx[0-9]\\.example\\.com' example.com",
	NameTarget: true,
	Needs:      Needs{Timestamps: true, Tracepoints: true},
	NewOptions: func() KindOptions { return newDNSOptions() },
	run:        runDNS,
})

// DNSOptions are the dns kind's options.
type DNSOptions struct {
	TLSOptions                   // DoT's certificate checks (--ca, --server-name, ...)
	Servers     []netip.AddrPort // --server; none: resolv.conf's nameservers
	Type        uint16           // --type; 0: A for a name, PTR for an address
	Transport   string           // udp, tcp, dot
	ExpectRcode int              // --expect-rcode
	Expect      *regexp.Regexp   // --expect-answer: some answer record must match
	DNSSEC      bool             // --dnssec: DO set, AD required
	Recurse     bool             // --recurse: RD set (off for an authoritative server)

	conf  *resolv.ConfFile // where the system's resolvers are listed
	flags struct {
		servers                       []string
		typ, transport, rcode, expect string
	}
}

// Transports of the dns kind.
const (
	TransportUDP = "udp"
	TransportTCP = "tcp"
	TransportDoT = "dot"
)

func newDNSOptions() *DNSOptions {
	return &DNSOptions{Transport: TransportUDP, Recurse: true}
}

// MaxDNSServers bounds --server.
const MaxDNSServers = 16

func (o *DNSOptions) AddFlags(fs *pflag.FlagSet) {
	o.TLSOptions.AddFlags(fs)
	fs.StringArrayVar(&o.flags.servers, "server", nil, "resolver to ask, ADDR[:PORT] (repeatable; one verdict each; default: each nameserver of /etc/resolv.conf)")
	fs.StringVar(&o.flags.typ, "type", "", "record type to ask for: A, AAAA, MX, TXT, SRV, NS, SOA, PTR, CAA, ... (default A; PTR for an address)")
	fs.StringVar(&o.flags.transport, "transport", TransportUDP, "udp (a truncated answer is asked again over TCP), tcp or dot (DNS over TLS, port 853)")
	fs.StringVar(&o.flags.rcode, "expect-rcode", "NOERROR", "the answer's rcode that is ok: NOERROR, NXDOMAIN, ...")
	fs.StringVar(&o.flags.expect, "expect-answer", "", "regular expression some answer record must match (as a zone-file line: NAME TTL IN TYPE DATA)")
	fs.BoolVar(&o.DNSSEC, "dnssec", false, "ask for DNSSEC records (DO) and require an authenticated answer (AD)")
	fs.BoolVar(&o.Recurse, "recurse", true, "ask for recursion (RD); --recurse=false for an authoritative server")
}

func (o *DNSOptions) Check(set func(string) bool) error {
	if err := o.TLSOptions.Check(set); err != nil {
		return err
	}
	switch o.flags.transport {
	case TransportUDP, TransportTCP, TransportDoT:
		o.Transport = o.flags.transport
	default:
		return fmt.Errorf("--transport %q: want udp, tcp or dot", o.flags.transport)
	}
	if o.Transport != TransportDoT && (o.CAFile != "" || o.ServerName != "" || o.RequireStaple || o.WarnDays > 0) {
		return errors.New("--ca, --server-name, --require-staple and --warn-days are for --transport dot")
	}
	if o.flags.typ != "" {
		t, err := parseRRType(o.flags.typ)
		if err != nil {
			return err
		}
		o.Type = t
	}
	rc, ok := dns.StringToRcode[strings.ToUpper(o.flags.rcode)]
	if !ok {
		return fmt.Errorf("--expect-rcode %q: want an rcode such as NOERROR, NXDOMAIN, SERVFAIL, REFUSED", o.flags.rcode)
	}
	o.ExpectRcode = rc
	if o.flags.expect != "" {
		re, err := regexp.Compile(o.flags.expect)
		if err != nil {
			return fmt.Errorf("--expect-answer %q is not a regular expression: %v", o.flags.expect, err)
		}
		o.Expect = re
		if o.ExpectRcode != dns.RcodeSuccess {
			return fmt.Errorf("--expect-answer needs answers: it cannot go with --expect-rcode %s", dns.RcodeToString[o.ExpectRcode])
		}
	}
	if len(o.flags.servers) > MaxDNSServers {
		return fmt.Errorf("at most %d --server, got %d", MaxDNSServers, len(o.flags.servers))
	}
	o.Servers = o.Servers[:0]
	for _, s := range o.flags.servers {
		ap, err := parseServer(s, o.defaultPort())
		if err != nil {
			return err
		}
		if slices.Contains(o.Servers, ap) {
			return fmt.Errorf("--server %s is given twice", ap)
		}
		o.Servers = append(o.Servers, ap)
	}
	return nil
}

func (o *DNSOptions) defaultPort() uint16 {
	if o.Transport == TransportDoT {
		return 853
	}
	return 53
}

// parseRRType accepts a record type's name (any case) or TYPEnnn / a number.
func parseRRType(s string) (uint16, error) {
	u := strings.ToUpper(s)
	if t, ok := dns.StringToType[u]; ok && t != dns.TypeNone {
		return t, nil
	}
	if n, err := strconv.ParseUint(strings.TrimPrefix(u, "TYPE"), 10, 16); err == nil && n > 0 {
		return uint16(n), nil
	}
	return 0, fmt.Errorf("--type %q is not a record type (A, AAAA, MX, TXT, SRV, NS, SOA, PTR, CAA, ... or TYPEnnn)", s)
}

// parseServer reads --server ADDR[:PORT]: an address, with its zone if link-local.
func parseServer(s string, port uint16) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil && ap.Port() != 0 {
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
	}
	if a, err := netip.ParseAddr(strings.Trim(s, "[]")); err == nil {
		return netip.AddrPortFrom(a.Unmap(), port), nil
	}
	return netip.AddrPort{}, fmt.Errorf("--server %q is not ADDR or ADDR:PORT (an address: a resolver's name would need a resolver; IPv6 as [2001:db8::53]:53)", s)
}

// servers are the servers to ask: --server's, else resolv.conf's as it is now.
func (o *DNSOptions) servers() ([]netip.AddrPort, string) {
	if len(o.Servers) > 0 {
		return o.Servers, "--server"
	}
	conf := o.conf
	if conf == nil { // the file the system's resolver follows: the two agree
		conf = resolv.SystemConf()
	}
	c := conf.Conf()
	if o.Transport == TransportDoT || c.Defaulted { // resolv.conf's servers listen on 53
		out := make([]netip.AddrPort, len(c.Servers))
		for i, s := range c.Servers {
			out[i] = netip.AddrPortFrom(s.Addr(), o.defaultPort())
		}
		return out, conf.Path()
	}
	return c.Servers, conf.Path()
}

// question is what an attempt asks about t: its name (for an address, the reverse name)
// and the type (by default A for a name, PTR for an address).
func (o *DNSOptions) question(t target.Target) (string, uint16) {
	typ := o.Type
	if t.IsLiteral() {
		if typ == 0 {
			typ = dns.TypePTR
		}
		name, _ := dns.ReverseAddr(t.Addr.WithZone("").String())
		return name, typ
	}
	if typ == 0 {
		typ = dns.TypeA
	}
	return dns.Fqdn(t.Name), typ
}

// query builds the attempt's question.
func (o *DNSOptions) query(t target.Target) *dns.Msg {
	name, typ := o.question(t)
	m := resolv.Query(name, typ, o.DNSSEC)
	m.RecursionDesired = o.Recurse
	return m
}

// stubName says which local stub resolver srv is, if it is one.
func stubName(srv netip.AddrPort) string {
	switch srv.Addr() {
	case netip.AddrFrom4([4]byte{127, 0, 0, 53}), netip.AddrFrom4([4]byte{127, 0, 0, 54}):
		return "systemd-resolved"
	}
	return ""
}

// dnsEvidence is what a dns attempt tells beyond the common result.
type dnsEvidence struct {
	conn tlsEvidence // over TCP and DoT: the connection's handshakes and phases
	udp  *udpEvidence
	dns  *verdict.DNS
}

func (e *dnsEvidence) fill(v *verdict.Verdict, since func(time.Time) *verdict.Millis) {
	if e.udp != nil {
		w := wireOf(v)
		w.UDPTx, w.UDPRx = since(e.udp.tx), since(e.udp.rx)
	}
	e.conn.fill(v, since)
	v.DNS = e.dns
}

func runDNS(ctx context.Context, a Attempt) Result {
	o, _ := a.Opts.(*DNSOptions)
	if o == nil {
		o = newDNSOptions()
	}
	q := o.query(a.Target)
	qq := q.Question[0]
	ev := &dnsEvidence{dns: &verdict.DNS{Server: a.Addr.String(), Stub: stubName(a.Addr), Transport: o.Transport,
		Question: fmt.Sprintf("%s IN %s", qq.Name, dns.TypeToString[qq.Qtype])}}
	var reply *dns.Msg
	var res Result
	if o.Transport == TransportUDP {
		reply, res = dnsOverUDP(ctx, a, q, ev)
		if reply != nil && reply.Truncated {
			ev.dns.Truncated, ev.dns.Transport = true, TransportTCP
			udpRes := res
			if reply, res = dnsOverStream(ctx, a, o, q, ev); reply == nil {
				res.Detail = "the UDP answer came truncated (" + udpRes.Detail + "); over TCP: " + res.Detail
			}
		}
	} else {
		reply, res = dnsOverStream(ctx, a, o, q, ev)
	}
	if reply != nil {
		res = o.judge(q, reply, res, ev.dns)
	}
	res.Kind = ev
	return res
}
