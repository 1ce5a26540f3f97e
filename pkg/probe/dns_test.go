package probe

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"reachd/internal/testdns"
	"reachd/pkg/resolv"
	"reachd/pkg/target"
	"reachd/pkg/verdict"
)

// serveDNS starts a testdns server on loopback (network "udp4" or "udp6") and returns its
// address, UDP and TCP on one port.
func serveDNS(t *testing.T, network string) netip.AddrPort {
	t.Helper()
	host := "127.0.0.1"
	if network == "udp6" {
		host = "::1"
	}
	var pc net.PacketConn
	var ln net.Listener
	for range 20 { // the same port for both
		var err error
		if pc, err = net.ListenPacket(network, net.JoinHostPort(host, "0")); err != nil {
			unavailable(t, network+" loopback", err)
		}
		if ln, err = net.Listen("tcp", pc.LocalAddr().String()); err == nil {
			break
		}
		pc.Close()
	}
	dead, _ := net.ListenPacket("udp4", "127.0.0.1:0") // an upstream that never answers
	t.Cleanup(func() { dead.Close() })
	h := &testdns.Handler{V4: "192.0.2.80", V6: "2001:db8::80", Upstream: dead.LocalAddr().String(), UpstreamWait: 100 * time.Millisecond}
	srv, err := testdns.Start(h, testdns.Listeners{UDP: pc, TCP: ln})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	return netip.MustParseAddrPort(pc.LocalAddr().String())
}

func probeDNS(t *testing.T, srv netip.AddrPort, name string, args ...string) Result {
	t.Helper()
	o := newDNSOptions()
	if err := parseFlags(o, args...); err != nil {
		t.Fatal(err)
	}
	tg, err := target.ParseName(name)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	return runDNS(ctx, Attempt{Target: tg, Addr: srv, Timeout: time.Second, Opts: o})
}

func TestDNSAnswers(t *testing.T) {
	for _, network := range []string{"udp4", "udp6"} {
		srv := serveDNS(t, network)
		for _, c := range []struct {
			name, target string
			args         []string
			reason       verdict.Reason
			detail       string
			transport    string
		}{
			{"A", "www.lab.example", nil, verdict.OK, "www.lab.example. A: 192.0.2.80 from", "udp"},
			{"AAAA", "www.lab.example.", []string{"--type", "aaaa"}, verdict.OK, "2001:db8::80", "udp"},
			{"nxdomain", "nope.lab.example", nil, verdict.DNSNXDomain, "NXDOMAIN from", "udp"},
			{"servfail", "x.broken.example", nil, verdict.DNSServfail, "SERVFAIL from", "udp"},
			{"refused", "example.org", nil, verdict.DNSRefused, "REFUSED from", "udp"},
			{"refused, a bare header", "x.bare.example", nil, verdict.DNSRefused, "REFUSED from", "udp"},
			{"refused, a bare header, over TCP", "x.bare.example", []string{"--transport", "tcp"}, verdict.DNSRefused, "REFUSED from", "tcp"},
			{"expect-answer, a line", "www.lab.example", []string{"--expect-answer", `^www\.lab\.example\. 300 IN A 192\.0\.2\.80$`}, verdict.OK, "192.0.2.80", "udp"},
			{"only AAAA", "v6only.lab.example", nil, verdict.DNSNoAnswer, "has no A record", "udp"},
			{"alias", "alias.lab.example", nil, verdict.OK, "A: 192.0.2.80", "udp"},
			{"truncated then TCP", "big.lab.example", []string{"--type", "TXT"}, verdict.OK, "and 36 more", "tcp"},
			{"over TCP", "mail.lab.example", []string{"--type", "MX", "--transport", "tcp"}, verdict.OK, "MX: 10 www.lab.example.", "tcp"},
			{"expect-answer", "mail.lab.example", []string{"--type", "MX", "--expect-answer", "mx9"}, verdict.BodyMismatch, "no answer record matches", "udp"},
			{"expect-rcode", "nope.lab.example", []string{"--expect-rcode", "nxdomain"}, verdict.OK, "as --expect-rcode wants", "udp"},
			{"dnssec unsigned", "www.lab.example", []string{"--dnssec"}, verdict.BodyMismatch, "not authenticated (AD clear)", "udp"},
			{"dnssec", "secure.lab.example", []string{"--dnssec"}, verdict.OK, "192.0.2.80", "udp"},
		} {
			t.Run(network+"/"+c.name, func(t *testing.T) {
				r := probeDNS(t, srv, c.target, c.args...)
				if r.Reason != c.reason || !strings.Contains(r.Detail, c.detail) {
					t.Fatalf("got %s %q; want %s ~%q", r.Reason, r.Detail, c.reason, c.detail)
				}
				d := r.Kind.(*dnsEvidence).dns
				if d.Transport != c.transport || d.Rcode == "" || d.RTTMs == nil || d.Server != srv.String() {
					t.Fatalf("dns object %+v; want transport %s, an rcode, an RTT, server %s", d, c.transport, srv)
				}
				if c.reason == verdict.OK && !strings.Contains(c.name, "rcode") && len(d.Answers) == 0 {
					t.Fatalf("no answers listed: %+v", d)
				}
			})
		}
	}
}

