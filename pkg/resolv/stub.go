package resolv

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
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
}

var (
	systemOnce sync.Once
	system     *Stub
	systemConf *ConfFile
)

// System is the system's resolvers: /etc/hosts, then the nameservers of /etc/resolv.conf,
// both followed as they change. One is shared by the whole process.
func System() *Stub {
	systemOnce.Do(func() {
		systemConf = NewConfFile(ConfPath)
		system = &Stub{conf: systemConf.Conf, hosts: NewHostsFile(HostsPath)}
	})
	return system
}

// SystemConf is the system's resolv.conf, as System follows it.
func SystemConf() *ConfFile {
	System()
	return systemConf
}

// NewSystem is a system policy over the given files (tests name their own).
func NewSystem(confPath, hostsPath string) *Stub {
	cf, hf := NewConfFile(confPath), NewHostsFile(hostsPath)
	return &Stub{conf: cf.Conf, hosts: hf}
}

// Fixed is one resolver the user named: asked alone, without a hosts file or search
// domains (a name is taken as fully qualified).
func Fixed(server netip.AddrPort) *Stub {
	c := Conf{Servers: []netip.AddrPort{server}, Ndots: 0, Timeout: 30 * time.Second}
	return &Stub{conf: func() Conf { return c }}
}

// Answer is a successful resolution.
type Answer struct {
	Addrs []netip.Addr
	// From is who answered: a resolver's ADDR:PORT, the hosts file's path, or "localhost".
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
	// With no answer: Silent, some server did not answer in its time; Local, every
	// failure was this host's (no route, an address it cannot use, its own firewall);
	// else the servers refused the query or could not be reached (an ICMP error).
	Silent, Local bool
	From          string // who answered so (the last server tried, when none answered)
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

// LookupNetIP resolves host (the probe package's Resolver).
func (s *Stub) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	a, err := s.Lookup(ctx, network, host)
	return a.Addrs, err
}

// Lookup resolves host to addresses of network ("ip", "ip4", "ip6"), saying who answered.
// Addresses of both families come in the order RFC 6724 prefers from this host.
func (s *Stub) Lookup(ctx context.Context, network, host string) (Answer, error) {
	n := strings.ToLower(strings.TrimSuffix(host, "."))
	if s.hosts != nil {
		if addrs := s.hosts.Lookup(network, host); len(addrs) > 0 {
			return Answer{Addrs: order(addrs), From: s.hosts.f.path, Name: host}, nil
		}
		// Names under localhost are the loopback's, never asked of a server (RFC 6761
		// 6.3), also when the hosts file does not list them.
		if n == "localhost" || strings.HasSuffix(n, ".localhost") {
			return Answer{Addrs: order(loopback(network)), From: "localhost", Name: host}, nil
		}
	}
	if n == "onion" || strings.HasSuffix(n, ".onion") { // RFC 7686: never asked of DNS
		return Answer{}, &Error{Name: host, Rcode: dns.RcodeNameError, From: "reachd", Tried: []string{"an .onion name is not resolved by DNS (RFC 7686)"}}
	}
	c := s.conf()
	if len(c.Servers) > stubServers && s.hosts != nil {
		c.Servers = c.Servers[:stubServers]
	}
	return s.search(ctx, c, network, host)
}

// search asks for each name of host's search list in turn: past NXDOMAIN, no data and a
// server failure (SERVFAIL; FORMERR and NOTIMP too, as Go's resolver goes on) to the next
// name; another failure (REFUSED, silence) ends the search. As the C library reports it:
// when the name as written was asked first, its own answer; else the worst of what was
// met: a failure, else no data, else NXDOMAIN. A search the deadline cut short is silence.
func (s *Stub) search(ctx context.Context, c Conf, network, host string) (Answer, error) {
	var nxdomain, nodata, failed, asIs *Error
	var tried []string
	names := candidates(host, c)
	for i, name := range names {
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
		if i == 0 && name == dns.Fqdn(host) {
			asIs = e
		}
		switch e.Rcode {
		case dns.RcodeSuccess:
			nodata = cmpOr(nodata, e)
		case dns.RcodeNameError:
			nxdomain = cmpOr(nxdomain, e)
		case dns.RcodeServerFailure, dns.RcodeFormatError, dns.RcodeNotImplemented:
			failed = cmpOr(failed, e)
		default:
			failed = cmpOr(failed, e)
			return Answer{}, reported(host, tried, cmpOr(asIs, failed))
		}
		if ctx.Err() != nil && i < len(names)-1 {
			cut := &Error{Rcode: -1, Silent: true, From: e.From}
			tried = append(tried, "no time left for the rest of the search list")
			return Answer{}, reported(host, tried, cmpOr(asIs, cut))
		}
	}
	return Answer{}, reported(host, tried, cmpOr(asIs, cmpOr(failed, cmpOr(nodata, nxdomain))))
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

// candidates are the names to ask for host, in order (resolv.conf(5)'s ndots); a search
// name longer than a name may be is not asked.
func candidates(host string, c Conf) []string {
	if strings.HasSuffix(host, ".") {
		return []string{host}
	}
	var searched []string
	for _, d := range c.Search {
		if n := host + "." + d + "."; isName(n[:len(n)-1]) {
			searched = append(searched, n)
		}
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
	fail := &Error{Name: name, Rcode: -1, Local: true}
	for i, srv := range c.Servers {
		share := c.Timeout
		if dl, ok := ctx.Deadline(); ok {
			share = min(share, time.Until(dl)/time.Duration(len(c.Servers)-i))
		}
		if share <= 0 || ctx.Err() != nil {
			fail.Tried = append(fail.Tried, srv.String()+": no time left")
			fail.Silent, fail.Local = true, false
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, share)
		addrs, rcode, err := queryAddrs(sctx, srv, network, name, c.UseTCP)
		cancel()
		if err == nil || fail.Rcode < 0 { // who answered, else the last one asked
			fail.From = srv.String()
		}
		switch {
		case err != nil:
			what, silent, local := errClass(err)
			fail.Tried = append(fail.Tried, fmt.Sprintf("%s: %s", srv, what))
			fail.Silent, fail.Local = fail.Silent || silent, fail.Local && local
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

// queryAddrs asks srv for name's A and/or AAAA records (both at once for "ip"). rcode is
// the answer's: NXDOMAIN from either decides, else a failure of both; addresses of one
// family answer even if the other query failed.
func queryAddrs(ctx context.Context, srv netip.AddrPort, network, name string, tcp bool) ([]netip.Addr, int, error) {
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
			m, err := Exchange(ctx, srv, Query(name, t, false), tcp)
			if err != nil {
				out[i].err = err
				return
			}
			out[i].rcode, out[i].addrs = m.Rcode, Addresses(m, name, t)
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
