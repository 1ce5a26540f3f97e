package probe

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"reachd/pkg/netctx"
	"reachd/pkg/verdict"
	"reachd/pkg/wire"
)

// TCP probes a port with a three-way handshake and closes with RST.
//
// It drives the socket itself rather than through net.Dialer so that: the socket error
// queue (IP_RECVERR) says which ICMP error ended the handshake and who sent it; the SYN
// count comes from TCP_INFO; the prober's own lateness is told apart from the target's
// (self_overload); and closing never leaves TIME_WAIT behind (SO_LINGER 0).
func TCP(ctx context.Context, a Attempt) Result {
	deadline, ok := ctx.Deadline()
	if !ok {
		// A context without a deadline bounds the handshake by the attempt's timeout.
		deadline = time.Now().Add(a.Timeout)
	}
	dst := a.Addr.Addr()
	f, fd, sa, res, ok := probeSocket(a, unix.SOCK_STREAM, unix.IPPROTO_TCP)
	if !ok {
		return res
	}
	defer f.Close()

	if res, ok := setupSocket(fd, dst.Is6(), a); !ok {
		return res
	}
	var flow *wire.Flow
	var note string
	if a.Wire != nil {
		if flow, note = registerTCP(fd, a); flow != nil {
			defer flow.Close()
		}
	}
	if !time.Now().Before(deadline) {
		return Result{Reason: verdict.SelfOverload,
			Detail: "the attempt's deadline passed before connect() was issued: the prober is overloaded"}
	}
	startMono, start := wire.Monotonic(), time.Now()
	err := unix.Connect(fd, sa)
	if err != nil && !errors.Is(err, unix.EINPROGRESS) && !errors.Is(err, unix.EINTR) {
		return connectError(err, a)
	}
	res = tcpOutcome(ctx, f, fd, deadline, start, a)
	if flow != nil {
		res = applyWire(res, flow, start, startMono)
	}
	if note != "" {
		res.Detail += "; " + note
	}
	return res
}

// tcpOutcome waits for the handshake to end and classifies how it ended.
func tcpOutcome(ctx context.Context, f *os.File, fd int, deadline, start time.Time, a Attempt) Result {
	res := Result{sent: true}
	soErr, waitErr := waitConnect(ctx, f, deadline)
	elapsed := time.Since(start)
	info, _ := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	if info != nil {
		n := int(info.Total_retrans)
		res.SYNRetransmits = &n
	}
	if sn, err := unix.Getsockname(fd); err == nil {
		res.Local = addrPortOf(sn)
	}
	switch {
	case waitErr != nil && errors.Is(waitErr, os.ErrDeadlineExceeded) && errors.Is(ctx.Err(), context.Canceled):
		return Result{Reason: verdict.LocalError, sent: true,
			Detail: fmt.Sprintf("probe cancelled %s into the handshake", elapsed.Round(time.Millisecond))}
	case waitErr != nil && errors.Is(waitErr, os.ErrDeadlineExceeded):
		// A late ICMP error may sit in the queue without having ended the handshake yet.
		if q, ok := lastICMP(drainErrQueue(fd)); ok {
			return icmpResult(res, q, a)
		}
		return timeoutResult(res, a, elapsed)
	case waitErr != nil:
		return Result{Reason: verdict.LocalError, Detail: fmt.Sprintf("waiting for the handshake: %v", waitErr)}
	case soErr == 0:
		res.Reason = verdict.OK
		res.RTT, res.HasRTT = elapsed, true
		res.Detail = "handshake completed"
		if res.SYNRetransmits != nil && *res.SYNRetransmits > 0 {
			res.Detail = fmt.Sprintf("handshake completed after %d SYN retransmission(s); the userspace rtt includes the retransmission timeout",
				*res.SYNRetransmits)
		}
		return res
	}
	if q, ok := lastICMP(drainErrQueue(fd)); ok {
		return icmpResult(res, q, a)
	}
	res = asyncErrnoResult(res, soErr, elapsed)
	if res.Reason == verdict.HostUnreachable || res.Reason == verdict.NetUnreachable {
		res = fromThisHost(res, a, netip.Addr{}, synsSent(res))
	}
	return res
}

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

