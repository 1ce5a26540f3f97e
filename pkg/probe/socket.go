package probe

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"reachd/pkg/verdict"
	"time"

	"golang.org/x/sys/unix"
)

// probeSocket opens a non-blocking socket of the attempt's family and the address to
// send to; ok=false returns why it failed. os.NewFile puts the fd on the runtime's
// poller, so waiting for an answer costs no thread, and deadlines work as for a net.Conn.
func probeSocket(a Attempt, typ, proto int) (f *os.File, fd int, sa unix.Sockaddr, res Result, ok bool) {
	sa, err := sockaddrOf(a.Addr)
	if err != nil {
		return nil, -1, nil, Result{Reason: verdict.LocalError, Detail: err.Error()}, false
	}
	domain := unix.AF_INET
	if a.Addr.Addr().Is6() {
		domain = unix.AF_INET6
	}
	fd, err = unix.Socket(domain, typ|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return nil, -1, nil, socketError("socket", err), false
	}
	return os.NewFile(uintptr(fd), "reachd-probe"), fd, sa, Result{}, true
}

// Timestamp options of probe sockets (SO_TIMESTAMPING flags).
const (
	// sockStreamStamps: the kernel stamps the ICMP errors it queues. When nothing at TC saw
	// an error arrive, that stamp still times it in the kernel rather than when we got
	// round to reading it.
	sockStreamStamps = unix.SOF_TIMESTAMPING_RX_SOFTWARE | unix.SOF_TIMESTAMPING_SOFTWARE
	// sockDgramStamps: receive and transmit stamps. Transmit stamps are always asked for:
	// whenever TC does not see a datagram (an interface it cannot watch, a full flow
	// table), the kernel's stamps time it, never userspace; they cost one error-queue read
	// per datagram. OPT_ID numbers them 0, 1, ... in send order; TSONLY returns no data.
	sockDgramStamps = sockStreamStamps | unix.SOF_TIMESTAMPING_TX_SOFTWARE |
		unix.SOF_TIMESTAMPING_OPT_ID | unix.SOF_TIMESTAMPING_OPT_TSONLY
)

// setupSocket sets what every probe socket needs: the error queue (IP_RECVERR: which ICMP
// error answered, and who sent it), the kernel's timestamps, the interface, the mark and
// the source address. ok=false returns why it failed.
func setupSocket(fd int, a Attempt, stamps int) (Result, bool) {
	level, opt := unix.SOL_IP, unix.IP_RECVERR
	if a.Addr.Addr().Is6() {
		level, opt = unix.SOL_IPV6, unix.IPV6_RECVERR
	}
	if err := unix.SetsockoptInt(fd, level, opt, 1); err != nil {
		return socketError("setsockopt IP_RECVERR", err), false
	}
	if a.Addr.Addr().Is6() {
		// No random flow label (per socket, and redrawn on a retransmission): the flow
		// label is part of many routers' ECMP hash, and a probe's retries and its path
		// trace must go the way its first packet went. Kernels without the option keep
		// theirs.
		_ = unix.SetsockoptInt(fd, unix.SOL_IPV6, unix.IPV6_AUTOFLOWLABEL, 0)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPING, stamps); err != nil {
		return socketError("setsockopt SO_TIMESTAMPING", err), false
	}
	if a.Interface != "" {
		if err := unix.SetsockoptString(fd, unix.SOL_SOCKET, unix.SO_BINDTODEVICE, a.Interface); err != nil {
			if errors.Is(err, unix.ENODEV) {
				return fail(verdict.LocalError, fmt.Sprintf("interface %s does not exist", a.Interface)), false
			}
			return socketError("bind to interface "+a.Interface, err), false
		}
	}
	if a.Mark != 0 {
		if err := setMark(fd, a.Mark); err != nil {
			var pe errPermission
			if errors.As(err, &pe) {
				return fail(verdict.Permission, pe.msg), false
			}
			return socketError("setsockopt SO_MARK", err), false
		}
	}
	if a.Source.IsValid() {
		return bindSource(fd, a)
	}
	return Result{}, true
}

// setMark sets SO_MARK, which policy routing may choose a table by (ip rule fwmark). It
// needs CAP_NET_ADMIN: without it the error is errPermission, saying so.
func setMark(fd int, mark uint32) error {
	err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(mark))
	if errors.Is(err, unix.EPERM) {
		return errPermission{fmt.Sprintf("--mark %#x needs CAP_NET_ADMIN (run as root, or grant it: setcap cap_net_admin+ep, AmbientCapabilities=CAP_NET_ADMIN)", mark)}
	}
	return err
}

// bindSource binds fd to --source (a link-local source takes the target's zone).
func bindSource(fd int, a Attempt) (Result, bool) {
	src := netip.AddrPortFrom(a.Source, 0)
	if a.Source.Is6() && a.Source.IsLinkLocalUnicast() && a.Source.Zone() == "" {
		src = netip.AddrPortFrom(a.Source.WithZone(a.Addr.Addr().Zone()), 0)
	}
	sa, err := sockaddrOf(src)
	if err != nil {
		return fail(verdict.LocalError, err.Error()), false
	}
	if err := unix.Bind(fd, sa); err != nil {
		if errors.Is(err, unix.EADDRNOTAVAIL) {
			return fail(verdict.LocalError, fmt.Sprintf("source address %s is not configured on this host", a.Source)), false
		}
		return socketError("bind "+a.Source.String(), err), false
	}
	return Result{}, true
}

func sockaddrOf(ap netip.AddrPort) (unix.Sockaddr, error) {
	a := ap.Addr()
	if a.Is4() {
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: a.As4()}, nil
	}
	id, err := scopeID(a.Zone())
	if err != nil {
		return nil, err
	}
	if id == 0 && a.IsLinkLocalUnicast() {
		return nil, fmt.Errorf("link-local address %s needs a zone (fe80::1%%eth0) or --interface", a)
	}
	return &unix.SockaddrInet6{Port: int(ap.Port()), Addr: a.As16(), ZoneId: uint32(id)}, nil
}

func addrPortOf(sa unix.Sockaddr) netip.AddrPort {
	switch s := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(s.Addr), uint16(s.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(s.Addr), uint16(s.Port))
	}
	return netip.AddrPort{}
}

// pollReady waits until fd has one of events (or an error queued), until, or ctx's end,
// in short polls, so that a daemon stopping ends the wait within 100 ms. ok=false: the
// time is up or ctx ended.
func pollReady(ctx context.Context, fd int, events int16, until time.Time) (revents int16, ok bool) {
	for ctx.Err() == nil && time.Now().Before(until) {
		pfd := []unix.PollFd{{Fd: int32(fd), Events: events | unix.POLLERR}}
		if n, _ := unix.Poll(pfd, int(min(max(time.Until(until).Milliseconds(), 1), 100))); n > 0 {
			return pfd[0].Revents, true
		}
	}
	return 0, false
}

// setHopLimit sets the TTL (IPv4) or unicast hop limit (IPv6) of fd's packets.
func setHopLimit(fd int, v6 bool, ttl int) error {
	level, opt := unix.SOL_IP, unix.IP_TTL
	if v6 {
		level, opt = unix.SOL_IPV6, unix.IPV6_UNICAST_HOPS
	}
	if err := unix.SetsockoptInt(fd, level, opt, ttl); err != nil {
		return fmt.Errorf("set the hop limit: %w", err)
	}
	return nil
}

// ipHeader is the size of an IP header without options: 20 bytes, or IPv6's 40.
func ipHeader(v6 bool) int {
	if v6 {
		return 40
	}
	return 20
}
