package probe

import (
	"context"
	"net"
)

// tcpKind: a three-way handshake, then a close with RST, so that the prober holds no
// TIME_WAIT entries however many probes it runs.
var tcpKind = register(&Kind{
	Name:    "tcp",
	Order:   1,
	Summary: "TCP three-way handshake, then close",
	Example: "  reachd probe tcp 198.51.100.10:443 '[2001:db8::1]:22' '[fe80::1%eth0]:80'\n" +
		"  reachd probe tcp --json --timeout 2s --retries 1 example.net:443",
	Needs: Needs{Tracepoints: true},
	run:   runTCP,
})

func runTCP(ctx context.Context, a Attempt) Result {
	conn, res := DialTCP(ctx, a)
	if conn != nil {
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		conn.Close()
	}
	return res
}
