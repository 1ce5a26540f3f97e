// Package lab builds throwaway network-namespace topologies for reachd's tests, demo and
// benchmarks:
//
//	client (c0) ──── (r0) router (r1) ──── (s0) server
//	198.51.100.2/26      .1   203.0.113.1/26     .2       AnyIP 203.0.113.128/25
//	2001:db8:c::2/64    ::1   2001:db8:5::1/64  ::2      AnyIP 2001:db8:a::/64
//	fe80::2              fe80::1
//	+ 198.51.100.64/26 as /32s on demand (ErrorSourceV4), routed back by the router
//
// Only documentation prefixes are used (the network rule for tests) and the client's routes
// lead only into the lab, so a prober running there cannot reach anything outside.
package lab

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"reachd/internal/loopback"
)

// Addresses of the topology.
var (
	ClientV4       = netip.MustParseAddr("198.51.100.2")
	RouterClientV4 = netip.MustParseAddr("198.51.100.1")
	RouterServerV4 = netip.MustParseAddr("203.0.113.1")
	ServerV4       = netip.MustParseAddr("203.0.113.2")
	ClientV6       = netip.MustParseAddr("2001:db8:c::2")
	RouterClientV6 = netip.MustParseAddr("2001:db8:c::1")
	RouterServerV6 = netip.MustParseAddr("2001:db8:5::1")
	ServerV6       = netip.MustParseAddr("2001:db8:5::2")
	ClientLL       = netip.MustParseAddr("fe80::2")
	RouterLL       = netip.MustParseAddr("fe80::1")

	// AnyIP blocks: every address in them is local to the server.
	AnyIPV4 = netip.MustParsePrefix("203.0.113.128/25")
	AnyIPV6 = netip.MustParsePrefix("2001:db8:a::/64")

	// GhostV4/V6 sit on the router–server link but no host answers ARP/NDP for them.
	GhostV4 = netip.MustParseAddr("203.0.113.9")
	GhostV6 = netip.MustParseAddr("2001:db8:5::9")
	// ClientGhostV4 and ClientGhostV4b sit on the client's own link with no host behind them.
	ClientGhostV4  = netip.MustParseAddr("198.51.100.9")
	ClientGhostV4b = netip.MustParseAddr("198.51.100.10")
	// UnassignedClientV4 is on the client's link but no host has it: not a usable source.
	UnassignedClientV4 = netip.MustParseAddr("198.51.100.50")
	// UnroutedV4/V6 are routed by the client to the router, which has no route for them.
	UnroutedV4 = netip.MustParseAddr("203.0.113.70")
	UnroutedV6 = netip.MustParseAddr("2001:db8:bad::1")
	// NoRouteV4/V6 have no route in the client at all.
	NoRouteV4 = netip.MustParseAddr("198.51.100.200")
	NoRouteV6 = netip.MustParseAddr("2001:db8:ffff::1")
)

// Interface names, per namespace.
const (
	ClientIf       = "c0"
	RouterClientIf = "r0"
	RouterServerIf = "r1"
	ServerIf       = "s0"
)

const namePrefix = "reachd-lab-"

// NS is one named network namespace of a lab.
type NS struct {
	Name   string
	handle netns.NsHandle
	nl     *netlink.Handle
}

// Path is the namespace's bind mount, for nsenter --net=.
func (ns *NS) Path() string { return filepath.Join("/run/netns", ns.Name) }

// Do runs fn on an OS thread switched into the namespace. If switching back fails the
// thread is left locked, so the runtime discards it rather than reuse it in the wrong netns.
func (ns *NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(ns.handle); err != nil {
			errc <- fmt.Errorf("enter netns %s: %w", ns.Name, err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("return from netns %s: %w", ns.Name, err))
			return // thread stays locked and dies with this goroutine
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Command runs name inside the namespace. nsenter is used rather than `ip netns exec`,
// which remounts /sys and so hides bpffs and tracefs.
func (ns *NS) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=" + ns.Path(), "--", name}, args...)...)
}

// Run runs a command in the namespace and returns its combined output on failure.
func (ns *NS) Run(name string, args ...string) error {
	out, err := ns.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s in %s: %w: %s", name, strings.Join(args, " "), ns.Name, err, bytes.TrimSpace(out))
	}
	return nil
}

// Nft loads an nftables script into the namespace.
func (ns *NS) Nft(script string) error {
	cmd := ns.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft in %s: %w: %s\n%s", ns.Name, err, bytes.TrimSpace(out), script)
	}
	return nil
}

