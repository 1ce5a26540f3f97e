package probe

import (
	"context"
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"reachd/pkg/wire"
)

// A TCP flow's path MTU is searched with its own kind of packet, to its own port: a
// connection per size, its MSS clamped (TCP_MAXSEG, also what the SYN advertises) so that
// one full segment of zeros is an IP packet of that size, with DF.
// The size passes when the target acknowledges the segment. A router's fragmentation
// needed makes the kernel lower the socket's path MTU (TCP_INFO's pmtu; TC names the
// router). This tests the way to the target: a black hole on the way back shows in an
// icmp --pmtu (an echo reply is as large as its request).

// tcpPMTU sends the segments of a search.
type tcpPMTU struct {
	a       Attempt
	highIs  string
	learned bool          // the largest size is a path MTU the route learned (or its mtu), below the link's
	wait    time.Duration // every size's: TCP retransmits a lost segment within it
}

func (t *tcpPMTU) close() {}

func (t *tcpPMTU) retries() int { return 0 } // TCP retransmits a lost segment within t.wait

// tcpiOptTimestamps is TCPI_OPT_TIMESTAMPS (linux/tcp.h): the connection carries the
// timestamps option, 12 bytes of every segment's header.
const tcpiOptTimestamps = 1

// tcpHeaders are the IP and TCP headers of a segment of a connection, options included.
func tcpHeaders(v6 bool, info *unix.TCPInfo) int {
	n := ipHeader(v6) + 20
	if info.Options&tcpiOptTimestamps != 0 {
		n += 12
	}
	return n
}

// newTCPPMTU connects once unclamped: the largest packet a full segment makes (the link's
// MTU, or less when the target's MSS or a path MTU the route already knows is less) is the
// size the search starts from.
func newTCPPMTU(ctx context.Context, a Attempt, wait time.Duration) (*tcpPMTU, int, error) {
	t := &tcpPMTU{a: a, wait: wait}
	c, err := t.connect(ctx, 0, wait)
	if err != nil {
		return nil, 0, err
	}
	defer c.close()
	high := int(c.info.Snd_mss) + tcpHeaders(a.Addr.Addr().Is6(), c.info)
	link, _ := egressMTU(a) // 0 when unknown: nothing is taken for learned
	pmtu := int(c.info.Pmtu)
	t.learned = pmtu > 0 && pmtu < link && pmtu == high
	switch {
	case t.learned:
		t.highIs = "the path MTU the route has learned (or its mtu)"
	case pmtu == high || pmtu == 0:
		t.highIs = "the link's MTU"
	case pmtu > high:
		t.highIs = fmt.Sprintf("what the target's MSS allows (the route's MTU is %d)", pmtu)
	default:
		t.highIs = "the largest a full segment makes"
	}
	return t, high, nil
}

// tcpSeg is one connection of a search.
type tcpSeg struct {
	f    *wire.Flow
	fd   int
	info *unix.TCPInfo
	done func()
}

func (c *tcpSeg) close() { c.done() }

