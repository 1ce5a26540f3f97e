package lab

import (
	"crypto/tls"
	"fmt"
	"net"
	"time"

	"reachd/internal/testdns"
)

// ServeDNS starts a testdns server in the server namespace, on every address: UDP and TCP
// on port, DNS over TLS on port+800 when cert is given, and a UDP port that never answers
// at port+1 (the broken zone's upstream, and a silent resolver). Port+2 stays closed.
func (l *Lab) ServeDNS(port int, cert *tls.Certificate) error {
	var ls testdns.Listeners
	var silent net.PacketConn
	err := l.Server.Do(func() (err error) {
		if ls.UDP, err = net.ListenPacket("udp", fmt.Sprintf("[::]:%d", port)); err != nil {
			return err
		}
		if ls.TCP, err = net.Listen("tcp", fmt.Sprintf("[::]:%d", port)); err != nil {
			return err
		}
		if silent, err = net.ListenPacket("udp", fmt.Sprintf("[::]:%d", port+1)); err != nil {
			return err
		}
		if cert != nil {
			ls.TLS = &tls.Config{Certificates: []tls.Certificate{*cert}, NextProtos: []string{"dot"}}
			ls.DoT, err = net.Listen("tcp", fmt.Sprintf("[::]:%d", port+800))
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("DNS server: %w", err)
	}
	go testdns.Silent(silent)
	h := &testdns.Handler{V4: ServerV4.String(), V6: ServerV6.String(),
		Upstream: fmt.Sprintf("%s:%d", ServerV4, port+1), UpstreamWait: 200 * time.Millisecond,
		Dial: l.Server.Dial} // the upstream is asked from the server's namespace
	srv, err := testdns.Start(h, ls)
	if err != nil {
		return err
	}
	l.AddCloser(func() { srv.Close(); silent.Close() })
	return nil
}
