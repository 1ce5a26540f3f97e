// Command tcpfloor is the least a TCP prober can do per probe, for make bench to set beside
// reachd and blackbox_exporter: a non-blocking connect to each target in turn at a rate,
// a wait for the answer, a reset close — no timing, no verdict, no metrics. Its CPU per probe
// is the floor (mostly the kernel's handshake, which in the lab includes the server's side:
// the veth delivers in the sender's context).
package main

import (
	"flag"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	rate := flag.Int("rate", 1000, "probes a second")
	dur := flag.Duration("for", time.Minute, "how long")
	flag.Parse()
	var targets []netip.AddrPort
	for _, a := range flag.Args() {
		for _, s := range strings.Fields(a) {
			ap, err := netip.ParseAddrPort(s)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(2)
			}
			targets = append(targets, ap)
		}
	}
	if len(targets) == 0 {
		fmt.Fprintln(os.Stderr, "usage: tcpfloor [-rate N] [-for DUR] ADDR:PORT...")
		os.Exit(2)
	}
	tick := time.NewTicker(time.Second / time.Duration(*rate))
	defer tick.Stop()
	end := time.Now().Add(*dur)
	for i := 0; time.Now().Before(end); i++ {
		<-tick.C
		probe(targets[i%len(targets)])
	}
}

func probe(ap netip.AddrPort) {
	fam := unix.AF_INET6
	var sa unix.Sockaddr = &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
	if ap.Addr().Is4() {
		fam, sa = unix.AF_INET, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	}
	fd, err := unix.Socket(fam, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return
	}
	defer unix.Close(fd)
	_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
	if err := unix.Connect(fd, sa); err != nil && err != unix.EINPROGRESS {
		return
	}
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
	_, _ = unix.Poll(pfd, 900)
}
