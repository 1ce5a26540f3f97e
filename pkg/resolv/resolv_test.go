package resolv

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"reachd/internal/testdns"
)

// serve starts a testdns server on 127.0.0.1 (UDP and TCP, one port).
func serve(t *testing.T) netip.AddrPort {
	t.Helper()
	var pc net.PacketConn
	var ln net.Listener
	for range 20 {
		var err error
		if pc, err = net.ListenPacket("udp4", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		if ln, err = net.Listen("tcp", pc.LocalAddr().String()); err == nil {
			break
		}
		pc.Close()
	}
	h := &testdns.Handler{V4: "192.0.2.80", V6: "2001:db8::80", Upstream: silent(t).String(), UpstreamWait: 50 * time.Millisecond,
		SlowWait: 2200 * time.Millisecond}
	srv, err := testdns.Start(h, testdns.Listeners{UDP: pc, TCP: ln})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	return netip.MustParseAddrPort(pc.LocalAddr().String())
}

// silent is a UDP port that reads queries and never answers.
func silent(t *testing.T) netip.AddrPort {
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go testdns.Silent(pc)
	t.Cleanup(func() { pc.Close() })
	return netip.MustParseAddrPort(pc.LocalAddr().String())
}

// TestHostDomain: with no search line, the host name's domain is searched (glibc, Go);
// a search line, even an empty one, keeps it out; a domain that cannot be asked is dropped.
func TestHostDomain(t *testing.T) {
	if got := ParseConf(nil).withHostDomain("gw1.site.example"); len(got.Search) != 1 || got.Search[0] != "site.example" {
		t.Errorf("no search line: %v", got.Search)
	}
	if got := ParseConf([]byte("search .\n")).withHostDomain("gw1.site.example"); len(got.Search) != 0 {
		t.Errorf("search .: %v", got.Search)
	}
	if got := ParseConf([]byte("search " + strings.Repeat("x", 64) + ".example ok.example\n")); len(got.Search) != 1 || got.Search[0] != "ok.example" {
		t.Errorf("a 64-octet label: %v", got.Search)
	}
	if got := ParseConf(nil).withHostDomain("gw1"); len(got.Search) != 0 {
		t.Errorf("an undotted host name: %v", got.Search)
	}
}

func files(t *testing.T, conf, hosts string) (string, string) {
	dir := t.TempDir()
	c, h := filepath.Join(dir, "resolv.conf"), filepath.Join(dir, "hosts")
	for p, s := range map[string]string{c: conf, h: hosts} {
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return c, h
}

func ns(a netip.AddrPort) string {
	return "nameserver " + a.Addr().String() + "\n"
}

// confWithPorts is a resolv.conf naming servers on other ports than 53 (which the file
// cannot say): the test rewrites the parsed servers.
func stubFor(t *testing.T, search string, hosts string, servers ...netip.AddrPort) *Stub {
	c, h := files(t, search, hosts)
	s := NewSystem(c, h)
	parse := s.conf
	s.conf = func() Conf {
		cf := parse()
		cf.Servers = servers
		return cf
	}
	return s
}

func TestStub(t *testing.T) {
	// A host name with a domain the test server refuses: the files name no search line,
	// so it is searched too, after the name as written (whose answer is the one reported).
	hostname = func() (string, error) { return "host1.corp.example", nil }
	defer func() { hostname = os.Hostname }()
	good, quiet := serve(t), silent(t)
	closed := netip.MustParseAddrPort("127.0.0.1:9") // discard: nothing listens
	ctx := func() context.Context {
		c, cancel := context.WithTimeout(context.Background(), time.Second)
		t.Cleanup(cancel)
		return c
	}
	for _, c := range []struct {
		name, host, network, search, hosts string
		servers                            []netip.AddrPort
		want                               string // an address, or the error's words
		from                               string
		rcode                              int
	}{
		{"answer", "www.lab.example", "ip4", "", "", []netip.AddrPort{good}, "192.0.2.80", good.String(), 0},
		{"localhost", "db.localhost.", "ip6", "", "", []netip.AddrPort{quiet}, "::1", "localhost", 0},
		{"hosts first", "www.lab.example", "ip", "", "192.0.2.7 www.lab.example\n", []netip.AddrPort{good}, "192.0.2.7", "hosts", 0},
		{"search domain", "www", "ip4", "search nope.lab.example lab.example\n", "", []netip.AddrPort{good}, "192.0.2.80", good.String(), 0},
		{"search past SERVFAIL", "www", "ip4", "search broken.example lab.example\n", "", []netip.AddrPort{good}, "192.0.2.80", good.String(), 0},
		{"search stops at REFUSED", "www", "ip4", "search example.org lab.example\n", "", []netip.AddrPort{good}, "REFUSED", good.String(), dns.RcodeRefused},
		{"silent, then the next", "www.lab.example", "ip6", "", "", []netip.AddrPort{quiet, good}, "2001:db8::80", good.String(), 0},
		{"closed, then the next", "www.lab.example", "ip4", "", "", []netip.AddrPort{closed, good}, "192.0.2.80", good.String(), 0},
		{"nxdomain", "nope.lab.example", "ip", "", "", []netip.AddrPort{good}, "NXDOMAIN", good.String(), dns.RcodeNameError},
		{"no data", "v6only.lab.example", "ip4", "", "", []netip.AddrPort{good}, "NOERROR, no address", good.String(), dns.RcodeSuccess},
		{"servfail", "x.broken.example", "ip4", "", "", []netip.AddrPort{good}, "SERVFAIL", good.String(), dns.RcodeServerFailure},
		{"refused", "example.org", "ip4", "", "", []netip.AddrPort{good}, "REFUSED", good.String(), dns.RcodeRefused},
		{"refused, a bare header", "x.bare.example", "ip4", "", "", []netip.AddrPort{good}, "REFUSED", good.String(), dns.RcodeRefused},
		{"a slow answer (over 2 s)", "x.slow.example", "ip4", "", "", []netip.AddrPort{good}, "192.0.2.80", good.String(), 0},
		{".onion", "x.onion", "ip4", "", "", []netip.AddrPort{good}, "RFC 7686", "reachd", dns.RcodeNameError},
		{"nobody answers", "www.lab.example", "ip4", "", "", []netip.AddrPort{quiet, closed}, "timeout", closed.String(), -1},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := stubFor(t, c.search, c.hosts, c.servers...)
			cx := ctx()
			if strings.HasPrefix(c.name, "a slow") {
				var cancel context.CancelFunc
				cx, cancel = context.WithTimeout(context.Background(), 4*time.Second)
				defer cancel()
			}
			ans, err := s.Lookup(cx, c.network, c.host)
			if err == nil {
				if ans.Addrs[0].String() != c.want || !strings.Contains(ans.From, c.from) {
					t.Fatalf("got %v from %s; want %s from %s", ans.Addrs, ans.From, c.want, c.from)
				}
				return
			}
			var e *Error
			if !errors.As(err, &e) || !strings.Contains(err.Error(), c.want) || e.From != c.from || e.Rcode != c.rcode {
				t.Fatalf("got %v (%+v); want ~%q from %s rcode %d", err, e, c.want, c.from, c.rcode)
			}
		})
	}
}

