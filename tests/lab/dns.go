package lab

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"time"

	"reachd/internal/testdns"
)

// ServeDNS starts a testdns server in the server namespace, on ServerV4 and ServerV6 (not
// on the server's other addresses: those have no resolver): UDP and TCP on port, DNS over
// TLS on port+800 when cert is given, and a UDP port that never answers at port+1 (the
// broken zone's upstream, and a silent resolver). Port+2 stays closed.
func (l *Lab) ServeDNS(port int, cert *tls.Certificate) error {
	for _, a := range []netip.Addr{ServerV4, ServerV6} {
		if err := l.serveDNSOn(a, port, cert); err != nil {
			return fmt.Errorf("DNS server on %s: %w", a, err)
		}
	}
	return nil
}

func (l *Lab) serveDNSOn(a netip.Addr, port int, cert *tls.Certificate) error {
	var ls testdns.Listeners
	var silent net.PacketConn
	at := func(p int) string { return netip.AddrPortFrom(a, uint16(p)).String() }
	err := l.Server.Do(func() (err error) {
		if ls.UDP, err = net.ListenPacket("udp", at(port)); err != nil {
			return err
		}
		if ls.TCP, err = net.Listen("tcp", at(port)); err != nil {
			return err
		}
		if silent, err = net.ListenPacket("udp", at(port+1)); err != nil {
			return err
		}
		if cert != nil {
			ls.TLS = &tls.Config{Certificates: []tls.Certificate{*cert}, NextProtos: []string{"dot"}}
			ls.DoT, err = net.Listen("tcp", at(port+800))
		}
		return err
	})
	if err != nil {
		return err
	}
	go testdns.Silent(silent)
	h := &testdns.Handler{V4: ServerV4.String(), V6: ServerV6.String(),
		Upstream: at(port + 1), UpstreamWait: 200 * time.Millisecond,
		Dial: l.Server.Dial} // the upstream is asked from the server's namespace
	srv, err := testdns.Start(h, ls)
	if err != nil {
		return err
	}
	l.AddCloser(func() { srv.Close(); silent.Close() })
	return nil
}
