package resolv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// Stub resolves names as a stub resolver does: the hosts file first (the system's policy
// only), then each server in turn until one answers for the name; a name with fewer dots
// than ndots tries the search domains first.
type Stub struct {
	conf  func() Conf
	hosts *HostsFile // nil: no hosts file (a resolver the user named)
	name  string
}

var (
	systemOnce sync.Once
	system     *Stub
)

// System is the system's resolvers: /etc/hosts, then the nameservers of /etc/resolv.conf,
// both followed as they change. One is shared by the whole process.
func System() *Stub {
	systemOnce.Do(func() { system = NewSystem(ConfPath, HostsPath) })
	return system
}

// NewSystem is a system policy over the given files (tests name their own).
func NewSystem(confPath, hostsPath string) *Stub {
	cf, hf := NewConfFile(confPath), NewHostsFile(hostsPath)
	return &Stub{conf: cf.Conf, hosts: hf, name: "system"}
}

// Fixed is one resolver the user named: asked alone, without a hosts file or search
// domains (a name is taken as fully qualified).
func Fixed(server netip.AddrPort) *Stub {
	c := Conf{Servers: []netip.AddrPort{server}, Ndots: 0, Timeout: 5 * time.Second, Attempts: 1}
	return &Stub{conf: func() Conf { return c }, name: server.String()}
}

// String names the policy: "system" or the resolver's address.
func (s *Stub) String() string { return s.name }

// Conf is the configuration queries use now.
func (s *Stub) Conf() Conf { return s.conf() }

// Answer is a successful resolution.
type Answer struct {
	Addrs []netip.Addr
	// From is who answered: a resolver's ADDR:PORT, or the hosts file's path.
	From string
	Name string // the name that had the addresses (after the search domains)
}

// Error is a resolution that failed, and how.
type Error struct {
	Name string // as asked
	// Rcode is the answer that decided it (dns.RcodeNameError, RcodeServerFailure,
	// RcodeRefused, ...); -1 when no server answered at all.
	Rcode int
	// NoData: the name exists but has no address of the family asked for.
	NoData bool
	From   string // who answered so (the last server tried, when none answered)
	// Tried says what each server did, in order: "192.0.2.53:53 SERVFAIL", "...: timeout".
	Tried []string
}

func (e *Error) Error() string {
	what := "no answer"
	switch {
	case e.NoData:
		what = "no address of that family"
	case e.Rcode >= 0:
		what = dns.RcodeToString[e.Rcode]
	}
	return fmt.Sprintf("resolving %s: %s (%s)", e.Name, what, strings.Join(e.Tried, "; "))
}

// Timeout says no server answered before the deadline.
func (e *Error) Timeout() bool { return e.Rcode < 0 && !e.NoData }

// LookupNetIP resolves host (the probe package's Resolver).
func (s *Stub) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	a, err := s.Lookup(ctx, network, host)
	return a.Addrs, err
}

// Lookup resolves host to addresses of network ("ip", "ip4", "ip6"), saying who answered.
func (s *Stub) Lookup(ctx context.Context, network, host string) (Answer, error) {
	if s.hosts != nil {
		if addrs := s.hosts.Lookup(network, host); len(addrs) > 0 {
			return Answer{Addrs: addrs, From: s.hosts.f.path, Name: host}, nil
		}
		// Names under localhost are the loopback's, never asked of a server (RFC 6761
		// 6.3), also when the hosts file does not list them.
		if n := strings.ToLower(strings.TrimSuffix(host, ".")); n == "localhost" || strings.HasSuffix(n, ".localhost") {
			return Answer{Addrs: loopback(network), From: "localhost", Name: host}, nil
		}
	}
	c := s.conf()
	// As the C library searches: past NXDOMAIN, no data and SERVFAIL to the next name;
	// another failure (REFUSED, silence) ends the search. What is reported is the worst
	// of what was met: SERVFAIL, else no data, else NXDOMAIN.
	var nxdomain, nodata, servfail *Error
	var tried []string
	for _, name := range candidates(host, c) {
		ans, err := s.ask(ctx, c, network, name)
		if err == nil {
			return ans, nil
		}
		var e *Error
		if !errors.As(err, &e) {
			return Answer{}, err
		}
		for _, t := range e.Tried {
			if name != dns.Fqdn(host) { // a search domain's name: say which
				t = name + ": " + t
			}
			tried = append(tried, t)
		}
		switch {
		case e.NoData:
			nodata = cmpOr(nodata, e)
		case e.Rcode == dns.RcodeNameError:
			nxdomain = cmpOr(nxdomain, e)
		case e.Rcode == dns.RcodeServerFailure:
			servfail = cmpOr(servfail, e)
		default:
			servfail = cmpOr(servfail, e)
			return Answer{}, reported(host, tried, servfail)
		}
	}
	return Answer{}, reported(host, tried, cmpOr(servfail, cmpOr(nodata, nxdomain)))
}