// connect opens a connection whose MSS is clamped to mss (0: not clamped), watched at TC
// when TC is in use.
func (t *tcpPMTU) connect(ctx context.Context, mss int, wait time.Duration) (*tcpSeg, error) {
	f, fd, sa, res, ok := probeSocket(t.a, unix.SOCK_STREAM, unix.IPPROTO_TCP)
	if !ok {
		return nil, errors.New(res.Detail)
	}
	c := &tcpSeg{fd: fd, done: func() { f.Close() }}
	fail := func(err error) (*tcpSeg, error) { c.close(); return nil, err }
	if res, ok := setupSocket(fd, t.a, 0); !ok {
		return fail(errors.New(res.Detail))
	}
	// Closed with a reset: the target is left no half-closed connection to wait out.
	if err := unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1}); err != nil {
		return fail(err)
	}
	// DF whatever net.ipv4.ip_no_pmtu_disc says.
	level, opt, do := unix.SOL_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_DO
	if t.a.Addr.Addr().Is6() {
		level, opt, do = unix.SOL_IPV6, unix.IPV6_MTU_DISCOVER, unix.IPV6_PMTUDISC_DO
	}
	if err := unix.SetsockoptInt(fd, level, opt, do); err != nil {
		return fail(fmt.Errorf("set DF: %w", err))
	}
	if mss > 0 {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_MAXSEG, mss); err != nil {
			return fail(fmt.Errorf("TCP_MAXSEG %d: %w", mss, err))
		}
	}
	if t.a.Wire != nil && t.a.Wire.HasTC() {
		if c.f, _ = registerFlow(fd, t.a, wire.ProtoTCP); c.f != nil {
			c.done = func() { c.f.Close(); f.Close() }
		}
	}
	if err := unix.Connect(fd, sa); err != nil && !errors.Is(err, unix.EINPROGRESS) {
		return fail(fmt.Errorf("connect: %w", err))
	}
	soErr, err := waitConnect(ctx, f, time.Now().Add(wait))
	if err == nil && soErr != 0 {
		err = unix.Errno(soErr)
	}
	if err != nil {
		return fail(fmt.Errorf("the handshake failed: %w", err))
	}
	if c.info, err = unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO); err != nil {
		return fail(err)
	}
	return c, nil
}

// try sends one full segment on a connection clamped to make packets of size bytes, and
// waits for the target's acknowledgement, or a router's fragmentation needed.
func (t *tcpPMTU) try(ctx context.Context, size int, _ uint16, _ time.Duration) (bool, *QueuedError, error) {
	// Not the search's shorter wait once a size passed: TCP's first retransmission comes
	// after 200 ms at the least (TCP_RTO_MIN), and the handshake's after a second.
	wait := t.wait
	v6 := t.a.Addr.Addr().Is6()
	c, err := t.connect(ctx, size-ipHeader(v6)-20, wait) // the MSS: the IP and TCP headers off
	if err != nil {
		return false, nil, err
	}
	defer c.close()
	seg := size - tcpHeaders(v6, c.info)
	if int(c.info.Snd_mss) < seg {
		return false, nil, fmt.Errorf("segments of %d bytes: the connection's MSS is %d", seg, c.info.Snd_mss)
	}
	if _, err := unix.Write(c.fd, make([]byte, seg)); err != nil {
		return false, nil, fmt.Errorf("send %d bytes: %w", seg, err)
	}
	until := time.Now().Add(wait)
	for ctx.Err() == nil && time.Now().Before(until) {
		info, err := unix.GetsockoptTCPInfo(c.fd, unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil {
			return false, nil, err
		}
		if int(info.Pmtu) < size { // the kernel heard a router's fragmentation needed
			return false, t.router(c, info.Pmtu), nil
		}
		if info.Unacked == 0 {
			// Acknowledged as sent: not cut into smaller segments on the way (the kernel's
			// own black hole detection, tcp_mtu_probing, shrinks the MSS).
			return int(info.Snd_mss) >= seg, nil, nil
		}
		if info.State != unix.BPF_TCP_ESTABLISHED && info.State != unix.BPF_TCP_CLOSE_WAIT {
			return false, nil, fmt.Errorf("the target ended the connection before acknowledging a segment")
		}
		time.Sleep(5 * time.Millisecond)
	}
	return false, nil, nil
}

// router is the fragmentation needed / packet too big that lowered c's path MTU to mtu,
// with its sender when TC saw it.
func (t *tcpPMTU) router(c *tcpSeg, mtu uint32) *QueuedError {
	q := &QueuedError{Info: mtu}
	if c.f == nil {
		return q
	}
	for _, e := range c.f.Sync() {
		if wire.EventKind(e.Kind) != wire.EvICMPError {
			continue
		}
		v6 := t.a.Addr.Addr().Is6()
		if !v6 && e.IcmpType == icmp4DestUnreach && e.IcmpCode == 4 || v6 && e.IcmpType == icmp6PacketTooBig {
			q.Offender = e.FromAddr()
		}
	}
	return q
}
