package lab

import (
	"errors"
	"fmt"
	"net/netip"
	"os"

	"golang.org/x/sys/unix"
)

// A relayed link joins the client and the router through a tun or tap device in each,
// whose packets a relay in the test process carries across. This kernel has no ipip, gre,
// sit or wireguard: two tun devices make the L3 link (no Ethernet header) the TC programs
// must parse. Two tap devices, the client's in NAPI-frags mode, make a link whose received
// packets are not linear: the tap builds each from the iovecs of one write, the first in
// the linear part and the rest in page fragments, as some NIC drivers do.

// relayLink is one relayed link and the addresses and policy rule that route to it.
type relayLink struct {
	ClientIf, RouterIf string
	ClientV4, RouterV4 netip.Prefix
	ClientV6, RouterV6 netip.Prefix
	Table              int
	tap                bool
	// split: with it, frames to the client are written in two iovecs, the first holding
	// split bytes (the client's tap is then in NAPI-frags mode).
	split int
}

// The relayed links of a lab, each chosen by its client source address (ip rule from SRC),
// so that other tests' traffic never takes them.
var (
	TunLink = relayLink{
		ClientIf: "t0", RouterIf: "t1",
		ClientV4: netip.MustParsePrefix("198.51.100.178/30"), RouterV4: netip.MustParsePrefix("198.51.100.177/30"),
		ClientV6: netip.MustParsePrefix("2001:db8:7::2/64"), RouterV6: netip.MustParsePrefix("2001:db8:7::1/64"),
		Table: 101,
	}
	// FragsLink's client tap gets the Ethernet, IP and first 8 bytes of L4 in its linear
	// part (ICMP: the header, not the quote; TCP: not the flags), the rest in fragments.
	FragsLink = relayLink{
		ClientIf: "n0", RouterIf: "n1",
		ClientV4: netip.MustParsePrefix("198.51.100.186/30"), RouterV4: netip.MustParsePrefix("198.51.100.185/30"),
		ClientV6: netip.MustParsePrefix("2001:db8:8::2/64"), RouterV6: netip.MustParsePrefix("2001:db8:8::1/64"),
		Table: 102, tap: true, split: 14 + 20 + 8,
	}
)

// RelayLink sets up rl in the lab, once.
func (l *Lab) RelayLink(rl relayLink) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.relays[rl.ClientIf] {
		return nil
	}
	flags := uint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if rl.tap {
		flags = unix.IFF_TAP | unix.IFF_NO_PI
	}
	cflags := flags
	if rl.split > 0 {
		cflags |= unix.IFF_NAPI | unix.IFF_NAPI_FRAGS
	}
	cf, err := openTun(l.Client, rl.ClientIf, cflags)
	if err != nil {
		return err
	}
	rf, err := openTun(l.Router, rl.RouterIf, flags)
	if err != nil {
		cf.Close()
		return err
	}
	done := make(chan struct{}, 2)
	go relay(rf, cf, rl.split, done) // router → client
	go relay(cf, rf, 0, done)        // client → router
	l.closers = append(l.closers, func() { cf.Close(); rf.Close(); <-done; <-done })
	if err := l.routeRelay(rl); err != nil {
		return err
	}
	if l.relays == nil {
		l.relays = map[string]bool{}
	}
	l.relays[rl.ClientIf] = true
	return nil
}

// routeRelay brings the devices up with their addresses, and routes the lab's prefixes
// from the client's address through the link.
func (l *Lab) routeRelay(rl relayLink) error {
	for _, a := range []struct {
		ns   *NS
		dev  string
		cidr netip.Prefix
	}{{l.Client, rl.ClientIf, rl.ClientV4}, {l.Client, rl.ClientIf, rl.ClientV6}, {l.Router, rl.RouterIf, rl.RouterV4}, {l.Router, rl.RouterIf, rl.RouterV6}} {
		if err := a.ns.Run("ip", "link", "set", a.dev, "up"); err != nil {
			return err
		}
		if err := addAddr(a.ns, a.dev, a.cidr.String()); err != nil {
			return err
		}
	}
	table := fmt.Sprint(rl.Table)
	for _, c := range [][]string{
		{"-4", "route", "add", "203.0.113.0/24", "via", rl.RouterV4.Addr().String(), "dev", rl.ClientIf, "table", table},
		{"-6", "route", "add", "2001:db8::/33", "via", rl.RouterV6.Addr().String(), "dev", rl.ClientIf, "table", table},
		{"-4", "rule", "add", "from", rl.ClientV4.Addr().String(), "lookup", table},
		{"-6", "rule", "add", "from", rl.ClientV6.Addr().String(), "lookup", table},
	} {
		if err := l.Client.Run("ip", c...); err != nil {
			return err
		}
	}
	return nil
}

// openTun creates a tun or tap device named name in ns; it lives while the file is open.
func openTun(ns *NS, name string, flags uint16) (*os.File, error) {
	var fd int
	err := ns.Do(func() error {
		var err error
		fd, err = unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
		if err != nil {
			return fmt.Errorf("open /dev/net/tun: %w", err)
		}
		ifr, err := unix.NewIfreq(name)
		if err == nil {
			ifr.SetUint16(flags)
			err = unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
		}
		if err != nil {
			unix.Close(fd)
			return fmt.Errorf("create %s: %w", name, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), name), nil
}

// relay copies packets from src to dst until either is closed. With split, each packet is
// written as two iovecs, the first of split bytes.
func relay(src, dst *os.File, split int, done chan<- struct{}) {
	defer func() { done <- struct{}{} }()
	buf := make([]byte, 65536)
	rc, err := dst.SyscallConn()
	if err != nil {
		return
	}
	for {
		n, err := src.Read(buf)
		if err != nil {
			if errors.Is(err, os.ErrClosed) {
				return
			}
			continue
		}
		if split <= 0 || n <= split {
			if _, err := dst.Write(buf[:n]); errors.Is(err, os.ErrClosed) {
				return
			}
			continue
		}
		var werr error
		if err := rc.Write(func(fd uintptr) bool {
			_, werr = unix.Writev(int(fd), [][]byte{buf[:split], buf[split:n]})
			return !errors.Is(werr, unix.EAGAIN)
		}); err != nil {
			return
		}
	}
}