// reported is the search's failure: e's, for host, with everything tried.
func reported(host string, tried []string, e *Error) *Error {
	out := *e
	out.Name, out.Tried = host, tried
	return &out
}

func loopback(network string) []netip.Addr {
	var out []netip.Addr
	for _, a := range []netip.Addr{netip.AddrFrom4([4]byte{127, 0, 0, 1}), netip.IPv6Loopback()} {
		if wants(network, a) {
			out = append(out, a)
		}
	}
	return out
}

// candidates are the names to ask for host, in order (resolv.conf(5)'s ndots).
func candidates(host string, c Conf) []string {
	if strings.HasSuffix(host, ".") {
		return []string{host}
	}
	var searched []string
	for _, d := range c.Search {
		searched = append(searched, host+"."+d+".")
	}
	if strings.Count(host, ".") >= c.Ndots {
		return append([]string{host + "."}, searched...)
	}
	return append(searched, host+".")
}

// ask asks the servers in turn for name's addresses until one answers with addresses or
// says the name has none (NXDOMAIN, or no data); a server that fails (SERVFAIL, REFUSED,
// silence) passes the question to the next. Each server gets an equal share of the time
// left, at most resolv.conf's timeout.
func (s *Stub) ask(ctx context.Context, c Conf, network, name string) (Answer, error) {
	fail := &Error{Name: name, Rcode: -1}
	for i, srv := range c.Servers {
		share := c.Timeout
		if dl, ok := ctx.Deadline(); ok {
			share = min(share, time.Until(dl)/time.Duration(len(c.Servers)-i))
		}
		if share <= 0 {
			fail.Tried = append(fail.Tried, srv.String()+": no time left")
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, share)
		addrs, rcode, err := queryAddrs(sctx, srv, network, name)
		cancel()
		if err == nil || fail.Rcode < 0 { // who answered, else the last one asked
			fail.From = srv.String()
		}
		switch {
		case err != nil:
			fail.Tried = append(fail.Tried, fmt.Sprintf("%s: %s", srv, errWord(err)))
			continue
		case rcode == dns.RcodeSuccess && len(addrs) > 0:
			return Answer{Addrs: order(addrs), From: srv.String(), Name: name}, nil
		case rcode == dns.RcodeSuccess:
			fail.Tried = append(fail.Tried, srv.String()+" NOERROR, no address")
			fail.Rcode, fail.NoData = rcode, true
			return Answer{}, fail
		case rcode == dns.RcodeNameError:
			fail.Tried = append(fail.Tried, srv.String()+" NXDOMAIN")
			fail.Rcode = rcode
			return Answer{}, fail
		}
		fail.Tried = append(fail.Tried, srv.String()+" "+dns.RcodeToString[rcode])
		fail.Rcode = rcode
	}
	return Answer{}, fail
}

// errWord says in a word or two what a query's error was.
func errWord(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "cancelled"
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		return oe.Err.Error()
	}
	return err.Error()
}

