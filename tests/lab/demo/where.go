package main

import (
	"fmt"
	"io"
	"log"
	"net/http"
	"net/netip"
	"os"
	"strings"

	"reachd/tests/lab"
)

// whereDemo shows where a probe fails: on a chain of four routers whose third drops one
// port, a same-flow trace names the last hop that answered; on the link between the second
// and the third, with an MTU of 1400 and "fragmentation needed" filtered both ways, an
// HTTP page too large to pass times out, and the path MTU search names the black hole.
func whereDemo(l *lab.Lab, bin string) error {
	c, err := l.Chain(4)
	if err != nil {
		return err
	}
	const dropPort, webPort = 8101, 8301
	for _, r := range []*lab.NS{c.Routers[1], c.Routers[2]} {
		if err := r.Nft("table inet ptb {\n chain out { type filter hook output priority 0; icmp type destination-unreachable icmp code frag-needed drop; icmpv6 type packet-too-big drop; }\n}\n"); err != nil {
			return err
		}
	}
	if err := c.Routers[1].Run("ip", "link", "set", "r0", "mtu", "1400"); err != nil {
		return err
	}
	if err := c.Routers[2].Run("ip", "link", "set", "l0", "mtu", "1400"); err != nil {
		return err
	}
	if err := c.Routers[2].Nft(fmt.Sprintf("table inet lose {\n chain pre { type filter hook prerouting priority -300; th dport %d drop; }\n}\n", dropPort)); err != nil {
		return err
	}
	ln, err := c.Server.Listen("tcp", fmt.Sprintf("[::]:%d", webPort))
	if err != nil {
		return err
	}
	page := strings.Repeat("reachd ", 2000)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, page) }),
		ErrorLog: log.New(io.Discard, "", 0)}
	go srv.Serve(ln)
	l.AddCloser(func() { srv.Close() })

	show := func(args ...string) {
		fmt.Printf("\n$ reachd %s\n", strings.Join(args, " "))
		cmd := c.Client.Command(bin, args...)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		_ = cmd.Run()
		if cmd.ProcessState != nil {
			fmt.Printf("(exit status %d)\n", cmd.ProcessState.ExitCode())
		}
	}
	v4, v6 := c.ServerAddr(false), c.ServerAddr(true)
	fmt.Printf("\nWhere it fails. A chain: client ── %s ── %s ── %s ── %s ── server %s / %s\n",
		c.Hop(1, false), c.Hop(2, false), c.Hop(3, false), c.Hop(4, false), v4, v6)
	fmt.Printf("hop 3 drops port %d; the link from hop 2 to hop 3 has an MTU of 1400, and its routers'\n", dropPort)
	fmt.Println("\"fragmentation needed\" / \"packet too big\" are filtered. --trace sends the failed probe's own flow")
	fmt.Println("again hop by hop, each hop timed at the wire; a failed verdict has the host's state in context:")
	show("probe", "tcp", "--trace", "--retries", "0", "--timeout", "1s",
		netip.AddrPortFrom(v4, dropPort).String(), netip.AddrPortFrom(v6, dropPort).String())
	show("probe", "udp", "--trace", "--json", "--retries", "0", "--timeout", "1s", netip.AddrPortFrom(v6, dropPort).String())
	fmt.Println("\nAn HTTP page larger than 1400 bytes is lost: a timeout, which --pmtu=on-failure names; icmp --pmtu finds the same.")
	show("probe", "http", "--pmtu=on-failure", "--retries", "0", "--timeout", "1s",
		"http://"+netip.AddrPortFrom(v4, webPort).String()+"/")
	show("probe", "icmp", "--pmtu", "--retries", "0", "--timeout", "1s", v6.String())
	return nil
}