// setupSocket sets the options every probe socket needs; ok=false returns why it failed.
func setupSocket(fd int, v6 bool, a Attempt) (Result, bool) {
	level, opt := unix.SOL_IP, unix.IP_RECVERR
	if v6 {
		level, opt = unix.SOL_IPV6, unix.IPV6_RECVERR
	}
	if err := unix.SetsockoptInt(fd, level, opt, 1); err != nil {
		return socketError("setsockopt IP_RECVERR", err), false
	}
	// The kernel stamps the ICMP errors it queues: when nothing at TC saw the error arrive,
	// that stamp still times it in the kernel rather than when we got round to reading it.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1); err != nil {
		return socketError("setsockopt SO_TIMESTAMPNS", err), false
	}
	// An RST on close: the prober holds no TIME_WAIT entries however many probes it runs.
	if err := unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0}); err != nil {
		return socketError("setsockopt SO_LINGER", err), false
	}
	if a.Interface != "" {
		if err := unix.SetsockoptString(fd, unix.SOL_SOCKET, unix.SO_BINDTODEVICE, a.Interface); err != nil {
			if errors.Is(err, unix.ENODEV) {
				return Result{Reason: verdict.LocalError, Detail: fmt.Sprintf("interface %s does not exist", a.Interface)}, false
			}
			return socketError("bind to interface "+a.Interface, err), false
		}
	}
	if a.Source.IsValid() {
		if err := bindSource(fd, a); err != nil {
			var r Result
			if errors.As(err, &r) {
				return r, false
			}
			return Result{Reason: verdict.LocalError, Detail: err.Error()}, false
		}
	}
	return Result{}, true
}

// bindSource binds fd to --source (a link-local source takes the target's zone).
func bindSource(fd int, a Attempt) error {
	src := netip.AddrPortFrom(a.Source, 0)
	if a.Source.Is6() && a.Source.IsLinkLocalUnicast() && a.Source.Zone() == "" {
		src = netip.AddrPortFrom(a.Source.WithZone(a.Addr.Addr().Zone()), 0)
	}
	sa, err := sockaddrOf(src)
	if err != nil {
		return err
	}
	if err := unix.Bind(fd, sa); err != nil {
		if errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("source address %s is not configured on this host", a.Source)
		}
		return socketError("bind "+a.Source.String(), err)
	}
	return nil
}

// waitConnect waits until the non-blocking connect completes, the deadline passes or ctx
// is cancelled (then it returns os.ErrDeadlineExceeded too), and returns the socket's
// error (0 when connected).
func waitConnect(ctx context.Context, f *os.File, deadline time.Time) (int, error) {
	if err := f.SetWriteDeadline(deadline); err != nil {
		return 0, err
	}
	stop := context.AfterFunc(ctx, func() { _ = f.SetWriteDeadline(time.Now()) })
	defer stop()
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, err
	}
	var soErr int
	werr := rc.Write(func(fd uintptr) bool {
		e, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
		if err != nil {
			soErr = int(unix.EBADF)
			if errno, ok := err.(unix.Errno); ok {
				soErr = int(errno)
			}
			return true
		}
		switch unix.Errno(e) {
		case unix.EINPROGRESS, unix.EALREADY, unix.EINTR:
			return false
		case 0:
			// Writable with no error can also mean "not yet": the first call comes before
			// any event. Connected sockets have a peer.
			if _, err := unix.Getpeername(int(fd)); errors.Is(err, unix.ENOTCONN) {
				return false
			}
		}
		soErr = e
		return true
	})
	return soErr, werr
}

