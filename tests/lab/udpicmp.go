package lab

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// UDP and ICMP fixtures on the server (ports) and router (faults).
const (
	PortUDPEcho    = 7  // echoes every datagram back
	PortUDPClosed  = 9  // nothing listens: the server answers ICMP port unreachable
	PortUDPDrop    = 10 // the router drops datagrams to it: silence
	PortDNS        = 53 // the lab's resolver (ServeDNS), UDP and TCP; 54 never answers, 55 is closed
	oddMark        = 0x52
	oddReplyOffset = 16 // where the wrong-payload reply flips a byte of the echoed data
)

var (
	// EchoDropV4/V6: the router drops echo requests to them.
	EchoDropV4 = netip.MustParseAddr("203.0.113.131")
	EchoDropV6 = netip.MustParseAddr("2001:db8:a::131")
	// EchoHalfV4/V6: the router drops half the echo requests to them, two of every four in
	// turn (lost, lost, answered, answered, ...): loss with runs, yet the same every time.
	EchoHalfV4 = netip.MustParseAddr("203.0.113.132")
	EchoHalfV6 = netip.MustParseAddr("2001:db8:a::132")
	// OddV4 answers each echo request, from userspace, with a reply whose checksum is
	// wrong, one whose data differs from the request's, the right reply and a duplicate
	// of it, in that order; the server kernel's own replies from it are dropped.
	OddV4 = netip.MustParseAddr("203.0.113.133")
)

// setupUDPICMP starts the UDP servers and the echo faults.
func (l *Lab) setupUDPICMP() error {
	for _, a := range []netip.Addr{ServerV4, ServerV6} {
		if err := l.serveUDPEcho(netip.AddrPortFrom(a, PortUDPEcho)); err != nil {
			return err
		}
		if err := l.serveUDPDelayed(netip.AddrPortFrom(a, PortUDPDelay)); err != nil {
			return err
		}
		kw := ipKw(a)
		if err := l.routerRule(fmt.Sprintf("%s daddr %s udp dport %d drop", kw, a, PortUDPDrop)); err != nil {
			return err
		}
	}
	if err := l.ServeDNS(PortDNS, nil); err != nil {
		return err
	}
	for _, a := range []netip.Addr{EchoDropV4, EchoDropV6} {
		if err := l.routerRule(fmt.Sprintf("%s daddr %s %s drop", ipKw(a), a, echoMatch(a))); err != nil {
			return err
		}
	}
	for _, a := range []netip.Addr{EchoHalfV4, EchoHalfV6} {
		// A counter of the rule's own, not numgen random: a loss test must not fail by chance.
		if err := l.routerRule(fmt.Sprintf("%s daddr %s %s numgen inc mod 4 { 0, 1 } drop", ipKw(a), a, echoMatch(a))); err != nil {
			return err
		}
	}
	return l.serveOddEcho()
}

func echoMatch(a netip.Addr) string {
	if a.Is4() {
		return "icmp type echo-request"
	}
	return "icmpv6 type echo-request"
}

// serveUDPEcho echoes datagrams on addr, from addr (so a connected client accepts them).
func (l *Lab) serveUDPEcho(addr netip.AddrPort) error {
	var pc net.PacketConn
	err := l.Server.Do(func() (err error) { pc, err = net.ListenPacket("udp", addr.String()); return err })
	if err != nil {
		return fmt.Errorf("udp echo on %s: %w", addr, err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(buf[:n], from)
		}
	}()
	l.AddCloser(func() { pc.Close(); <-done })
	return nil
}

// serveOddEcho runs OddV4's userspace responder (a raw socket in the server namespace).
func (l *Lab) serveOddEcho() error {
	if err := l.Server.Nft(fmt.Sprintf(`table inet reachd_lab_srv {
 chain out { type filter hook output priority 0; policy accept;
  ip saddr %s icmp type echo-reply meta mark != %#x drop
 }
}
`, OddV4, oddMark)); err != nil {
		return err
	}
	var fd int
	err := l.Server.Do(func() (err error) {
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
		return err
	})
	if err != nil {
		return fmt.Errorf("odd echo responder: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, oddMark); err != nil {
		unix.Close(fd)
		return err
	}
	f := os.NewFile(uintptr(fd), "odd-echo")
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, err := f.Read(buf)
			if err != nil {
				if errors.Is(err, os.ErrClosed) {
					return
				}
				continue
			}
			oddAnswer(fd, buf[:n])
		}
	}()
	l.AddCloser(func() { f.Close(); <-done })
	return nil
}

// oddAnswer answers one echo request to OddV4 four ways (see OddV4).
func oddAnswer(fd int, pkt []byte) {
	if len(pkt) < 20 {
		return
	}
	hl := int(pkt[0]&0x0f) * 4
	if len(pkt) < hl+8 || netip.AddrFrom4([4]byte(pkt[16:20])) != OddV4 || pkt[hl] != 8 {
		return
	}
	src := [4]byte(pkt[12:16])
	req := pkt[hl:]
	reply := func(mutate func([]byte)) []byte {
		b := append([]byte(nil), req...)
		b[0], b[2], b[3] = 0, 0, 0
		if mutate != nil {
			mutate(b)
		}
		binary.BigEndian.PutUint16(b[2:4], checksum(b))
		return b
	}
	bad := reply(nil)
	bad[2] ^= 0xff // damaged on the way
	wrong := reply(func(b []byte) {
		if len(b) > 8+oddReplyOffset {
			b[8+oddReplyOffset] ^= 0xff
		}
	})
	good := reply(nil)
	sa := &unix.SockaddrInet4{Addr: src}
	// The socket is not bound (it reads requests to every address): IP_PKTINFO sets the
	// replies' source to OddV4.
	oob := pktinfo4(OddV4)
	for _, b := range [][]byte{bad, wrong, good, good} {
		_ = unix.Sendmsg(fd, b, oob, sa, 0)
		time.Sleep(time.Millisecond)
	}
}

func pktinfo4(src netip.Addr) []byte {
	b := make([]byte, unix.CmsgSpace(unix.SizeofInet4Pktinfo))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level, h.Type = unix.SOL_IP, unix.IP_PKTINFO
	h.SetLen(unix.CmsgLen(unix.SizeofInet4Pktinfo))
	data := b[unix.CmsgLen(0):]
	a := src.As4()
	copy(data[4:8], a[:]) // ipi_spec_dst: the source address
	return b
}

func checksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}