// TestTruncatedMidRecord: a truncated answer cut in the middle of a record (it does not
// parse) is still the query's answer, so that TCP asks again; another id's is not.
func TestTruncatedMidRecord(t *testing.T) {
	q := resolv.Query("www.example.net", dns.TypeTXT, false)
	r := q.Copy()
	r.Response, r.Truncated = true, true
	r.Answer = append(r.Answer, &dns.TXT{Hdr: dns.RR_Header{Name: "www.example.net.", Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 60}, Txt: []string{strings.Repeat("x", 200)}})
	b, err := r.Pack()
	if err != nil {
		t.Fatal(err)
	}
	cut := b[:len(b)-100]
	if why := checkAnswer(cut, q); why != "" {
		t.Fatalf("a truncated answer cut mid-record: %s", why)
	}
	other := q.Copy()
	other.Id++
	if checkAnswer(cut, other) == "" {
		t.Fatal("a truncated answer taken for another query")
	}
}

// TestServerLegs: a dns job has a leg per server (and interface) of the family asked for;
// none of that family is one leg that says so, naming the servers there are.
func TestServerLegs(t *testing.T) {
	o := newDNSOptions()
	if err := parseFlags(o, "--server", "192.0.2.53", "--server", "[2001:db8::53]:5353", "--server", "fe80::53"); err != nil {
		t.Fatal(err)
	}
	legs := serverLegs(o, FamilyAny, []string{"eth0", "eth1"})
	if len(legs) != 6 || legs[0].server.String() != "192.0.2.53:53" || legs[3].server.String() != "[2001:db8::53]:5353" ||
		legs[5].server.String() != "[fe80::53%eth1]:53" || legs[5].fam != FamilyV6 {
		t.Fatalf("legs %+v", legs)
	}
	if legs := serverLegs(o, FamilyV4, []string{""}); len(legs) != 1 || legs[0].server.Addr().Is6() {
		t.Fatalf("ipv4 legs %+v", legs)
	}
	o4 := newDNSOptions()
	if err := parseFlags(o4, "--server", "192.0.2.53"); err != nil {
		t.Fatal(err)
	}
	legs = serverLegs(o4, FamilyV6, []string{""})
	if len(legs) != 1 || legs[0].server.IsValid() || !strings.Contains(legs[0].noServer, "no IPv6 server in --server (it lists 192.0.2.53:53)") {
		t.Fatalf("no IPv6 server: %+v", legs)
	}
}

// FuzzDNSAnswer: any bytes that come back for a query are checked and, when taken as its
// answer, judged and described without a panic; an answer is never taken for another
// question.
func FuzzDNSAnswer(f *testing.F) {
	o := newDNSOptions()
	if err := parseFlags(o, "--expect-answer", "192", "--dnssec"); err != nil {
		f.Fatal(err)
	}
	q := o.query(target.Target{Name: "www.example.net"})
	q.Id = 0x1234
	good := q.Copy()
	good.Response = true
	good.Answer = append(good.Answer, &dns.A{Hdr: dns.RR_Header{Name: "www.example.net.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 1)})
	b, _ := good.Pack()
	f.Add(b)
	f.Add([]byte{0x12, 0x34, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		if checkAnswer(b, q) != "" {
			return
		}
		m := new(dns.Msg)
		if err := m.Unpack(b); err != nil {
			if !truncatedHeader(b, q.Id) {
				t.Fatalf("taken but does not unpack, and is not a truncated answer: %v", err)
			}
			return
		}
		bare := len(m.Question) == 0 && m.Rcode != dns.RcodeSuccess // an error's bare header
		if !bare && !strings.EqualFold(m.Question[0].Name, "www.example.net.") || m.Id != q.Id {
			t.Fatalf("an answer to another question taken: %v", m.Question)
		}
		_ = o.judge(q, m, Result{}, &verdict.DNS{})
	})
}