// Sysctl writes a /proc/sys/net value inside the namespace (its own copy, never the host's)
// and reads it back: the kernel ignores some writes without an error (an empty one, for
// one), and a lab that silently kept a default would test something else.
func (ns *NS) Sysctl(key, value string) error {
	return ns.Do(func() error {
		p := "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
		if err := os.WriteFile(p, []byte(value+"\n"), 0o644); err != nil {
			return fmt.Errorf("sysctl %s in %s: %w", key, ns.Name, err)
		}
		got, err := os.ReadFile(p)
		if err != nil {
			return fmt.Errorf("sysctl %s in %s: %w", key, ns.Name, err)
		}
		if g, w := strings.Fields(string(got)), strings.Fields(value); !slices.Equal(g, w) {
			return fmt.Errorf("sysctl %s in %s: wrote %q, reads %q", key, ns.Name, value, bytes.TrimSpace(got))
		}
		return nil
	})
}

// Listen opens a listener whose socket lives in the namespace.
func (ns *NS) Listen(network, addr string) (ln net.Listener, err error) {
	err = ns.Do(func() (err error) { ln, err = net.Listen(network, addr); return err })
	return ln, err
}

// Dial opens a connection whose socket lives in the namespace.
func (ns *NS) Dial(network, addr string) (c net.Conn, err error) {
	err = ns.Do(func() (err error) { c, err = net.Dial(network, addr); return err })
	return c, err
}

// Lab is one client–router–server topology.
type Lab struct {
	Client, Router, Server *NS

	mu      sync.Mutex
	closers []func()
	closed  bool
	nftInit bool
	// scaleReady: the scale tests' drop rule is in place.
	scaleReady bool
	sources    sourcePool
	uplink     bool // SecondUplink is in place
	delayLate  map[netip.AddrPort]time.Duration
	relays     map[string]bool // RelayLink: by client device
}

var seq atomic.Int64

var (
	liveMu sync.Mutex
	live   = map[*Lab]bool{}
)

// New builds a lab. Stale namespaces of crashed runs are reaped first.
func New() (l *Lab, err error) {
	if os.Geteuid() != 0 {
		return nil, ErrNotRoot
	}
	Reap()
	base := fmt.Sprintf("%s%d-%d-", namePrefix, os.Getpid(), seq.Add(1))
	l = &Lab{}
	defer func() {
		if err != nil {
			l.Close()
			l = nil
		}
	}()
	liveMu.Lock()
	live[l] = true
	liveMu.Unlock()
	for _, p := range []struct {
		ns   **NS
		name string
	}{{&l.Client, "client"}, {&l.Router, "router"}, {&l.Server, "server"}} {
		ns, err := newNS(base + p.name)
		if err != nil {
			return nil, err
		}
		*p.ns = ns
	}
	if err := l.build(); err != nil {
		return nil, fmt.Errorf("build lab: %w", err)
	}
	return l, nil
}

// ErrNotRoot says the lab needs root (namespaces, veth, nftables).
var ErrNotRoot = errors.New("the lab needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) to create network namespaces")

func newNS(name string) (*NS, error) {
	var h netns.NsHandle
	// NewNamed switches the calling thread into the new namespace: do it on a locked
	// thread and switch back.
	ns := &NS{Name: name}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		h, err = netns.NewNamed(name)
		if serr := netns.Set(orig); serr != nil {
			errc <- errors.Join(err, serr)
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	if err := <-errc; err != nil {
		return nil, fmt.Errorf("create netns %s: %w", name, err)
	}
	ns.handle = h
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		return nil, fmt.Errorf("netlink in %s: %w", name, err)
	}
	ns.nl = nl
	return ns, nil
}

