package probe

import (
	"errors"
	"fmt"
	"net/netip"
	"reachd/pkg/target"
	"reachd/pkg/verdict"
	"reachd/pkg/wire"
	"time"

	"golang.org/x/sys/unix"
)

// registerFlow binds fd for a known 5-tuple and registers it with the TC programs (a
// flow without TC is still returned, for the tracepoints); nil when nothing can be
// observed. The note says why a full flow table kept the attempt from the wire.
func registerFlow(fd int, a Attempt, proto uint8) (*wire.Flow, string) {
	dst := a.Addr.Addr()
	remote := netip.AddrPortFrom(dst.WithZone(""), a.Addr.Port())
	var local netip.AddrPort
	if a.Wire.HasTC() {
		local = bindForWire(fd, a)
	}
	f, err := a.Wire.Register(proto, local, remote)
	if err != nil {
		a.log().Debug("attempt not watched: timed by the kernel", "dst", remote, "err", err)
		if errors.Is(err, wire.ErrFlowTableFull) {
			return nil, tableFullNote(err)
		}
		return nil, ""
	}
	if !local.IsValid() && a.Wire.HasTC() {
		a.log().Debug("attempt not watched at TC: no route, or its interface cannot be attached", "dst", remote)
	}
	return f, ""
}

// tableFullNote is what a verdict says when a full flow table kept it from the wire.
func tableFullNote(error) string {
	return fmt.Sprintf("not wire-timed: %v (timed by the kernel)", wire.ErrFlowTableFull)
}

// Prepare attaches the TC programs to the interfaces o's attempts at t will leave by, as
// the routes say now, so that a daemon is watching before its first probe (later route and
// link changes are followed by each attempt's own attach). Names are attached when first
// probed.
func Prepare(t target.Target, o *Options) {
	_, asked := o.Kind.(serverLister)
	if o.Wire == nil || !o.Wire.HasTC() || !t.IsLiteral() && !asked {
		return
	}
	for _, l := range legsOf(t, o) {
		a := Attempt{Addr: netip.AddrPortFrom(t.Addr, t.Port), Interface: l.iface, Mark: o.Mark, Source: o.Source}
		if l.server.IsValid() {
			a.Addr = l.server
		} else if a.Addr.Addr().Is6() && a.Addr.Addr().IsLinkLocalUnicast() && t.Addr.Zone() == "" && l.iface != "" {
			a.Addr = netip.AddrPortFrom(t.Addr.WithZone(l.iface), t.Port)
		}
		if rt, err := attemptRoute(a); err == nil && rt.LinkIndex > 0 {
			_ = o.Wire.Attach(rt.LinkIndex) // the observer says why not, once per interface
		}
	}
}

// bindForWire binds fd for a known 5-tuple and attaches TC on the way out; it returns the
// local address, or an invalid one when the packets cannot be watched.
func bindForWire(fd int, a Attempt) netip.AddrPort {
	rt, err := attemptRoute(a)
	if err != nil || rt.LinkIndex == 0 {
		a.log().Debug("no route to watch the attempt on", "dst", a.Addr, "err", err)
		return netip.AddrPort{}
	}
	if err := a.Wire.Attach(rt.LinkIndex); err != nil {
		return netip.AddrPort{} // the observer says why, once per interface
	}
	if !a.Source.IsValid() {
		src := rt.Src
		if !src.IsValid() {
			return netip.AddrPort{}
		}
		if src.Is6() && src.IsLinkLocalUnicast() {
			src = src.WithZone(fmt.Sprint(rt.LinkIndex))
		}
		sa, err := sockaddrOf(netip.AddrPortFrom(src, 0))
		if err != nil || unix.Bind(fd, sa) != nil {
			return netip.AddrPort{}
		}
	}
	sn, err := unix.Getsockname(fd)
	if err != nil {
		return netip.AddrPort{}
	}
	local := addrPortOf(sn)
	if local.Port() == 0 {
		return netip.AddrPort{}
	}
	return local
}

func earlier(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// monoAt converts wall-clock instant t to CLOCK_MONOTONIC ns through a pair of readings
// taken together (wall, mono); a zero t gives 0, "no anchor".
func monoAt(t, wall time.Time, mono int64) int64 {
	if t.IsZero() {
		return 0
	}
	return mono + int64(t.Sub(wall))
}

// nearer reports whether ts is nearer to anchor than best is; without an anchor (0) the
// earlier one wins.
func nearer(ts, best uint64, anchor int64) bool {
	if anchor == 0 {
		return false
	}
	d := func(x uint64) int64 {
		v := int64(x) - anchor
		if v < 0 {
			return -v
		}
		return v
	}
	return d(ts) < d(best)
}

// worstSource is the worst of the sources that timed a summary's packets: a summary is
// only as good as its worst part.
func worstSource(sources []string) string {
	worst := verdict.SourceWire
	for _, s := range sources {
		if sourceRank(s) < sourceRank(worst) {
			worst = s
		}
	}
	return worst
}

func sourceRank(s string) int {
	switch s {
	case verdict.SourceWire:
		return 2
	case verdict.SourceKernel:
		return 1
	}
	return 0
}
