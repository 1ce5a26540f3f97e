// Package testdns is a DNS server for tests, on github.com/miekg/dns: an authoritative
// zone with the shapes resolvers meet (several families, a name with only AAAA, an alias,
// an answer too big for UDP, a "validated" subtree), a zone whose upstream is dead
// (SERVFAIL, as a forwarder answers it), and REFUSED for everything else (a server that
// offers no recursion to strangers).
package testdns

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// Zone is the authoritative zone; Broken the zone forwarded to a dead upstream; Bare's
// names are REFUSED with a bare header (no question, as some servers answer); Slow's
// names are answered after the handler's SlowWait.
const (
	Zone   = "lab.example."
	Broken = "broken.example."
	Bare   = "bare.example."
	Slow   = "slow.example."
)

// Names of the zone.
const (
	WWW    = "www." + Zone    // A and AAAA
	V6Only = "v6only." + Zone // AAAA only
	Alias  = "alias." + Zone  // CNAME www
	Mail   = "mail." + Zone   // MX
	Big    = "big." + Zone    // 40 TXT records: truncated over UDP
	Secure = "secure." + Zone // A, with AD set when DO is asked (a validating resolver)
	Wild   = "wild." + Zone   // every name under it has an A record
	TTL    = 300
)

// Handler answers as the package says. Upstream is where Broken is forwarded (nothing
// answers there, so the answer is SERVFAIL after UpstreamWait).
type Handler struct {
	V4, V6       string // the addresses www has
	Upstream     string
	UpstreamWait time.Duration
	// Dial opens the connection to the upstream (in a test's network namespace); nil:
	// net.Dial.
	Dial     func(network, addr string) (net.Conn, error)
	SlowWait time.Duration
}

func (h *Handler) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	if len(req.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		_ = w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	switch {
	case dns.IsSubDomain(Zone, name):
		h.authoritative(m, q, name, req)
	case name == "." && q.Qtype == dns.TypeNS: // a root hint, as a resolver has it
		m.Answer = append(m.Answer, &dns.NS{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeNS, Class: dns.ClassINET, Ttl: 60}, Ns: "ns." + Zone})
	case dns.IsSubDomain(Bare, name):
		m.Question, m.Rcode = nil, dns.RcodeRefused
		_ = w.WriteMsg(m)
		return
	case dns.IsSubDomain(Slow, name):
		time.Sleep(h.SlowWait)
		m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: TTL}, A: net.ParseIP(h.V4)})
	case dns.IsSubDomain(Broken, name):
		m.RecursionAvailable = true
		if h.forward(req) != nil {
			m.Rcode = dns.RcodeServerFailure
		}
	default:
		m.Rcode = dns.RcodeRefused
	}
	if opt := req.IsEdns0(); opt != nil {
		m.SetEdns0(1232, opt.Do())
	}
	if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
		size := dns.MinMsgSize
		if opt := req.IsEdns0(); opt != nil {
			size = int(opt.UDPSize())
		}
		m.Truncate(size)
	}
	_ = w.WriteMsg(m)
}

// forward asks the upstream, as a forwarding resolver does.
func (h *Handler) forward(req *dns.Msg) error {
	dial := h.Dial
	if dial == nil {
		dial = net.Dial
	}
	conn, err := dial("udp", h.Upstream)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(h.UpstreamWait))
	c := &dns.Client{Timeout: h.UpstreamWait}
	_, _, err = c.ExchangeWithConn(req, &dns.Conn{Conn: conn})
	return err
}

func (h *Handler) authoritative(m *dns.Msg, q dns.Question, name string, req *dns.Msg) {
	m.Authoritative = true
	rr := func(s string) dns.RR {
		r, err := dns.NewRR(s)
		if err != nil {
			panic(err)
		}
		return r
	}
	records := map[string][]string{
		Zone:   {fmt.Sprintf("%s %d IN NS ns.%s", Zone, TTL, Zone)},
		WWW:    {fmt.Sprintf("%s %d IN A %s", WWW, TTL, h.V4), fmt.Sprintf("%s %d IN AAAA %s", WWW, TTL, h.V6)},
		V6Only: {fmt.Sprintf("%s %d IN AAAA %s", V6Only, TTL, h.V6)},
		Alias:  {fmt.Sprintf("%s %d IN CNAME %s", Alias, TTL, WWW)},
		Mail:   {fmt.Sprintf("%s %d IN MX 10 %s", Mail, TTL, WWW)},
		Secure: {fmt.Sprintf("%s %d IN A %s", Secure, TTL, h.V4)},
	}
	for i := range 40 {
		records[Big] = append(records[Big], fmt.Sprintf("%s %d IN TXT \"record %02d %s\"", Big, TTL, i, strings.Repeat("x", 60)))
	}
	owned, ok := records[name]
	if dns.IsSubDomain(Wild, name) && name != Wild {
		owned, ok = []string{fmt.Sprintf("%s %d IN A %s", name, TTL, h.V4)}, true
	}
	if !ok {
		m.Rcode = dns.RcodeNameError
		m.Ns = append(m.Ns, rr(fmt.Sprintf("%s 60 IN SOA ns.%s host.%s 1 3600 600 86400 60", Zone, Zone, Zone)))
		return
	}
	for _, s := range owned {
		r := rr(s)
		switch {
		case r.Header().Rrtype == q.Qtype, q.Qtype == dns.TypeANY:
			m.Answer = append(m.Answer, r)
		case r.Header().Rrtype == dns.TypeCNAME:
			m.Answer = append(m.Answer, r)
			for _, t := range records[WWW] {
				if t := rr(t); t.Header().Rrtype == q.Qtype {
					m.Answer = append(m.Answer, t)
				}
			}
		}
	}
	if name == Secure && req.IsEdns0() != nil && req.IsEdns0().Do() {
		m.AuthenticatedData = true
	}
}

// Server is a running server: UDP and TCP on one port, and DoT when TLS is given.
type Server struct {
	servers []*dns.Server
}

// Listeners are what a server serves on; nil ones are not served.
type Listeners struct {
	UDP net.PacketConn
	TCP net.Listener
	DoT net.Listener // served over TLS with Config
	TLS *tls.Config
}

// Start serves h on the listeners.
func Start(h dns.Handler, ls Listeners) (*Server, error) {
	s := &Server{}
	var wg sync.WaitGroup
	started := func(srv *dns.Server) {
		wg.Add(1)
		srv.NotifyStartedFunc = wg.Done
		s.servers = append(s.servers, srv)
	}
	if ls.UDP != nil {
		started(&dns.Server{PacketConn: ls.UDP, Handler: h})
	}
	if ls.TCP != nil {
		started(&dns.Server{Listener: ls.TCP, Handler: h})
	}
	if ls.DoT != nil {
		started(&dns.Server{Listener: tls.NewListener(ls.DoT, ls.TLS), Net: "tcp-tls", Handler: h})
	}
	for _, srv := range s.servers {
		go func() { _ = srv.ActivateAndServe() }()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		s.Close()
		return nil, fmt.Errorf("the DNS server did not start")
	}
	return s, nil
}

// Close stops the server.
func (s *Server) Close() {
	for _, srv := range s.servers {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = srv.ShutdownContext(ctx)
		cancel()
	}
}

// Silent reads queries on pc and never answers, until pc is closed.
func Silent(pc net.PacketConn) {
	buf := make([]byte, 65536)
	for {
		if _, _, err := pc.ReadFrom(buf); err != nil {
			return
		}
	}
}