// TestConfFollowsChanges: an edited resolv.conf is read again, a replaced one too.
func TestConfFollowsChanges(t *testing.T) {
	c, _ := files(t, "nameserver 192.0.2.1\n", "")
	f := NewConfFile(c)
	f.f.recheck = 0
	if got := f.Conf().Servers; len(got) != 1 || got[0].String() != "192.0.2.1:53" {
		t.Fatalf("servers %v", got)
	}
	if err := os.WriteFile(c, []byte("nameserver 192.0.2.2\nnameserver 2001:db8::2\noptions ndots:3 timeout:2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	got := f.Conf()
	if len(got.Servers) != 2 || got.Servers[1].String() != "[2001:db8::2]:53" || got.Ndots != 3 || got.Timeout != 2*time.Second {
		t.Fatalf("after the edit: %+v", got)
	}
	tmp := c + ".new"
	if err := os.WriteFile(tmp, []byte("# none\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, c); err != nil {
		t.Fatal(err)
	}
	if got := f.Conf(); !got.Defaulted || got.Servers[0].String() != "127.0.0.1:53" {
		t.Fatalf("after the replacement: %+v", got)
	}
}

func TestCandidates(t *testing.T) {
	c := Conf{Search: []string{"a.example", "b.example", strings.Repeat("x.", 122) + "example"}, Ndots: 1}
	for host, want := range map[string]string{
		"www":          "www.a.example. www.b.example. www.", // www. and the long domain are over 253
		"www.x":        "www.x. www.x.a.example. www.x.b.example.",
		"www.example.": "www.example.",
		"w":            "w.a.example. w.b.example. w." + strings.Repeat("x.", 122) + "example. w.",
	} {
		if got := strings.Join(candidates(host, c), " "); got != want {
			t.Errorf("%s: got %s, want %s", host, got, want)
		}
	}
}

// TestParseConf: servers once each and at most maxServers, options read, bad lines passed
// over; no nameserver means the local host's.
func TestParseConf(t *testing.T) {
	c := ParseConf([]byte("nameserver 192.0.2.1\nnameserver 192.0.2.1\nnameserver bogus\nnameserver fe80::1%eth0\n" +
		"search a.example.\noptions ndots:2 timeout:3 use-vc rotate\n"))
	if len(c.Servers) != 2 || c.Servers[1].String() != "[fe80::1%eth0]:53" || c.Ndots != 2 || c.Timeout != 3*time.Second ||
		!c.UseTCP || len(c.Search) != 1 || c.Search[0] != "a.example" || c.Defaulted {
		t.Fatalf("%+v", c)
	}
	if c := ParseConf(nil); !c.Defaulted || len(c.Servers) != 2 {
		t.Fatalf("empty: %+v", c)
	}
}

// TestOrder: of both families, the one this host reaches first, IPv6 only when it can
// (RFC 6724: loopback ::1 has the highest precedence).
func TestOrder(t *testing.T) {
	got := order([]netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")})
	if got[0].String() != "::1" {
		t.Fatalf("loopbacks: %v, want ::1 first (precedence 50)", got)
	}
	if p := policyOf(netip.MustParseAddr("fd00::1")); p.label != 13 || p.precedence != 3 {
		t.Fatalf("ULA policy %+v", p)
	}
	if p := policyOf(netip.MustParseAddr("192.0.2.1")); p.label != 4 || p.precedence != 35 {
		t.Fatalf("IPv4 policy %+v", p)
	}
	for a, want := range map[string]int{"fe80::1": 2, "127.0.0.1": 2, "169.254.1.1": 2, "ff05::1": 5, "2001:db8::1": 14, "192.0.2.1": 14} {
		if got := scope(netip.MustParseAddr(a)); got != want {
			t.Errorf("scope(%s) %d, want %d", a, got, want)
		}
	}
}
