package probe

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"reachd/pkg/verdict"
)

// session is one TCP connection of an application probe (tls, http, and later line):
// dialed by the wire-timed dialer, its bytes counted both ways so that a byte of either
// stream can be placed in the packet TC saw carry it, and the instants that bound its
// phases (phases.go).
type session struct {
	a     Attempt
	conn  *meter
	tcp   Result // the TCP handshake, evidence included
	d     dialed
	marks marks
	// certAsked: the TLS server asked for a client certificate (reachd sends none).
	certAsked bool
}

// dialSession connects to a.Addr. Without a session, res says why (the TCP probe's
// reasons and evidence: refused, a timeout with the SYNs seen, an ICMP error and who sent
// it).
func dialSession(ctx context.Context, a Attempt) (*session, Result) {
	start := time.Now()
	conn, res, d := dialTCP(ctx, a, true)
	if conn == nil {
		return nil, res
	}
	// Closed with a reset, by whoever closes it (an HTTP transport too): a prober that
	// runs thousands of probes keeps no TIME_WAIT entries.
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	s := &session{a: a, conn: &meter{Conn: conn}, tcp: res, d: d}
	s.marks = marks{begin: mark{at: start}, resolved: mark{at: start}, syn: s.firstSYN(), connected: s.handshakeEnd(),
		securedRx: -1, sentTx: -1, firstRx: -1, endRx: -1}
	return s, res
}

// close closes the connection (with a reset: see dialSession) and the flow.
func (s *session) close() {
	_ = s.conn.Close()
	if s.d.flow != nil {
		s.d.flow.Close()
	}
}

// firstSYN is when the first SYN left, at TC if seen, else when connect() was issued: the
// connect phase runs from it, as the tcp probe's does; the prober's own set-up before it
// (the socket, the flow's registration) is a phase of its own.
func (s *session) firstSYN() mark {
	if tr, ok := s.tcp.Kind.(*tcpResult); ok && len(tr.syns) > 0 && s.tcp.TimingSource == verdict.SourceWire {
		return mark{at: tr.syns[0], wire: true}
	}
	return mark{at: s.d.startWall}
}

// handshakeEnd is when the SYN-ACK arrived: at TC if seen, else when connect() returned.
func (s *session) handshakeEnd() mark {
	if tr, ok := s.tcp.Kind.(*tcpResult); ok && !tr.synack.IsZero() && s.tcp.TimingSource == verdict.SourceWire {
		return mark{at: tr.synack, wire: true}
	}
	return mark{at: s.d.startWall.Add(s.tcp.Connect)}
}

// ioFailure classifies an error of the connection after its handshake: what layer was
// speaking (tls, application) and what it was doing say where it failed.
func ioFailure(err error, layer verdict.Layer, doing string, timeout time.Duration) Result {
	res := Result{Layer: layer, sent: true}
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		res.Reason = verdict.Timeout
		res.Detail = fmt.Sprintf("no answer within the attempt's %s while %s", timeout, doing)
	case errors.Is(err, context.Canceled):
		res.Reason = verdict.LocalError
		res.Detail = "probe cancelled while " + doing
	case errors.Is(err, syscall.ECONNRESET):
		res.Reason = verdict.Reset
		res.Detail = "the server reset the connection while " + doing
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		res.Reason = verdict.Reset
		res.Detail = "the server closed the connection while " + doing
	default:
		return Result{}
	}
	return res
}

// meter is a connection that counts the bytes read and written, and remembers the latest
// read, so that a moment seen in userspace (the response's first byte handed to the HTTP
// client) can be traced to the stream bytes that carried it. Over TLS it follows the
// records' framing too: plaintext is handed over a whole record at a time, so the read
// that completes a record is not the one that brought its first byte.
type meter struct {
	net.Conn
	mu     sync.Mutex
	tx, rx int64
	last   chunk
	recs   records
}

// chunk is one read: the stream offset it started at, how many bytes it returned, and
// (over TLS) where the record holding its first byte starts and ends (-1: not known).
type chunk struct {
	off, n, recStart, recEnd int64
}

func (m *meter) Read(b []byte) (int, error) {
	n, err := m.Conn.Read(b)
	if n > 0 {
		m.mu.Lock()
		start, end := m.recs.feed(m.rx, b[:n])
		m.last = chunk{m.rx, int64(n), start, end}
		m.rx += int64(n)
		m.mu.Unlock()
	}
	return n, err
}

func (m *meter) Write(b []byte) (int, error) {
	n, err := m.Conn.Write(b)
	m.mu.Lock()
	m.tx += int64(n)
	m.mu.Unlock()
	return n, err
}

// counts returns the bytes written and read so far.
func (m *meter) counts() (tx, rx int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.tx, m.rx
}

// lastChunk returns the latest read.
func (m *meter) lastChunk() chunk {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.last
}

// records follows TLS record framing (a 5-byte header whose last two bytes are the
// length) over a stream read in pieces. Meaningless, and unused, for a plain stream.
type records struct {
	cur, next int64 // the record being read starts at cur; the next one at next (-1: its header is not whole yet)
	hdr       [5]byte
	hdrN      int
}

// feed advances over b, read at stream offset off (the stream's reads in order), and
// returns where the record holding b's first byte starts and ends (-1 while its header is
// not whole).
func (r *records) feed(off int64, b []byte) (start, end int64) {
	start, end = -1, -1
	pos := off
	for len(b) > 0 {
		if pos == r.next {
			if start >= 0 && end < 0 {
				end = pos
			}
			r.cur, r.next, r.hdrN = pos, -1, 0
		}
		if start < 0 {
			start = r.cur
		}
		if r.next < 0 { // the header of the record at cur
			k := copy(r.hdr[r.hdrN:], b)
			r.hdrN += k
			b, pos = b[k:], pos+int64(k)
			if r.hdrN == len(r.hdr) {
				r.next = r.cur + int64(len(r.hdr)) + int64(binary.BigEndian.Uint16(r.hdr[3:5]))
			}
			continue
		}
		k := min(r.next-pos, int64(len(b)))
		b, pos = b[k:], pos+k
	}
	if end < 0 && r.cur == start && r.next >= 0 {
		end = r.next
	}
	return start, end
}
