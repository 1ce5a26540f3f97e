// Command demo builds a throwaway namespace lab, shows reachd's verdicts against its
// fixtures (an open port, a closed one, a silent drop, an admin-prohibited reject, a host
// that never answers ARP, a missing route; echoes with loss and odd replies; UDP replies,
// closed and silent ports, DNS; HTTP and HTTPS with their phases, TLS certificates checked;
// where a flow is lost on a chain of routers, and an MTU black hole), then the daemon
// following a fault as it comes and goes,
// and tears the lab down.
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"golang.org/x/crypto/ocsp"

	"reachd/internal/testpki"
	"reachd/internal/testweb"
	"reachd/tests/lab"
)

func main() { os.Exit(run()) }

func run() int {
	bin := flag.String("reachd", "bin/reachd", "the reachd binary to run")
	hold := flag.Duration("hold", 0, "keep the lab up this long after the demo, to explore it with nsenter")
	flag.Parse()
	if _, err := os.Stat(*bin); err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v (run 'make demo', which builds it)\n", err)
		return 2
	}
	if reaped := lab.Reap(); len(reaped) > 0 {
		fmt.Printf("reaped stale lab namespaces: %s\n", strings.Join(reaped, " "))
	}
	l, err := lab.New()
	if err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		return 2
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() { <-sig; l.Close(); os.Exit(130) }()
	defer l.Close()
	if err := l.SetupFixtures(); err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		return 1
	}
	ap := func(a netip.Addr, p int) string { return netip.AddrPortFrom(a, uint16(p)).String() }

	fmt.Println("lab: client 198.51.100.2 / 2001:db8:c::2 ── router 198.51.100.1 ── server 203.0.113.2 / 2001:db8:5::2")
	fmt.Println("faults: port 81 closed, port 82 dropped, port 84 loses the first SYN of each connection,")
	fmt.Println("        203.0.113.130 admin-prohibited, 203.0.113.9 has no host, 198.51.100.200 has no route on the client")
	targets := []string{
		ap(lab.ServerV4, lab.PortOpen),         // open
		ap(lab.ServerV6, lab.PortOpen),         // open, IPv6
		"[fe80::1%" + lab.ClientIf + "]:8080",  // link-local with zone
		ap(lab.ServerV4, lab.PortFirstSYNDrop), // ok after a SYN retransmission: rtt_ms stays small
		ap(lab.ServerV4, lab.PortClosed),       // refused
		ap(lab.ServerV4, lab.PortDrop),         // timeout
		ap(lab.AdminV4, lab.PortOpen),          // admin_prohibited
		ap(lab.AdminV6, lab.PortOpen),          // admin_prohibited, ICMPv6
		ap(lab.GhostV4, lab.PortOpen),          // host_unreachable
		ap(lab.UnroutedV4, lab.PortOpen),       // net_unreachable
		ap(lab.NoRouteV4, lab.PortOpen),        // no_route
	}
	show := func(args ...string) {
		fmt.Printf("\n$ reachd %s\n", strings.Join(args, " "))
		cmd := l.Client.Command(*bin, args...)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		err := cmd.Run()
		code := 0
		if cmd.ProcessState != nil {
			code = cmd.ProcessState.ExitCode()
		} else if err != nil {
			fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		}
		fmt.Printf("(exit status %d)\n", code)
	}
	show(append([]string{"probe", "tcp", "--timeout", "2s", "--retries", "1"}, targets...)...)
	fmt.Println("\nWith eBPF (root), rtt_ms is timed at the wire: the answer minus the last SYN sent.")
	fmt.Println("The same lost-first-SYN connection, timed at the wire and by the prober's clock (--no-ebpf):")
	show("probe", "tcp", "--json", "--retries", "0", ap(lab.ServerV4, lab.PortFirstSYNDrop))
	show("probe", "tcp", "--json", "--retries", "0", "--no-ebpf", ap(lab.ServerV4, lab.PortFirstSYNDrop))
	show("probe", "tcp", "--json", "--retries", "0", ap(lab.AdminV4, lab.PortOpen))

	fmt.Println("\nICMP echo: one shared socket per family; loss, ICMP errors with their sender, a missing neighbor.")
	fmt.Println("203.0.113.132 loses half its echo requests at the router; 203.0.113.133 sends damaged and duplicate replies.")
	show("probe", "icmp", "--retries", "0", "--timeout", "2s", lab.ServerV4.String(), lab.ServerV6.String(), "fe80::1%"+lab.ClientIf,
		lab.AdminV4.String(), lab.GhostV4.String(), lab.UnroutedV6.String(), lab.EchoDropV4.String())
	show("probe", "icmp", "--retries", "0", "--count", "20", "--interval", "20ms", lab.EchoHalfV4.String(), lab.OddV4.String())
	fmt.Println("\nUDP: a reply, a closed port (ICMP port unreachable), silence (open_filtered, never 'closed'), a router reject, DNS.")
	show("probe", "udp", "--retries", "0", "--timeout", "1s", "--payload-hex", "7265616368640a",
		ap(lab.ServerV4, lab.PortUDPEcho), ap(lab.ServerV4, lab.PortUDPClosed), ap(lab.ServerV6, lab.PortUDPDrop), ap(lab.AdminV4, lab.PortDNS))
	show("probe", "udp", "--json", "--retries", "0", "--payload", "dns", ap(lab.ServerV6, lab.PortDNS))
	if err := webDemo(l, show); err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		return 1
	}
	dnsDemo(show)
	if err := whereDemo(l, *bin); err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		return 1
	}
	daemonDemo(l, *bin)
	if *hold > 0 {
		fmt.Printf("\nlab held for %s (Ctrl-C ends it): nsenter --net=%s %s probe ...\n", *hold, l.Client.Path(), *bin)
		fmt.Printf("router: %s  server: %s\n", l.Router.Path(), l.Server.Path())
		time.Sleep(*hold) // a signal ends it early, tearing the lab down
	}
	fmt.Println("\nlab torn down.")
	return 0
}

