package daemon

import (
	"errors"
	"fmt"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// runtimeCaps are the capabilities the daemon keeps once it runs (README, "Privileges"):
// CAP_NET_RAW opens raw echo sockets as a reload adds probes, CAP_NET_ADMIN attaches the
// loaded TC programs to links that appear and sets SO_MARK, CAP_BPF keeps the flow map
// usable on kernels whose every bpf() call needs it while unprivileged BPF is disabled.
// Everything else served the start only (CAP_PERFMON: loading the programs, the layer-3
// links' pair included) and is dropped.
var runtimeCaps = []uint{unix.CAP_NET_RAW, unix.CAP_NET_ADMIN, unix.CAP_BPF}

// dropCapabilities lowers every thread's effective, permitted and inheritable sets (and so
// the ambient one) to what the daemon keeps. It returns the names of what was dropped.
func dropCapabilities() ([]string, error) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return nil, fmt.Errorf("capget: %w", err)
	}
	var keep [2]uint32
	for _, c := range runtimeCaps {
		keep[c/32] |= 1 << (c % 32)
	}
	var dropped []string
	for i := range data {
		for bit := uint(0); bit < 32; bit++ {
			if data[i].Permitted&(1<<bit) != 0 && keep[i]&(1<<bit) == 0 {
				dropped = append(dropped, capName(uint(i)*32+bit))
			}
		}
		data[i].Effective &= keep[i]
		data[i].Permitted &= keep[i]
		data[i].Inheritable = 0
	}
	if len(dropped) == 0 {
		return nil, nil
	}
	// Capabilities are per thread: every thread of the runtime drops them (which needs a
	// binary built without cgo, as `make build` does).
	if _, _, errno := syscall.AllThreadsSyscall(unix.SYS_CAPSET, uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&data[0])), 0); errno != 0 {
		if errors.Is(errno, syscall.ENOTSUP) {
			return nil, errors.New("this binary was built with cgo: capabilities are per thread and cannot all be dropped (build with CGO_ENABLED=0, as make build does)")
		}
		return nil, fmt.Errorf("capset: %w", errno)
	}
	return dropped, nil
}

var capNames = map[uint]string{
	unix.CAP_CHOWN: "chown", unix.CAP_DAC_OVERRIDE: "dac_override", unix.CAP_DAC_READ_SEARCH: "dac_read_search",
	unix.CAP_FOWNER: "fowner", unix.CAP_FSETID: "fsetid", unix.CAP_KILL: "kill", unix.CAP_SETGID: "setgid",
	unix.CAP_SETUID: "setuid", unix.CAP_SETPCAP: "setpcap", unix.CAP_NET_BIND_SERVICE: "net_bind_service",
	unix.CAP_NET_ADMIN: "net_admin", unix.CAP_NET_RAW: "net_raw", unix.CAP_SYS_ADMIN: "sys_admin",
	unix.CAP_SYS_PTRACE: "sys_ptrace", unix.CAP_SYS_RESOURCE: "sys_resource", unix.CAP_BPF: "bpf",
	unix.CAP_PERFMON: "perfmon", unix.CAP_SYS_MODULE: "sys_module", unix.CAP_SYS_RAWIO: "sys_rawio",
}

func capName(c uint) string {
	if n, ok := capNames[c]; ok {
		return "cap_" + n
	}
	return fmt.Sprintf("cap_%d", c)
}
