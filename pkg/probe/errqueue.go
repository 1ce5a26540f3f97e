package probe

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"
)

// Origins of a struct sock_extended_err (linux/errqueue.h).
const (
	eeOriginLocal = 1
	eeOriginICMP  = 2
	eeOriginICMP6 = 3
	// eeOriginTimestamping marks a transmit timestamp (SO_TIMESTAMPING), not an error.
	eeOriginTimestamping = 4
)

// sizeofSockExtendedErr is sizeof(struct sock_extended_err): u32 errno, u8 origin, type,
// code, pad, u32 info, u32 data. The offender's sockaddr follows it (SO_EE_OFFENDER).
const sizeofSockExtendedErr = 16

// QueuedError is one message from a socket's error queue (IP_RECVERR / IPV6_RECVERR).
type QueuedError struct {
	Errno    unix.Errno
	Origin   uint8
	Type     uint8
	Code     uint8
	Info     uint32
	Data     uint32     // ee_data: a transmit timestamp's SOF_TIMESTAMPING_OPT_ID counter
	Offender netip.Addr // who sent the ICMP error; invalid if the kernel gave none
	At       time.Time  // the kernel's receive timestamp (SO_TIMESTAMPNS); zero if none
	// Quote is what the error quotes after the original packet's IP header, as far as the
	// kernel hands it over: for a raw ICMP socket, the echo request's header and data.
	Quote []byte
}

// IsICMP reports whether the error came from an ICMP or ICMPv6 message.
func (q QueuedError) IsICMP() bool { return q.Origin == eeOriginICMP || q.Origin == eeOriginICMP6 }

var errShort = errors.New("short sock_extended_err")

// ParseExtendedErr decodes a struct sock_extended_err and the offender address after it.
// b is the control message's data as the kernel wrote it (native byte order).
func ParseExtendedErr(b []byte) (QueuedError, error) {
	var q QueuedError
	if len(b) < sizeofSockExtendedErr {
		return q, errShort
	}
	q.Errno = unix.Errno(binary.NativeEndian.Uint32(b[0:4]))
	q.Origin, q.Type, q.Code = b[4], b[5], b[6]
	q.Info = binary.NativeEndian.Uint32(b[8:12])
	q.Data = binary.NativeEndian.Uint32(b[12:16])
	sa := b[sizeofSockExtendedErr:]
	if len(sa) < 2 {
		return q, nil
	}
	switch binary.NativeEndian.Uint16(sa[0:2]) {
	case unix.AF_INET:
		if len(sa) >= 8 {
			q.Offender = netip.AddrFrom4([4]byte(sa[4:8]))
		}
	case unix.AF_INET6:
		if len(sa) >= 24 {
			q.Offender = netip.AddrFrom16([16]byte(sa[8:24]))
		}
	}
	return q, nil
}

// rxMeta is what the control messages of a received packet say.
type rxMeta struct {
	at  time.Time
	ttl int
	ee  *QueuedError
}

func parseRxOOB(oob []byte) rxMeta {
	m := rxMeta{ttl: -1}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return m
	}
	for _, c := range msgs {
		switch {
		case c.Header.Level == unix.SOL_SOCKET && (c.Header.Type == unix.SCM_TIMESTAMPING || c.Header.Type == unix.SCM_TIMESTAMPNS):
			m.at = timespecAt(c.Data)
		case (c.Header.Level == unix.SOL_IP && c.Header.Type == unix.IP_TTL) ||
			(c.Header.Level == unix.SOL_IPV6 && c.Header.Type == unix.IPV6_HOPLIMIT):
			if len(c.Data) >= 4 {
				m.ttl = int(binary.NativeEndian.Uint32(c.Data[:4]))
			}
		case (c.Header.Level == unix.SOL_IP && c.Header.Type == unix.IP_RECVERR) ||
			(c.Header.Level == unix.SOL_IPV6 && c.Header.Type == unix.IPV6_RECVERR):
			if q, err := ParseExtendedErr(c.Data); err == nil {
				m.ee = &q
			}
		}
	}
	if m.ee != nil {
		m.ee.At = m.at // the error's receive stamp (or, for a transmit report, the send's)
	}
	return m
}

// timespecAt reads the first struct timespec of a timestamp control message (the software
// stamp of SCM_TIMESTAMPING), on the 64-bit targets reachd builds for.
func timespecAt(b []byte) time.Time {
	if len(b) < 16 {
		return time.Time{}
	}
	sec := int64(binary.NativeEndian.Uint64(b[0:8]))
	nsec := int64(binary.NativeEndian.Uint64(b[8:16]))
	if sec == 0 && nsec == 0 {
		return time.Time{}
	}
	return time.Unix(sec, nsec)
}

// parseErrQueueOOB decodes the control messages of one MSG_ERRQUEUE read.
func parseErrQueueOOB(oob []byte) []QueuedError {
	if m := parseRxOOB(oob); m.ee != nil {
		return []QueuedError{*m.ee}
	}
	return nil
}

// drainErrQueue reads every pending message of fd's error queue without blocking.
// The queue is bounded by the socket's receive buffer, and we stop after a few reads anyway.
func drainErrQueue(fd int) []QueuedError {
	var out []QueuedError
	buf := make([]byte, 512)
	// Room for every control message: an error may come with a timestamp and the
	// kernel's timestamping statistics (448 bytes) ahead of IP_RECVERR's, which a
	// shorter buffer cuts off (MSG_CTRUNC).
	oob := make([]byte, 2048)
	for range 16 {
		n, oobn, _, _, err := unix.Recvmsg(fd, buf, oob, unix.MSG_ERRQUEUE|unix.MSG_DONTWAIT)
		if err != nil {
			break
		}
		for _, q := range parseErrQueueOOB(oob[:oobn]) {
			q.Quote = append([]byte(nil), buf[:min(n, echoHeaderLen)]...)
			out = append(out, q)
		}
	}
	return out
}

// lastICMP returns the most recent ICMP-origin error, if any.
func lastICMP(qs []QueuedError) (QueuedError, bool) {
	for i := len(qs) - 1; i >= 0; i-- {
		if qs[i].IsICMP() {
			return qs[i], true
		}
	}
	return QueuedError{}, false
}
