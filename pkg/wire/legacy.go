package wire

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Legacy TC: on kernels without TCX (before 6.6) the programs go in as cls_bpf filters
// under a clsact qdisc. Unlike TCX links such filters outlive the process that added them,
// so each is named after its owner: Close deletes its own, and the next start deletes those
// whose owner is provably gone (a kill -9, an OOM kill, a power cut of the daemon).
//
// A PID alone proves nothing: a reachd in another PID namespace (a container sharing the
// network namespace) has PIDs that mean other processes here, or none. So the name is
// "reachd:NS:PID:START" — the owner's PID namespace (its inode), its PID there and its start
// time (clock ticks since boot) — and a filter is stale only when NS is ours and PID is no
// longer a process, or is one that started at another time (a reused PID). Filters of
// other namespaces, and of older reachd versions ("reachd:PID"), are left alone.

const legacyPrefix = "reachd:"

// owner is who put a legacy filter in place.
type owner struct {
	pidNS uint64
	pid   int
	start uint64
}

func (o owner) name() string { return fmt.Sprintf("%s%d:%d:%d", legacyPrefix, o.pidNS, o.pid, o.start) }

// self is this process as a filter's owner; its zero value if /proc cannot say.
var self = sync.OnceValue(func() owner {
	pid := os.Getpid()
	ns, _ := pidNamespace()
	start, _ := startTime(pid)
	return owner{pidNS: ns, pid: pid, start: start}
})

func legacyName() string { return self().name() }

// pidNamespace is the inode of this process's PID namespace.
func pidNamespace() (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/pid", &st); err != nil {
		return 0, fmt.Errorf("stat /proc/self/ns/pid: %w", err)
	}
	return st.Ino, nil
}

// startTime is field 22 of /proc/PID/stat: when the process started, in clock ticks after
// boot. The command name (field 2) may hold spaces and parentheses: fields are counted
// after its last ')'.
func startTime(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f)+2)
	}
	return strconv.ParseUint(f[19], 10, 64)
}

var legacyParents = []struct {
	parent uint32
	name   string
}{{netlink.HANDLE_MIN_INGRESS, "ingress"}, {netlink.HANDLE_MIN_EGRESS, "egress"}}

func clsact(ifindex int) *netlink.GenericQdisc {
	return &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
}

// legacyAttach adds clsact (if missing) and the two filters on ifindex, and returns what
// removes them again: the filters, and the clsact too if this call added it and no other
// filter is under it by then.
func legacyAttach(ifindex int, ingress, egress *ebpf.Program) (detach func() error, err error) {
	// An existing clsact (another tool's, or another reachd's) is shared, never replaced.
	added := true
	if err := netlink.QdiscAdd(clsact(ifindex)); errors.Is(err, unix.EEXIST) {
		added = false
	} else if err != nil {
		return nil, fmt.Errorf("add clsact qdisc on ifindex %d: %w", ifindex, err)
	}
	name := legacyName()
	detach = func() error {
		err := legacyDetach(ifindex, name)
		if added && err == nil && legacyEmpty(ifindex) {
			if derr := netlink.QdiscDel(clsact(ifindex)); derr != nil && !errors.Is(derr, unix.ENOENT) && !errors.Is(derr, unix.EINVAL) {
				return fmt.Errorf("delete clsact qdisc on ifindex %d: %w", ifindex, derr)
			}
		}
		return err
	}
	for i, prog := range []*ebpf.Program{ingress, egress} {
		f := &netlink.BpfFilter{
			FilterAttrs: netlink.FilterAttrs{
				LinkIndex: ifindex,
				Parent:    legacyParents[i].parent,
				Protocol:  unix.ETH_P_ALL,
			},
			Fd:           prog.FD(),
			Name:         name,
			DirectAction: true,
		}
		if err := netlink.FilterAdd(f); err != nil {
			_ = detach()
			return nil, fmt.Errorf("add cls_bpf %s filter on ifindex %d: %w", legacyParents[i].name, ifindex, err)
		}
	}
	return detach, nil
}

// legacyEmpty says whether no filter at all is left under ifindex's clsact.
func legacyEmpty(ifindex int) bool {
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return false
	}
	for _, p := range legacyParents {
		if fs, err := netlink.FilterList(l, p.parent); err != nil || len(fs) > 0 {
			return false
		}
	}
	return true
}

// legacyDetach deletes the filters named name on ifindex. A link that is gone took its
// filters with it.
func legacyDetach(ifindex int, name string) error {
	return legacyDelete(ifindex, func(n string) bool { return n == name })
}

func legacyDelete(ifindex int, match func(name string) bool) error {
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return nil
	}
	var errs []error
	for _, p := range legacyParents {
		fs, err := netlink.FilterList(l, p.parent)
		if err != nil {
			continue // no clsact: nothing of ours
		}
		for _, f := range fs {
			bf, ok := f.(*netlink.BpfFilter)
			if !ok || !match(bf.Name) {
				continue
			}
			if err := netlink.FilterDel(bf); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("delete %s filter %q on %s: %w", p.name, bf.Name, l.Attrs().Name, err))
			}
		}
	}
	return errors.Join(errs...)
}

// ReapStale deletes legacy filters left by reachd processes that no longer exist, on every
// interface of the current network namespace, and returns how many it found.
func ReapStale() (int, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return 0, fmt.Errorf("list links: %w", err)
	}
	n := 0
	var errs []error
	for _, l := range links {
		err := legacyDelete(l.Attrs().Index, func(name string) bool {
			if !stale(name) {
				return false
			}
			n++
			return true
		})
		if err != nil {
			errs = append(errs, err)
		}
	}
	return n, errors.Join(errs...)
}

// stale says whether a filter name is reachd's and its owner is provably gone.
func stale(name string) bool {
	rest, ok := strings.CutPrefix(name, legacyPrefix)
	if !ok {
		return false
	}
	var o owner
	if n, err := fmt.Sscanf(rest, "%d:%d:%d", &o.pidNS, &o.pid, &o.start); n != 3 || err != nil {
		return false // an older reachd's name, or not ours: nothing proves it gone
	}
	me := self()
	if me.pidNS == 0 || o.pidNS != me.pidNS || o.pid <= 0 || o.pid == me.pid {
		return false
	}
	if errors.Is(unix.Kill(o.pid, 0), unix.ESRCH) {
		return true
	}
	start, err := startTime(o.pid)
	return err == nil && start != o.start // the PID now names another process
}
