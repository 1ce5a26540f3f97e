// Package loopback gives tests TCP ports on 127.0.0.1 (the only place the network rule lets
// unit tests send to): one that accepts and closes, one that nothing listens on, and one
// whose SYNs go unanswered.
package loopback

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Open listens on 127.0.0.1, accepts and closes every connection until the test ends.
func Open(t testing.TB) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := AcceptAndClose(ln)
	t.Cleanup(func() { ln.Close(); <-done })
	return netip.MustParseAddrPort(ln.Addr().String())
}

// AcceptAndClose accepts and closes connections on ln until ln is closed; the returned
// channel closes when the accepting goroutine has returned.
func AcceptAndClose(ln net.Listener) <-chan struct{} {
	return Accept(ln, nil)
}

// Accept accepts connections on ln until ln is closed, and gives each to handle in a
// goroutine of its own, which closes it after (nil: close it at once). The returned
// channel closes when the accepting goroutine has returned.
func Accept(ln net.Listener, handle func(net.Conn)) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if handle == nil {
				c.Close()
				continue
			}
			go func() { defer c.Close(); handle(c) }()
		}
	}()
	return done
}

// Serve listens on 127.0.0.1 (through wrap, if given: a TLS listener) and gives each
// connection to handle until the test ends.
func Serve(t testing.TB, wrap func(net.Listener) net.Listener, handle func(net.Conn)) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := netip.MustParseAddrPort(ln.Addr().String())
	if wrap != nil {
		ln = wrap(ln)
	}
	done := Accept(ln, handle)
	t.Cleanup(func() { ln.Close(); <-done })
	return addr
}

// Closed returns a 127.0.0.1 port that was just free, so a connect gets an RST.
func Closed(t testing.TB) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ap := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close()
	return ap
}

// Unanswered returns a 127.0.0.1 port whose listener's accept queue is full, so that it drops
// SYNs: a client retransmits after its initial RTO (1 s). backlog 0 holds one connection,
// which a first dial fills.
func Unanswered(t testing.TB) netip.AddrPort {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, _ := unix.Getsockname(fd)
	dst := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(sa.(*unix.SockaddrInet4).Port))
	filler, err := net.Dial("tcp4", dst.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { filler.Close() })
	// The filler's dial returns before the listener has taken its final ACK (softirq
	// work that a loaded host defers): until then the queue is not full and the probe's
	// SYN would be answered with a cookie. A listener's TCP_INFO unacked is its accept
	// queue's length.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil {
			t.Fatal(err)
		}
		if info.Unacked >= 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the filler connection never reached the accept queue")
		}
	}
	return dst
}