func (l *Lab) build() error {
	for _, ns := range []*NS{l.Client, l.Router, l.Server} {
		// Our own namespaces: no DAD delay on lab addresses, and fast neighbor failure so
		// a missing host answers with ICMP well inside a probe's deadline.
		for _, kv := range [][2]string{
			{"net.ipv6.conf.all.accept_dad", "0"}, {"net.ipv6.conf.default.accept_dad", "0"},
			{"net.ipv6.conf.default.accept_ra", "0"},
		} {
			if err := ns.Sysctl(kv[0], kv[1]); err != nil {
				return err
			}
		}
		// Parallel tests draw many ICMP errors toward one client, and the kernel's per-peer
		// and global ICMP limits would drop some and turn them into timeouts. An empty
		// ratemask exempts every type from both. (icmp_ratelimit=0 is not the same: it lets
		// each error through but empties the source's inet_peer tokens, which ip_error
		// shares, so a rejected packet silenced the next unroutable one for a second.)
		if err := ns.Sysctl("net.ipv4.icmp_ratemask", "0"); err != nil {
			return err
		}
		if err := ns.Sysctl("net.ipv6.icmp.ratemask", ""); err != nil {
			return err
		}
		lo, err := ns.nl.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := ns.nl.LinkSetUp(lo); err != nil {
			return err
		}
	}
	if err := veth(l.Client, ClientIf, l.Router, RouterClientIf); err != nil {
		return err
	}
	if err := veth(l.Router, RouterServerIf, l.Server, ServerIf); err != nil {
		return err
	}
	addrs := []struct {
		ns   *NS
		dev  string
		cidr string
	}{
		{l.Client, ClientIf, "198.51.100.2/26"}, {l.Client, ClientIf, "2001:db8:c::2/64"}, {l.Client, ClientIf, "fe80::2/64"},
		{l.Router, RouterClientIf, "198.51.100.1/26"}, {l.Router, RouterClientIf, "2001:db8:c::1/64"}, {l.Router, RouterClientIf, "fe80::1/64"},
		{l.Router, RouterServerIf, "203.0.113.1/26"}, {l.Router, RouterServerIf, "2001:db8:5::1/64"},
		{l.Server, ServerIf, "203.0.113.2/26"}, {l.Server, ServerIf, "2001:db8:5::2/64"},
	}
	for _, a := range addrs {
		if err := addAddr(a.ns, a.dev, a.cidr); err != nil {
			return err
		}
	}
	for _, kv := range [][2]string{
		{"net.ipv4.ip_forward", "1"}, {"net.ipv6.conf.all.forwarding", "1"},
		{"net.ipv4.neigh." + RouterServerIf + ".retrans_time_ms", "200"},
		{"net.ipv6.neigh." + RouterServerIf + ".retrans_time_ms", "200"},
	} {
		if err := l.Router.Sysctl(kv[0], kv[1]); err != nil {
			return err
		}
	}
	routes := []struct {
		ns       *NS
		dst, via string
	}{
		// Client: only the lab's prefixes, nothing else (no default route).
		{ns: l.Client, dst: "203.0.113.0/24", via: "198.51.100.1"},
		{ns: l.Client, dst: "2001:db8::/33", via: "2001:db8:c::1"},
		// Router: the AnyIP blocks live behind the server; 203.0.113.64/26 and
		// 2001:db8:bad::/48 are deliberately unrouted.
		{ns: l.Router, dst: AnyIPV4.String(), via: "203.0.113.2"},
		{ns: l.Router, dst: ErrorSourcesV4.String(), via: ClientV4.String()},
		{ns: l.Router, dst: AnyIPV6.String(), via: "2001:db8:5::2"},
		{ns: l.Server, dst: "198.51.100.0/24", via: "203.0.113.1"},
		{ns: l.Server, dst: "2001:db8::/32", via: "2001:db8:5::1"},
	}
	for _, r := range routes {
		if err := addRoute(r.ns, r.dst, r.via, netlinkRouteUnicast); err != nil {
			return err
		}
	}
	for _, p := range []netip.Prefix{AnyIPV4, AnyIPV6} {
		if err := addLocalRoute(l.Server, p); err != nil {
			return err
		}
	}
	return nil
}

const netlinkRouteUnicast = syscall.RTN_UNICAST

func veth(a *NS, aName string, b *NS, bName string) error {
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: aName}, PeerName: bName, PeerNamespace: netlink.NsFd(b.handle)}
	if err := a.nl.LinkAdd(v); err != nil {
		return fmt.Errorf("veth %s/%s: %w", aName, bName, err)
	}
	for _, e := range []struct {
		ns   *NS
		name string
	}{{a, aName}, {b, bName}} {
		link, err := e.ns.nl.LinkByName(e.name)
		if err != nil {
			return err
		}
		if err := e.ns.nl.LinkSetUp(link); err != nil {
			return fmt.Errorf("up %s: %w", e.name, err)
		}
	}
	return nil
}