// webDemo serves HTTP and HTTPS (a test CA's certificates: a good one, an expired one) on
// the server and shows the http and tls probes against them.
func webDemo(l *lab.Lab, show func(...string)) error {
	pki, err := testpki.New()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "reachd-demo")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ca, err := pki.WriteRoot(dir)
	if err != nil {
		return err
	}
	leaf := testpki.Leaf{Names: []string{"www.example.net"}, OCSPServer: "http://ocsp.example.net/"}
	good, err := pki.Issue(leaf)
	if err == nil {
		good.OCSPStaple, err = pki.Staple(good, ocsp.Good)
	}
	if err != nil {
		return err
	}
	leaf.NotBefore, leaf.NotAfter = time.Now().Add(-90*24*time.Hour), time.Now().Add(-3*24*time.Hour)
	expired, err := pki.Issue(leaf)
	if err != nil {
		return err
	}
	for _, s := range []struct {
		port int
		cfg  *tls.Config
	}{
		{8081, nil},
		{443, &tls.Config{Certificates: []tls.Certificate{good}, NextProtos: []string{"h2", "http/1.1"}}},
		{8443, &tls.Config{Certificates: []tls.Certificate{expired}}},
	} {
		if err := l.ServeWeb(s.port, s.cfg, testweb.Mux()); err != nil {
			return err
		}
	}
	fmt.Println("\nHTTP and TLS: the server has HTTP on 8081, HTTPS on 443 (www.example.net, a test CA, an OCSP")
	fmt.Println("staple) and an expired certificate on 8443. --connect-to probes a name at a chosen address.")
	show("probe", "http", "--retries", "0", "http://203.0.113.2:8081/moved", "http://[2001:db8:5::2]:8081/down",
		"http://203.0.113.2:8081/ok", "http://203.0.113.2:81/")
	show("probe", "http", "--json", "--retries", "0", "--ca", ca, "--connect-to", lab.ServerV4.String(), "https://www.example.net/ok")
	show("probe", "tls", "--retries", "0", "--ca", ca, "--server-name", "www.example.net", "--warn-days", "120",
		netip.AddrPortFrom(lab.ServerV6, 443).String(), netip.AddrPortFrom(lab.ServerV4, 8443).String())
	return nil
}

