package probe

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"reachd/pkg/wire"
)

// echoPayloadLen is the data carried by each echo request, as ping's default: 56 bytes, a
// 64-byte ICMP message. Its first 16 bytes are nonces; the rest is a fixed pattern, so a
// reply whose data was damaged or forged is told apart from an answer.
const echoPayloadLen = 56

// recentSeqs is how many answered or expired echoes a pinger remembers, to tell a
// duplicate or late reply from another program's.
const recentSeqs = 4096

// pingerKey says which shared socket an attempt uses: one per family and binding.
type pingerKey struct {
	v6     bool
	iface  string
	mark   uint32
	source netip.Addr
	// txStamps: ask the kernel for transmit timestamps (when no TC program times the
	// echoes); they cost a second read per echo, so only then.
	txStamps bool
}

// pinger is one ICMP socket shared by every concurrent echo probe of its key: replies are
// demultiplexed by identifier, sequence, source and payload nonce, so CPU grows with the
// echoes sent, not with sockets × replies.
type pinger struct {
	key   pingerKey
	f     *os.File
	fd    int
	raw   bool   // raw socket (CAP_NET_RAW); false: ICMP datagram ("ping") socket
	id    uint16 // echo identifier: random (raw) or the kernel's (ping sockets rewrite it)
	nonce [8]byte
	done  chan struct{} // closed when the reader has returned
	// txStamps: the kernel's transmit timestamps are on (see pingerKey.txStamps and
	// wantTxStamps); the reader then reads each echo's stamp before its reply.
	txStamps atomic.Bool

	mu      sync.Mutex
	refs    int
	idle    *time.Timer // closes the socket when kept with no echo (KeepEchoSockets)
	nextSeq uint16
	pending map[uint16]*echo
	recent  map[uint16]*echo
	ring    [recentSeqs]uint16 // recent's seqs, oldest overwritten first
	ringLen int
	ringPos int
	watches map[dstKey]*watch
	swept   time.Time // the last sweep of kept registrations (sweepWatches)
}

// echo is one echo request in flight and what answered it.
type echo struct {
	seq      uint16
	dst      netip.Addr
	nonce    [8]byte
	sentWall time.Time
	sentMono int64
	counters *echoCounters
	done     chan struct{} // closed on the first answer (reply or ICMP error)

	// Set by the reader under pinger.mu, before done is closed.
	answered bool
	rxUser   time.Time // when the reader got it
	rxKernel time.Time // the kernel's receive timestamp; zero if none
	txKernel time.Time // the kernel's transmit timestamp; zero if none
	ttl      int
	err      *echoError
	// collected: its attempt has taken its wire events (set under pinger.mu).
	collected bool
}

type echoError struct {
	typ, code uint8
	from      netip.Addr
}

// echoCounters are one attempt's answers that were not answers.
type echoCounters struct {
	duplicates, late, corrupt atomic.Int64
}

// watch is a destination some attempt is probing: its registered flow (shared by
// concurrent attempts to it) and the replies from it that no echo of ours explains.
type watch struct {
	refs      int
	ready     chan struct{} // closed once flow is set (or known to stay nil)
	flow      *wire.Flow
	reg       echoReg   // where flow is registered
	idleSince time.Time // refs is 0: kept for the next attempt since then (see keep)
	note      string    // why the flow is not watched, when the verdict must say so
	foreign   atomic.Int64
	corrupt   atomic.Int64
}

var pingers = struct {
	sync.Mutex
	m map[pingerKey]*pinger
	// linger: how long a socket nobody uses stays open for the next echo (KeepEchoSockets),
	// in ns. Atomic: read under a pinger's lock, which is taken after this one's.
	linger atomic.Int64
}{m: map[pingerKey]*pinger{}}

// KeepEchoSockets keeps an echo socket open for d after its last echo, for the next: a
// daemon whose probes of a socket come one at a time would otherwise open and close it for
// each (socket, options, a reader goroutine: the larger part of an echo's CPU). 0 closes
// them with their last echo, as a one-shot run wants; CloseEchoSockets closes idle ones.
func KeepEchoSockets(d time.Duration) {
	pingers.linger.Store(int64(d))
}

// CloseEchoSockets closes the echo sockets kept open with no echo in flight.
func CloseEchoSockets() {
	pingers.Lock()
	var idle []*pinger
	for k, p := range pingers.m {
		p.mu.Lock()
		if p.refs == 0 {
			idle = append(idle, p)
			delete(pingers.m, k)
			if p.idle != nil {
				p.idle.Stop()
			}
		}
		p.mu.Unlock()
	}
	pingers.Unlock()
	for _, p := range idle {
		p.close()
	}
}

// errPermission says a privilege is missing (no echo socket kind is allowed, SO_MARK
// needs CAP_NET_ADMIN); its message is the fix.
type errPermission struct{ msg string }

