package lab

import (
	"fmt"
	"net/netip"
)

// Ports and addresses of the standard fixtures.
const (
	PortOpen         = 80
	PortClosed       = 81
	PortDrop         = 82
	PortReset        = 83
	PortFirstSYNDrop = 84 // served; the router drops the first SYN of each flow
	PortRouter       = 8080
)

var (
	AdminV4       = netip.MustParseAddr("203.0.113.130")
	AdminV6       = netip.MustParseAddr("2001:db8:a::130")
	ProhibV4      = netip.MustParsePrefix("203.0.113.140/32")
	ProhibV6      = netip.MustParsePrefix("2001:db8:a::140/128")
	UnreachV4     = netip.MustParsePrefix("203.0.113.141/32")
	UnreachV6     = netip.MustParsePrefix("2001:db8:a::141/128")
	LocalProhibV4 = netip.MustParsePrefix("203.0.113.142/32")
)

// SetupFixtures starts the standard servers and faults that tests and the demo probe.
func (l *Lab) SetupFixtures() error {
	if _, err := l.Serve(l.Server, fmt.Sprintf("[::]:%d", PortOpen)); err != nil {
		return err
	}
	if _, err := l.Serve(l.Server, fmt.Sprintf("[::]:%d", PortFirstSYNDrop)); err != nil {
		return err
	}
	if _, err := l.Serve(l.Router, fmt.Sprintf("[::]:%d", PortRouter)); err != nil {
		return err
	}
	steps := []func() error{
		func() error { return l.DropTCP(ServerV4, PortDrop) },
		func() error { return l.DropTCP(ServerV6, PortDrop) },
		func() error { return l.DropFirstSYN(ServerV4, PortFirstSYNDrop) },
		func() error { return l.DropFirstSYN(ServerV6, PortFirstSYNDrop) },
		func() error { return l.ResetTCP(ServerV4, PortReset) },
		func() error { return l.ResetTCP(ServerV6, PortReset) },
		func() error { return l.RejectAdmin(AdminV4) },
		func() error { return l.RejectAdmin(AdminV6) },
		func() error { return l.RouteProhibit(ProhibV4) },
		func() error { return l.RouteProhibit(ProhibV6) },
		func() error { return l.RouteUnreachable(UnreachV4) },
		func() error { return l.RouteUnreachable(UnreachV6) },
		func() error { return l.ClientRouteProhibit(LocalProhibV4) },
	}
	for _, s := range steps {
		if err := s(); err != nil {
			return err
		}
	}
	return l.setupUDPICMP()
}
