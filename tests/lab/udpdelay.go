package lab

import (
	"fmt"
	"net"
	"net/netip"
	"time"
	"unsafe"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

// PortUDPDelay answers each datagram with a copy of it UDPDelay after it arrived, whatever
// else is in flight: a server whose round trip is longer than a probe's --interval. A DNS
// query's copy has the response bit set: an answer to that query.
const (
	PortUDPDelay = 11
	UDPDelay     = 20 * time.Millisecond
)

// serveUDPDelayed runs the PortUDPDelay server on addr. A reply is due UDPDelay after the
// kernel's receive timestamp of its datagram, so a reader woken late does not delay it. One
// goroutine reads and one sends, in arrival order; the sender sleeps until 2 ms before each
// reply is due and spins the rest, so the delay is exact to tens of microseconds even when
// the test process is busy.
func (l *Lab) serveUDPDelayed(addr netip.AddrPort) error {
	var pc *net.UDPConn
	err := l.Server.Do(func() error {
		c, err := net.ListenPacket("udp", addr.String())
		if err == nil {
			pc = c.(*net.UDPConn)
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("delayed udp on %s: %w", addr, err)
	}
	rc, err := pc.SyscallConn()
	if err == nil {
		err = rc.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1) })
	}
	if err != nil {
		pc.Close()
		return fmt.Errorf("delayed udp on %s: SO_TIMESTAMPNS: %w", addr, err)
	}
	type pending struct {
		due  time.Time
		data []byte
		to   netip.AddrPort
	}
	queue := make(chan pending, 1024)
	done := make(chan struct{}, 2)
	go func() {
		defer func() { close(queue); done <- struct{}{} }()
		buf, oob := make([]byte, 65536), make([]byte, 128)
		for {
			n, oobn, _, from, err := pc.ReadMsgUDPAddrPort(buf, oob)
			if err != nil {
				return
			}
			at := time.Now()
			if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
				for _, m := range msgs {
					if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_TIMESTAMPNS && len(m.Data) >= 16 {
						ts := (*unix.Timespec)(unsafe.Pointer(&m.Data[0]))
						at = time.Unix(ts.Unix())
					}
				}
			}
			data := append([]byte(nil), buf[:n]...)
			var q dns.Msg
			if q.Unpack(data) == nil && !q.Response {
				data[2] |= 0x80
			}
			select {
			case queue <- pending{at.Add(UDPDelay), data, from}:
			default: // a flood: drop, as a real server would
			}
		}
	}()
	go func() {
		defer func() { done <- struct{}{} }()
		for p := range queue {
			if d := time.Until(p.due) - 2*time.Millisecond; d > 0 {
				time.Sleep(d)
			}
			for time.Now().Before(p.due) {
			}
			_, _ = pc.WriteToUDPAddrPort(p.data, p.to)
			l.noteDelayLate(p.to, time.Since(p.due))
		}
	}()
	l.AddCloser(func() { pc.Close(); <-done; <-done })
	return nil
}

// noteDelayLate records how late the delayed server was, at worst, in answering from.
func (l *Lab) noteDelayLate(from netip.AddrPort, late time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.delayLate == nil {
		l.delayLate = map[netip.AddrPort]time.Duration{}
	}
	l.delayLate[from] = max(l.delayLate[from], late)
}

// UDPDelayLate is how late, at worst, the PortUDPDelay server sent its replies to from
// after they were due: a busy test process can hold its sender back, and the round trip a
// probe measures is longer by that much, through no fault of the probe.
func (l *Lab) UDPDelayLate(from netip.AddrPort) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.delayLate[from]
}