func (e errPermission) Error() string { return e.msg }

// acquirePinger returns the shared socket for k, opening it on first use. Every acquire
// must be paired with a release; the socket closes with the last one.
func acquirePinger(k pingerKey) (*pinger, error) {
	pingers.Lock()
	defer pingers.Unlock()
	if p := pingers.m[k]; p != nil {
		p.mu.Lock()
		p.refs++
		if p.idle != nil {
			p.idle.Stop()
			p.idle = nil
		}
		p.mu.Unlock()
		return p, nil
	}
	p, err := openPinger(k)
	if err != nil {
		return nil, err
	}
	p.refs = 1
	pingers.m[k] = p
	return p, nil
}

func (p *pinger) release() {
	pingers.Lock()
	p.mu.Lock()
	p.refs--
	last := p.refs == 0
	if linger := time.Duration(pingers.linger.Load()); last && linger > 0 {
		p.idle = time.AfterFunc(linger, p.closeIdle)
		last = false
	}
	p.mu.Unlock()
	if last {
		delete(pingers.m, p.key)
	}
	pingers.Unlock()
	if last {
		p.close()
	}
}

// closeIdle closes a kept socket that no echo took again meanwhile.
func (p *pinger) closeIdle() {
	pingers.Lock()
	p.mu.Lock()
	idle := p.refs == 0 && pingers.m[p.key] == p
	if idle {
		delete(pingers.m, p.key)
		p.idle = nil
	}
	p.mu.Unlock()
	pingers.Unlock()
	if idle {
		p.close()
	}
}

func (p *pinger) close() {
	p.f.Close()
	<-p.done
	p.mu.Lock()
	kept := p.sweepWatches(time.Now(), true)
	p.mu.Unlock()
	for _, f := range kept {
		if f != nil {
			f.Close()
		}
	}
}

// CheckICMP says whether this process may send echo requests of a family (v6), and if not,
// how to allow it. The CLI asks before probing, so a missing permission exits 2.
func CheckICMP(v6 bool) error {
	fd, _, err := icmpSocket(v6)
	if err != nil {
		return err
	}
	unix.Close(fd)
	return nil
}

// icmpSocket opens a raw ICMP socket, or an ICMP datagram socket when raw ones are not
// allowed. reachd never changes the sysctl that governs the latter.
func icmpSocket(v6 bool) (fd int, raw bool, err error) {
	domain, proto := unix.AF_INET, unix.IPPROTO_ICMP
	if v6 {
		domain, proto = unix.AF_INET6, unix.IPPROTO_ICMPV6
	}
	fd, err = unix.Socket(domain, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, proto)
	if err == nil {
		return fd, true, nil
	}
	if !errors.Is(err, unix.EPERM) && !errors.Is(err, unix.EACCES) {
		return -1, false, fmt.Errorf("open raw ICMP socket: %w", err)
	}
	fd, derr := unix.Socket(domain, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, proto)
	if derr == nil {
		return fd, false, nil
	}
	if !errors.Is(derr, unix.EPERM) && !errors.Is(derr, unix.EACCES) {
		return -1, false, fmt.Errorf("open ICMP datagram socket: %w", derr)
	}
	lo, hi := pingGroupRange()
	fam := "ICMP"
	if v6 {
		fam = "ICMPv6"
	}
	return -1, false, errPermission{fmt.Sprintf(
		"%s echo needs CAP_NET_RAW (raw socket: "+grantRaw+") "+
			"or an ICMP datagram socket, which net.ipv4.ping_group_range (now %s %s) must allow for group %d (e.g. `sysctl -w net.ipv4.ping_group_range=\"0 2147483647\"`); reachd changes neither",
		fam, lo, hi, os.Getegid())}
}

// grantRaw says how to give reachd CAP_NET_RAW.
const grantRaw = "run as root, `setcap cap_net_raw+ep reachd`, or AmbientCapabilities=CAP_NET_RAW in the unit"

func pingGroupRange() (string, string) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ping_group_range")
	if err != nil {
		return "?", "?"
	}
	f := bytes.Fields(b)
	if len(f) != 2 {
		return "?", "?"
	}
	return string(f[0]), string(f[1])
}

func openPinger(k pingerKey) (p *pinger, err error) {
	fd, raw, err := icmpSocket(k.v6)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			unix.Close(fd)
		}
	}()
	p = &pinger{key: k, fd: fd, raw: raw, done: make(chan struct{}),
		pending: map[uint16]*echo{}, recent: map[uint16]*echo{}, watches: map[dstKey]*watch{}}
	if _, err := rand.Read(p.nonce[:]); err != nil {
		return nil, err
	}
	var seq [2]byte
	_, _ = rand.Read(seq[:])
	p.nextSeq = binary.BigEndian.Uint16(seq[:])
	if err := p.setup(); err != nil {
		return nil, err
	}
	p.f = os.NewFile(uintptr(fd), "reachd-icmp")
	go p.read()
	return p, nil
}