// timeoutResult explains silence: how many SYNs went out, and whether the next hop's
// neighbor entry ever resolved (if not, the SYNs never left this link).
func timeoutResult(res Result, a Attempt, waited time.Duration) Result {
	res.Reason = verdict.Timeout
	sent := 1
	if res.SYNRetransmits != nil {
		sent += *res.SYNRetransmits
	}
	res.waited = waited
	res.Detail = silenceDetail(waited, sent, "")
	if n, ok := unresolvedNeighbor(a); ok {
		res.Reason = verdict.HostUnreachable
		res.Layer = verdict.LayerLink
		res.neighbor = n
		res.Detail = fmt.Sprintf("%s; %s never left the link", n, synsSent(res))
	}
	return res
}

// synsSent words how many SYNs a handshake sent, as TCP_INFO counts them.
func synsSent(res Result) string {
	sent := 1
	if res.SYNRetransmits != nil {
		sent += *res.SYNRetransmits
	}
	return fmt.Sprintf("%d SYN(s)", sent)
}

// unresolvedNeighbor says, when the next hop toward the attempt's target has a neighbor
// entry that never resolved (ARP/NDP got no answer), which hop, where and in what state.
func unresolvedNeighbor(a Attempt) (string, bool) {
	dst := a.Addr.Addr()
	rt, err := attemptRoute(a)
	if err != nil || rt.LinkIndex == 0 {
		return "", false
	}
	hop := rt.NextHop(dst.WithZone(""))
	state, err := netctx.NeighborState(hop, rt.LinkIndex)
	if err != nil || !netctx.Unresolved(state) {
		return "", false
	}
	if ifc, err := net.InterfaceByIndex(rt.LinkIndex); err == nil {
		rt.Dev = ifc.Name
	}
	return fmt.Sprintf("next hop %s on %s did not answer neighbor resolution (state %s)", hop, rt.Dev, state), true
}

// attemptRoute looks up the route the attempt's packets take: from --source (policy
// routing may choose the table by it), out of the target's zone or the --interface when
// one is given.
func attemptRoute(a Attempt) (netctx.Route, error) {
	dst := a.Addr.Addr()
	return netctx.RouteLookup(dst.WithZone(""), a.Source, routeOif(dst, a.Interface))
}

// routeOif is the interface a route lookup is bound to: the target's zone, else
// --interface, else none (0).
func routeOif(dst netip.Addr, iface string) int {
	oif := 0
	if z := dst.Zone(); z != "" {
		oif, _ = scopeID(z)
	} else if iface != "" {
		oif, _ = scopeID(iface)
	}
	return oif
}

// silenceDetail words a timeout; how says where the SYN count comes from.
func silenceDetail(waited time.Duration, sent int, how string) string {
	return fmt.Sprintf("no SYN-ACK, RST or ICMP error within %s after %d SYN transmission(s)%s", waited.Round(time.Millisecond), sent, how)
}

func icmpResult(res Result, q QueuedError, a Attempt) Result {
	res.Reason, res.ICMP, res.Detail = icmpAnswer(a.Addr.Addr().Is6(), q.Type, q.Code, q.Offender)
	res.icmpAt = q.At
	return fromThisHost(res, a, q.Offender, synsSent(res))
}

// asyncErrnoResult classifies a handshake that failed without an ICMP error queued.
func asyncErrnoResult(res Result, e int, elapsed time.Duration) Result {
	switch unix.Errno(e) {
	case unix.ECONNREFUSED:
		res.Reason, res.Detail = verdict.Refused, "RST in answer to SYN: nothing listens on the port, or a firewall resets"
		res.RTT, res.HasRTT = elapsed, true
	case unix.ETIMEDOUT:
		res.Reason, res.Detail = verdict.Timeout, "the kernel gave up retransmitting the SYN"
	case unix.ECONNRESET:
		res.Reason, res.Detail = verdict.Reset, "connection reset during the handshake"
	case unix.ENETUNREACH:
		res.Reason, res.Detail = verdict.NetUnreachable, "network unreachable (no ICMP detail queued)"
	case unix.EHOSTUNREACH:
		res.Reason, res.Detail = verdict.HostUnreachable, "host unreachable (no ICMP detail queued)"
	case unix.EACCES, unix.EPERM:
		res.Reason, res.Detail = verdict.AdminProhibited, fmt.Sprintf("handshake refused by policy: %v", unix.Errno(e))
	default:
		res.Reason, res.Detail = verdict.LocalError, fmt.Sprintf("handshake failed: %v", unix.Errno(e))
	}
	return res
}

