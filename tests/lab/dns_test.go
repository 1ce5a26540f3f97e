package lab

import (
	"fmt"
	"net"
	"strings"
	"testing"

	"reachd/internal/testpki"
	"reachd/pkg/verdict"
)

// dnsName is the name the lab's DoT server is certified for.
const dnsName = "dns.lab.example"

// TestDNSProbe: the dns kind against a miekg/dns server in the lab, each reason over IPv4
// and IPv6: an authoritative answer (timed at the wire), a name with only AAAA, NXDOMAIN,
// a SERVFAIL from a dead upstream, a REFUSED policy, a silent server, a closed port (the
// server's port unreachable), a router's admin prohibited, an answer truncated over UDP
// (asked again over TCP), and DoT with the test CA (and without it).
func TestDNSProbe(t *testing.T) {
	l := requireLab(t)
	pki, ca := testpki.ForTest(t)
	cert, err := pki.Issue(testpki.Leaf{Names: []string{dnsName}, IPs: []net.IP{ServerV4.AsSlice(), ServerV6.AsSlice()}})
	if err != nil {
		t.Fatal(err)
	}
	const port = 1053
	if err := l.ServeDNS(port, &cert); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name      string
		srv       int // port on the server, or 0 for the admin-prohibited address
		target    string
		args      []string
		reason    verdict.Reason
		detail    string
		transport string
	}{
		{"answer", port, "www.lab.example", nil, verdict.OK, "www.lab.example. A: " + ServerV4.String(), "udp"},
		{"AAAA", port, "www.lab.example", []string{"--type", "AAAA"}, verdict.OK, "AAAA: " + ServerV6.String(), "udp"},
		{"only AAAA", port, "v6only.lab.example", nil, verdict.DNSNoAnswer, "has no A record", "udp"},
		{"nxdomain", port, "nosuch.lab.example", nil, verdict.DNSNXDomain, "NXDOMAIN from", "udp"},
		{"servfail upstream", port, "www.broken.example", nil, verdict.DNSServfail, "SERVFAIL from", "udp"},
		{"refused", port, "example.org", nil, verdict.DNSRefused, "REFUSED from", "udp"},
		{"silent", port + 1, "www.lab.example", []string{"--timeout", "500ms"}, verdict.DNSTimeout, "no answer from", "udp"},
		{"closed port", port + 2, "www.lab.example", nil, verdict.PortUnreachable, "port unreachable", "udp"},
		{"admin prohibited", 0, "www.lab.example", nil, verdict.AdminProhibited, "admin", "udp"},
		{"truncated", port, "big.lab.example", []string{"--type", "TXT"}, verdict.OK, "and 36 more", "tcp"},
		{"over tcp", port, "mail.lab.example", []string{"--type", "MX", "--transport", "tcp"}, verdict.OK, "MX: 10 www.lab.example.", "tcp"},
		{"dot", port + 800, "www.lab.example", []string{"--transport", "dot", "--ca", ca}, verdict.OK, "A: " + ServerV4.String(), "dot"},
		{"dot untrusted", port + 800, "www.lab.example", []string{"--transport", "dot"}, verdict.CertUntrusted, "unknown authority", "dot"},
	} {
		for _, srvAddr := range []string{ServerV4.String(), ServerV6.String()} {
			t.Run(familyOf(srvAddr)+"/"+c.name, func(t *testing.T) {
				t.Parallel()
				server := net.JoinHostPort(srvAddr, fmt.Sprint(c.srv))
				asked := server
				args := append([]string{"--retries", "0"}, c.args...)
				from := ""
				if c.srv == 0 { // the address alone: port 53
					if strings.Contains(srvAddr, ":") {
						server, from = ProhibV6.Addr().String(), RouterClientV6.String()
						asked = ap(ProhibV6.Addr(), 53)
					} else {
						server, from = ProhibV4.Addr().String(), RouterClientV4.String()
						asked = ap(ProhibV4.Addr(), 53)
						args = withErrorSource(t, l, RouterClientV4, args)
					}
				}
				vs, code := probeKind(t, l, "dns", nil, append(args, "--server", server, c.target)...)
				if len(vs) != 1 {
					t.Fatalf("want 1 verdict, got %d (exit %d)", len(vs), code)
				}
				v := vs[0]
				t.Logf("→ %s/%s [%s]: %s", v["reason"], v["layer"], v["timing_source"], v["detail"])
				if v["reason"] != string(c.reason) || !strings.Contains(v["detail"].(string), c.detail) {
					t.Fatalf("got %v %q; want %s ~%q", v["reason"], v["detail"], c.reason, c.detail)
				}
				if from != "" && icmpFrom(v) != from {
					t.Errorf("ICMP from %q, want %s", icmpFrom(v), from)
				}
				if c.reason == verdict.PortUnreachable && icmpFrom(v) != srvAddr {
					t.Errorf("port unreachable from %q, want the server %s", icmpFrom(v), srvAddr)
				}
				d, _ := v["dns"].(map[string]any)
				if d == nil || d["transport"] != c.transport || v["server"] != asked || d["server"] != asked {
					t.Fatalf("dns %v server %v; want transport %s, server %s", d, v["server"], c.transport, asked)
				}
				answered := c.reason == verdict.OK || strings.HasPrefix(string(c.reason), "dns_") && c.reason != verdict.DNSTimeout
				if answered && (d["rcode"] == nil || d["rtt_ms"] == nil) {
					t.Errorf("an answer without its rcode or RTT: %v", d)
				}
				if answered && c.transport == "udp" && v["timing_source"] != verdict.SourceWire {
					t.Errorf("the query over UDP is not wire-timed: %v", v["timing_source"])
				}
				if c.name == "truncated" && d["truncated"] != true {
					t.Errorf("truncated not said: %v", d)
				}
				if c.name == "dot" && (v["tls"] == nil || !contains(v, "timings_ms", "wire", "ttfb")) {
					t.Errorf("DoT without its tls object or a wire-timed answer: %v %v", v["tls"], v["timings_ms"])
				}
			})
		}
	}
}

// contains says whether v[obj][key] is a list holding want.
func contains(v map[string]any, obj, key, want string) bool {
	o, _ := v[obj].(map[string]any)
	l, _ := o[key].([]any)
	for _, x := range l {
		if x == want {
			return true
		}
	}
	return false
}