// setup sets the socket's options and learns its echo identifier.
func (p *pinger) setup() error {
	fd, k := p.fd, p.key
	if k.iface != "" {
		if err := unix.SetsockoptString(fd, unix.SOL_SOCKET, unix.SO_BINDTODEVICE, k.iface); err != nil {
			if errors.Is(err, unix.ENODEV) {
				return fmt.Errorf("interface %s does not exist", k.iface)
			}
			return fmt.Errorf("bind ICMP socket to %s: %w", k.iface, err)
		}
	}
	if k.mark != 0 {
		if err := setMark(fd, k.mark); err != nil {
			return err
		}
	}
	// Room for a burst of replies from many targets at once; FORCE works with
	// CAP_NET_ADMIN, else the request is capped at net.core.rmem_max.
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 4<<20) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
	}
	flags := unix.SOF_TIMESTAMPING_RX_SOFTWARE | unix.SOF_TIMESTAMPING_SOFTWARE
	if k.txStamps {
		flags |= unix.SOF_TIMESTAMPING_TX_SOFTWARE
		p.txStamps.Store(true)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPING, flags); err != nil {
		return fmt.Errorf("setsockopt SO_TIMESTAMPING: %w", err)
	}
	if k.v6 {
		_ = unix.SetsockoptInt(fd, unix.SOL_IPV6, unix.IPV6_RECVHOPLIMIT, 1)
	} else if !p.raw {
		_ = unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_RECVTTL, 1)
	}
	if p.raw {
		return p.setupRaw()
	}
	return p.setupPing()
}

// setupRaw filters what wakes a raw socket and draws its echo identifier.
func (p *pinger) setupRaw() error {
	fd, k := p.fd, p.key
	// Wake for echo replies and errors only, not for every ICMP message the host gets.
	if k.v6 {
		var filt unix.ICMPv6Filter
		for i := range filt.Data {
			filt.Data[i] = ^uint32(0)
		}
		for _, t := range []uint8{icmp6DestUnreach, icmp6PacketTooBig, icmp6TimeExceeded, icmp6ParamProblem, icmp6EchoReply} {
			filt.Data[t>>5] &^= 1 << (t & 31)
		}
		if err := unix.SetsockoptICMPv6Filter(fd, unix.SOL_ICMPV6, unix.ICMPV6_FILTER, &filt); err != nil {
			return fmt.Errorf("setsockopt ICMPV6_FILTER: %w", err)
		}
	} else {
		pass := uint32(1<<icmp4EchoReply | 1<<icmp4DestUnreach | 1<<icmp4SourceQuench | 1<<icmp4TimeExceeded | 1<<icmp4ParamProblem)
		if err := unix.SetsockoptInt(fd, unix.SOL_RAW, unix.ICMP_FILTER, int(^pass)); err != nil {
			return fmt.Errorf("setsockopt ICMP_FILTER: %w", err)
		}
	}
	var id [2]byte
	if _, err := rand.Read(id[:]); err != nil {
		return err
	}
	p.id = binary.BigEndian.Uint16(id[:])
	if !k.source.IsValid() {
		return nil
	}
	sa, err := sockaddrOf(netip.AddrPortFrom(k.source, 0))
	if err != nil {
		return err
	}
	if err := unix.Bind(fd, sa); err != nil {
		return bindError(k.source, err)
	}
	return nil
}

// setupPing readies an ICMP datagram socket: the kernel reports errors through the error
// queue, and owns the identifier (the socket's "port"), which binding assigns.
func (p *pinger) setupPing() error {
	fd, k := p.fd, p.key
	level, opt := unix.SOL_IP, unix.IP_RECVERR
	if k.v6 {
		level, opt = unix.SOL_IPV6, unix.IPV6_RECVERR
	}
	if err := unix.SetsockoptInt(fd, level, opt, 1); err != nil {
		return fmt.Errorf("setsockopt IP_RECVERR: %w", err)
	}
	src := k.source
	if !src.IsValid() {
		src = netip.IPv4Unspecified()
		if k.v6 {
			src = netip.IPv6Unspecified()
		}
	}
	sa, err := sockaddrOf(netip.AddrPortFrom(src, 0))
	if err != nil {
		return err
	}
	if err := unix.Bind(fd, sa); err != nil {
		return bindError(src, err)
	}
	sn, err := unix.Getsockname(fd)
	if err != nil {
		return fmt.Errorf("getsockname: %w", err)
	}
	p.id = addrPortOf(sn).Port()
	return nil
}

func bindError(a netip.Addr, err error) error {
	if errors.Is(err, unix.EADDRNOTAVAIL) {
		return fmt.Errorf("source address %s is not configured on this host", a)
	}
	return fmt.Errorf("bind ICMP socket to %s: %w", a, err)
}
