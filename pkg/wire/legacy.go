package wire

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Legacy TC: on kernels without TCX (before 6.6) the programs go in as cls_bpf filters
// under a clsact qdisc. Unlike TCX links such filters outlive the process that added them,
// so each is named after its owner ("reachd:PID"): Close deletes its own, and the next start
// deletes those whose process is gone (a kill -9, an OOM kill, a power cut of the daemon).

const legacyPrefix = "reachd:"

func legacyName() string { return legacyPrefix + strconv.Itoa(os.Getpid()) }

var legacyParents = []struct {
	parent uint32
	name   string
}{{netlink.HANDLE_MIN_INGRESS, "ingress"}, {netlink.HANDLE_MIN_EGRESS, "egress"}}

// legacyAttach adds clsact (if missing) and the two filters on ifindex.
func legacyAttach(ifindex int, ingress, egress *ebpf.Program) error {
	qd := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	// An existing clsact (ours from before, or another tool's) is shared, never replaced.
	if err := netlink.QdiscAdd(qd); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add clsact qdisc on ifindex %d: %w", ifindex, err)
	}
	for i, prog := range []*ebpf.Program{ingress, egress} {
		f := &netlink.BpfFilter{
			FilterAttrs: netlink.FilterAttrs{
				LinkIndex: ifindex,
				Parent:    legacyParents[i].parent,
				Protocol:  unix.ETH_P_ALL,
			},
			Fd:           prog.FD(),
			Name:         legacyName(),
			DirectAction: true,
		}
		if err := netlink.FilterAdd(f); err != nil {
			legacyDetach(ifindex, legacyName())
			return fmt.Errorf("add cls_bpf %s filter on ifindex %d: %w", legacyParents[i].name, ifindex, err)
		}
	}
	return nil
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

// stale says whether a filter name is reachd's and its owner process is gone.
func stale(name string) bool {
	rest, ok := strings.CutPrefix(name, legacyPrefix)
	if !ok {
		return false
	}
	pid, err := strconv.Atoi(rest)
	if err != nil || pid <= 0 || pid == os.Getpid() {
		return false
	}
	return errors.Is(unix.Kill(pid, 0), unix.ESRCH)
}