// dnsDemo shows the dns kind and the resolver policy against the lab's resolver.
func dnsDemo(show func(...string)) {
	v4, v6 := lab.ServerV4.String(), "["+lab.ServerV6.String()+"]"
	fmt.Println("\nDNS: the lab's resolver on 203.0.113.2 and 2001:db8:5::2 port 53 serves lab.example; broken.example's")
	fmt.Println("upstream is dead (SERVFAIL); other names are refused; port 54 never answers, 55 is closed. One verdict")
	fmt.Println("per resolver, the query timed at the wire; a failure below DNS keeps its own reason.")
	show("probe", "dns", "--retries", "0", "--timeout", "1s", "--server", v4, "--server", v6,
		"--server", v4+":54", "--server", v4+":55", "www.lab.example")
	show("probe", "dns", "--retries", "0", "--server", v6, "nosuch.lab.example", "www.broken.example", "example.org",
		"v6only.lab.example")
	show("probe", "dns", "--retries", "0", "--server", v4, "--type", "TXT", "big.lab.example")
	show("probe", "dns", "--json", "--retries", "0", "--server", v4, "--type", "MX", "mail.lab.example")
	fmt.Println("\nEvery other kind resolves names through one policy (--resolver; by default /etc/hosts, then")
	fmt.Println("resolv.conf's nameservers): the verdict says which resolver answered, or which rcode came from whom.")
	show("probe", "tcp", "--retries", "0", "--resolver", v6, "www.lab.example:80", "nosuch.lab.example:80", "www.broken.example:80")
}

// daemonConfig is the demo daemon's config: a few targets every second.
const daemonConfig = `defaults: {interval: 1s, timeout: 500ms, retries: 0}
metrics: {listen: "127.0.0.1:9798"}
log: {verdicts: changes}
probes:
  - name: web
    kind: tcp
    targets: ["203.0.113.2:80", "[2001:db8:5::2]:80"]
    labels: {site: lab}
  - name: ping
    kind: icmp
    targets: [203.0.113.2, "2001:db8:5::2"]
  - name: resolvers
    kind: dns
    targets: [www.lab.example]
    dns: {server: [203.0.113.2, "[2001:db8:5::2]"]}
`

// daemonDemo runs reachd run for a few seconds: its first verdicts, the change a dropped
// port makes (logged once, with why), its metrics, and a clean stop.
func daemonDemo(l *lab.Lab, bin string) {
	fmt.Println("\nThe daemon (reachd run): each target on its interval; it logs the first verdict and each change.")
	fmt.Printf("config:\n%s", daemonConfig)
	d, err := l.StartDaemon(bin, daemonConfig, lab.DaemonOptions{})
	if err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		return
	}
	defer d.Kill()
	if _, ok := d.WaitNote(10*time.Second, "READY=1"); !ok {
		fmt.Fprintf(os.Stderr, "demo: the daemon did not start:\n%s", d.Stderr())
		return
	}
	printed := 0
	flush := func(wait time.Duration) {
		time.Sleep(wait)
		lines := d.Lines()
		for _, ln := range lines[printed:] {
			fmt.Println(ln.Text)
		}
		printed = len(lines)
	}
	flush(2 * time.Second)
	fmt.Println("\n$ nft add rule ... ip daddr 203.0.113.2 tcp dport 80 drop   # on the router")
	if err := l.DropTCP(lab.ServerV4, lab.PortOpen); err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		return
	}
	flush(3 * time.Second)
	if m, err := d.Metrics("127.0.0.1:9798"); err == nil {
		fmt.Println("\n$ curl -s 127.0.0.1:9798/metrics | grep reachd_probe_success")
		for _, line := range strings.Split(m, "\n") {
			if strings.HasPrefix(line, "reachd_probe_success{") {
				fmt.Println(line)
			}
		}
	}
	d.Signal(syscall.SIGTERM)
	fmt.Printf("\nSIGTERM: in-flight probes end and write their verdicts; exit status %d\n", d.Wait(10*time.Second))
}
