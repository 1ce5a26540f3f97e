// Package loopback gives tests TCP ports on 127.0.0.1 (the only place the network rule lets
// unit tests send to): one that accepts and closes, and one that nothing listens on.
package loopback

import (
	"net"
	"net/netip"
	"testing"
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
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return done
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
