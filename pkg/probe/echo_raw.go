package probe

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
)

// rawEcho is a raw ICMP socket of its own, connected to an attempt's target with the
// attempt's binding, for what sends echo requests outside the shared pingers: a path MTU
// search (its sizes and DF) and a path trace (its TTLs). Its identifier is its own, so
// nothing it sends is taken for a pinger's echo.
type rawEcho struct {
	fd int
	v6 bool
	id uint16
}

func openRawEcho(a Attempt, what string) (*rawEcho, error) {
	v6 := a.Addr.Addr().Is6()
	domain, proto := unix.AF_INET, unix.IPPROTO_ICMP
	if v6 {
		domain, proto = unix.AF_INET6, unix.IPPROTO_ICMPV6
	}
	fd, err := unix.Socket(domain, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		if errors.Is(err, unix.EPERM) {
			return nil, fmt.Errorf("%s needs a raw socket: CAP_NET_RAW (%s)", what, grantRaw)
		}
		return nil, fmt.Errorf("raw socket: %w", err)
	}
	e := &rawEcho{fd: fd, v6: v6}
	if res, ok := setupSocket(fd, a, 0); !ok { // no timestamps: what uses it times itself
		unix.Close(fd)
		return nil, errors.New(res.Detail)
	}
	sa, err := sockaddrOf(netip.AddrPortFrom(a.Addr.Addr(), 0)) // raw: no port
	if err == nil {
		err = unix.Connect(fd, sa)
	}
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("%s socket: %w", what, err)
	}
	idb, err := random(2)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	e.id = binary.BigEndian.Uint16(idb)
	return e, nil
}

func (e *rawEcho) close() { unix.Close(e.fd) }

// read returns the next ICMP message the socket holds (ok false: none now). Raw IPv4
// sockets hand over the IP header, which parseICMP skips.
func (e *rawEcho) read(buf []byte) (p icmpPacket, ok bool) {
	for {
		n, _, err := unix.Recvfrom(e.fd, buf, unix.MSG_DONTWAIT)
		if err != nil {
			return p, false
		}
		if p, err = parseICMP(buf[:n], e.v6, !e.v6); err == nil {
			return p, true
		}
	}
}

// replied reads what the socket holds and says whether the echo reply to seq was in it.
func (e *rawEcho) replied(buf []byte, seq uint16) bool {
	reply := icmp4EchoReply
	if e.v6 {
		reply = icmp6EchoReply
	}
	for p, ok := e.read(buf); ok; p, ok = e.read(buf) {
		if p.Type == reply && p.ID == e.id && p.Seq == seq {
			return true
		}
	}
	return false
}

// quotes says whether an ICMP error from the error queue is about this socket's echo seq:
// not a late one for an earlier echo, nor another socket's.
func (e *rawEcho) quotes(q QueuedError, seq uint16) bool {
	return q.IsICMP() && len(q.Quote) >= echoHeaderLen &&
		binary.BigEndian.Uint16(q.Quote[4:6]) == e.id && binary.BigEndian.Uint16(q.Quote[6:8]) == seq
}