func addAddr(ns *NS, dev, cidr string) error {
	link, err := ns.nl.LinkByName(dev)
	if err != nil {
		return err
	}
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		return err
	}
	a.Flags |= syscall.IFA_F_NODAD
	if err := ns.nl.AddrReplace(link, a); err != nil {
		return fmt.Errorf("addr %s on %s in %s: %w", cidr, dev, ns.Name, err)
	}
	return nil
}

func addRoute(ns *NS, dst, via string, typ int) error {
	p := netip.MustParsePrefix(dst)
	r := &netlink.Route{Dst: ipNet(p), Type: typ}
	if via != "" {
		r.Gw = net.IP(netip.MustParseAddr(via).AsSlice())
	}
	if err := ns.nl.RouteReplace(r); err != nil {
		return fmt.Errorf("route %s via %s in %s: %w", dst, via, ns.Name, err)
	}
	return nil
}

type netlinkRoute = netlink.Route

func addRouteType(ns *NS, p netip.Prefix, typ int) error {
	r := &netlink.Route{Dst: ipNet(p), Type: typ}
	if err := ns.nl.RouteReplace(r); err != nil {
		return fmt.Errorf("route type %d %s in %s: %w", typ, p, ns.Name, err)
	}
	return nil
}

func addLocalRoute(ns *NS, p netip.Prefix) error {
	lo, err := ns.nl.LinkByName("lo")
	if err != nil {
		return err
	}
	r := &netlink.Route{Dst: ipNet(p), Type: syscall.RTN_LOCAL, Table: syscall.RT_TABLE_LOCAL,
		LinkIndex: lo.Attrs().Index, Scope: netlink.SCOPE_HOST}
	if err := ns.nl.RouteReplace(r); err != nil {
		return fmt.Errorf("local route %s in %s: %w", p, ns.Name, err)
	}
	return nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// AddCloser registers cleanup to run at Close, before the namespaces go.
func (l *Lab) AddCloser(f func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closers = append(l.closers, f)
}

// Serve accepts TCP connections on addr in ns and closes them at once, until the lab closes.
func (l *Lab) Serve(ns *NS, addr string) (net.Listener, error) {
	ln, err := ns.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	done := loopback.AcceptAndClose(ln)
	l.AddCloser(func() { ln.Close(); <-done })
	return ln, nil
}

// Close tears the lab down; it is safe to call more than once.
func (l *Lab) Close() {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.closed = true
	closers := l.closers
	l.mu.Unlock()
	for i := len(closers) - 1; i >= 0; i-- {
		closers[i]()
	}
	for _, ns := range []*NS{l.Client, l.Router, l.Server} {
		if ns == nil {
			continue
		}
		if ns.nl != nil {
			ns.nl.Close()
		}
		ns.handle.Close()
		_ = netns.DeleteNamed(ns.Name)
	}
	liveMu.Lock()
	delete(live, l)
	liveMu.Unlock()
}

// CloseAll tears down every lab of this process (from a signal handler).
func CloseAll() {
	liveMu.Lock()
	labs := make([]*Lab, 0, len(live))
	for l := range live {
		labs = append(labs, l)
	}
	liveMu.Unlock()
	for _, l := range labs {
		l.Close()
	}
}

// Reap deletes lab namespaces left by processes that no longer run (a crashed or killed
// test). Namespaces of live processes, this one included, are left alone.
func Reap() []string {
	entries, err := os.ReadDir("/run/netns")
	if err != nil {
		return nil
	}
	var reaped []string
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, namePrefix) {
			continue
		}
		pidStr, _, _ := strings.Cut(strings.TrimPrefix(name, namePrefix), "-")
		pid, err := strconv.Atoi(pidStr)
		if err == nil && pid > 0 && syscall.Kill(pid, 0) != syscall.ESRCH {
			continue
		}
		if netns.DeleteNamed(name) == nil {
			reaped = append(reaped, name)
		}
	}
	return reaped
}

// ICMPCounters returns the namespace's non-zero ICMP and IP-error counters (nstat), to show
// in a failing test whether a router sent or rate-limited an error.
func (ns *NS) ICMPCounters() string {
	out, err := ns.Command("nstat", "-az").CombinedOutput()
	if err != nil {
		return fmt.Sprintf("nstat: %v", err)
	}
	var keep []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[1] != "0" && (strings.Contains(f[0], "Icmp") || strings.Contains(f[0], "NoRoutes") || strings.Contains(f[0], "RateLimit")) {
			keep = append(keep, line)
		}
	}
	return strings.Join(keep, "\n")
}