// connectError classifies connect() failing synchronously: nothing left the host, so the
// cause is local (routing table, policy, resources).
func connectError(err error, a Attempt) Result { return sendError("connect", err, a) }

// sendError classifies a send (connect, sendto) that failed synchronously: nothing left
// the host, so the cause is local (routing table, policy, resources).
func sendError(op string, err error, a Attempt) Result {
	dst := a.Addr.Addr()
	var r Result
	switch {
	case errors.Is(err, unix.ENETUNREACH), errors.Is(err, unix.EHOSTUNREACH):
		r = Result{Reason: verdict.NoRoute, Detail: fmt.Sprintf("no route to %s in the local routing table", dst)}
		if errors.Is(err, unix.EHOSTUNREACH) {
			r.Detail = fmt.Sprintf("the local routing table marks %s unreachable", dst)
		}
		if a.Interface != "" {
			if ifc, ierr := net.InterfaceByName(a.Interface); ierr == nil && ifc.Flags&net.FlagUp == 0 {
				r = Result{Reason: verdict.LocalError, Detail: fmt.Sprintf("interface %s is down", a.Interface)}
			}
		}
	case errors.Is(err, unix.EACCES):
		r = Result{Reason: verdict.AdminProhibited, Layer: verdict.LayerLocal,
			Detail: fmt.Sprintf("the local routing table prohibits %s (prohibit route)", dst)}
	case errors.Is(err, unix.EPERM):
		r = Result{Reason: verdict.AdminProhibited, Layer: verdict.LayerLocal,
			Detail: fmt.Sprintf("%s to %s blocked on this host (firewall or cgroup policy)", op, dst)}
	case errors.Is(err, unix.EINVAL):
		r = Result{Reason: verdict.NoRoute, Detail: fmt.Sprintf("%s to %s: %v (blackhole route?)", op, dst, err)}
	case errors.Is(err, unix.EADDRNOTAVAIL):
		r = Result{Reason: verdict.LocalError, Detail: "no free local port or source address (EADDRNOTAVAIL)"}
	case errors.Is(err, unix.ENOBUFS), errors.Is(err, unix.EAGAIN):
		r = Result{Reason: verdict.LocalError, Detail: fmt.Sprintf("%s to %s: the socket's send buffer is full (ENOBUFS/EAGAIN)", op, dst)}
	default:
		r = socketError(op, err)
	}
	return r
}

// socketError classifies failures to create or set up a socket.
func socketError(op string, err error) Result {
	switch {
	case errors.Is(err, unix.EMFILE), errors.Is(err, unix.ENFILE):
		return Result{Reason: verdict.LocalError, Detail: fmt.Sprintf("%s: out of file descriptors (raise LimitNOFILE / ulimit -n)", op)}
	case errors.Is(err, unix.ENOBUFS), errors.Is(err, unix.ENOMEM):
		return Result{Reason: verdict.LocalError, Detail: fmt.Sprintf("%s: kernel out of memory for sockets", op)}
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return Result{Reason: verdict.Permission, Detail: fmt.Sprintf("%s: %v (binding to an interface needs CAP_NET_RAW on older kernels)", op, err)}
	}
	return Result{Reason: verdict.LocalError, Detail: fmt.Sprintf("%s: %v", op, err)}
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