// queryAddrs asks srv for name's A and/or AAAA records (both at once for "ip"). rcode is
// the answer's: NXDOMAIN from either decides, else a failure of both; addresses of one
// family answer even if the other query failed.
func queryAddrs(ctx context.Context, srv netip.AddrPort, network, name string) ([]netip.Addr, int, error) {
	var types []uint16
	switch network {
	case "ip4":
		types = []uint16{dns.TypeA}
	case "ip6":
		types = []uint16{dns.TypeAAAA}
	default:
		types = []uint16{dns.TypeA, dns.TypeAAAA}
	}
	type res struct {
		addrs []netip.Addr
		rcode int
		err   error
	}
	out := make([]res, len(types))
	var wg sync.WaitGroup
	for i, t := range types {
		wg.Go(func() {
			m, err := Exchange(ctx, srv, Query(name, t, false))
			if err != nil {
				out[i].err = err
				return
			}
			out[i].rcode, out[i].addrs = m.Rcode, Addresses(m, t)
		})
	}
	wg.Wait()
	var addrs []netip.Addr
	rcode, failed := dns.RcodeSuccess, 0
	var firstErr error
	for _, r := range out {
		switch {
		case r.err != nil:
			failed++
			firstErr = cmpOr(firstErr, r.err)
		case r.rcode == dns.RcodeNameError:
			return nil, r.rcode, nil
		case r.rcode != dns.RcodeSuccess:
			failed++
			rcode = r.rcode
		}
		addrs = append(addrs, r.addrs...)
	}
	switch {
	case len(addrs) > 0:
		return addrs, dns.RcodeSuccess, nil
	case failed == 0:
		return nil, dns.RcodeSuccess, nil
	case rcode != dns.RcodeSuccess:
		return nil, rcode, nil
	}
	return nil, 0, firstErr
}

func cmpOr[E comparable](a, b E) E {
	var zero E
	if a != zero {
		return a
	}
	return b
}

// Query is a recursive query for name/typ with EDNS0 (a 1232-byte UDP payload, the DNS
// flag day's size that avoids fragments); dnssec sets the DO bit.
func Query(name string, typ uint16, dnssec bool) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), typ)
	m.RecursionDesired = true
	m.SetEdns0(EDNSSize, dnssec)
	return m
}

// EDNSSize is the UDP payload size reachd's queries offer.
const EDNSSize = 1232

// Exchange sends m to srv over UDP, and over TCP when the answer comes truncated.
func Exchange(ctx context.Context, srv netip.AddrPort, m *dns.Msg) (*dns.Msg, error) {
	c := &dns.Client{Net: "udp", UDPSize: EDNSSize}
	r, _, err := c.ExchangeContext(ctx, m, srv.String())
	if err == nil && r.Truncated {
		c.Net = "tcp"
		r, _, err = c.ExchangeContext(ctx, m, srv.String())
	}
	return r, err
}

// Addresses are the answer's records of type typ (A or AAAA), whoever owns them (the end
// of a CNAME chain).
func Addresses(m *dns.Msg, typ uint16) []netip.Addr {
	var out []netip.Addr
	for _, rr := range m.Answer {
		switch r := rr.(type) {
		case *dns.A:
			if a, ok := netip.AddrFromSlice(r.A.To4()); ok && typ == dns.TypeA {
				out = append(out, a)
			}
		case *dns.AAAA:
			if a, ok := netip.AddrFromSlice(r.AAAA.To16()); ok && typ == dns.TypeAAAA {
				out = append(out, a)
			}
		}
	}
	return out
}

// order puts the family this host can reach first when both came (RFC 6724's first rule,
// then its preference for IPv6): a connected UDP socket tells, without sending anything.
func order(addrs []netip.Addr) []netip.Addr {
	var v4, v6 []netip.Addr
	for _, a := range addrs {
		if a.Is4() {
			v4 = append(v4, a)
		} else {
			v6 = append(v6, a)
		}
	}
	if len(v4) == 0 || len(v6) == 0 {
		return addrs
	}
	if c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(v6[0], 53))); err == nil {
		c.Close()
		return append(v6, v4...)
	}
	return append(v4, v6...)
}
