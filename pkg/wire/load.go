package wire

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// LoadObjects loads the maps and the TC programs into the kernel, through the verifier. A
// verifier rejection stays in the error's chain (see VerifierLog).
func LoadObjects() (*Objects, error) {
	var objs Objects
	if err := loadTcWireObjects(&objs, nil); err != nil {
		return nil, fmt.Errorf("load TC programs: %w", err)
	}
	return &objs, nil
}

// VerifierLog returns the verifier's full log when err is a verifier rejection, else "".
func VerifierLog(err error) string {
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		return fmt.Sprintf("%+v", ve)
	}
	return ""
}

// maps are shared by the TC and the tracepoint programs, and the TC programs' globals
// (.bss: the payload gate), shared by the pairs for L2 and L3 devices.
type maps struct {
	tcWireMaps
	bss     *ebpf.Map
	gate    *ebpf.Memory // bss, mapped: a gate slot is written as one byte
	gateOff int64        // where payload_gate starts in it
	anyOff  int64        // where payload_any is
}

// loadMaps creates the maps from the TC object's spec (the tracepoint object declares the
// same ones and is given these instead).
func loadMaps(spec *ebpf.CollectionSpec) (*maps, error) {
	var m maps
	if err := spec.LoadAndAssign(&m.tcWireMaps, nil); err != nil {
		return nil, fmt.Errorf("load eBPF maps: %w", err)
	}
	bss, ok := spec.Maps[".bss"]
	v, okv := spec.Variables["payload_gate"]
	va, oka := spec.Variables["payload_any"]
	if !ok || !okv || !oka {
		m.Close()
		return nil, errors.New("the TC object has no payload gate")
	}
	m.gateOff, m.anyOff = int64(v.Offset), int64(va.Offset)
	mapped := bss.Copy()
	mapped.Flags |= unix.BPF_F_MMAPABLE
	var err error
	if m.bss, err = ebpf.NewMap(mapped); err == nil {
		if m.gate, err = m.bss.Memory(); err != nil {
			m.bss.Close()
		}
	}
	if err != nil {
		// Kernels before 5.5 cannot map a map's memory: the gate stays shut, and
		// application probes' payload is timed in userspace.
		if m.bss, err = ebpf.NewMap(bss); err != nil {
			m.Close()
			return nil, fmt.Errorf("load the TC programs' globals: %w", err)
		}
		m.gate = nil
	}
	return &m, nil
}

func (m *maps) Close() {
	m.tcWireMaps.Close()
	if m.bss != nil {
		m.bss.Close()
	}
}

// setGate writes one slot of the payload gate, or with slot -1 the flag that any is open.
// Single bytes: the programs never see a value half written.
func (m *maps) setGate(slot int, open bool) error {
	if m.gate == nil {
		return errors.New("this kernel cannot map eBPF globals (5.5 and later can)")
	}
	b := []byte{0}
	if open {
		b[0] = 1
	}
	off := m.anyOff
	if slot >= 0 {
		off = m.gateOff + int64(slot)
	}
	_, err := m.gate.WriteAt(b, off)
	return err
}

func (m *maps) replacements() map[string]*ebpf.Map {
	return map[string]*ebpf.Map{"events": m.Events, "flows": m.Flows, "lost_events": m.LostEvents, "socks": m.Socks,
		"payload_flows": m.PayloadFlows}
}

// tcPair is the ingress and egress programs for one kind of device.
type tcPair struct {
	Ingress, Egress *ebpf.Program
}

func (p *tcPair) Close() {
	if p != nil {
		p.Ingress.Close()
		p.Egress.Close()
	}
}

// loadTC loads the TC programs for devices with an Ethernet header, or with l3 for those
// without, against the shared maps. Only the pair asked for is loaded (and verified): a
// run that never meets an L3 device does not pay for its programs.
func loadTC(spec *ebpf.CollectionSpec, m *maps, l3 bool) (*tcPair, error) {
	in, eg, what := "reachd_tc_ingress", "reachd_tc_egress", "load TC programs"
	if l3 {
		in, eg, what = in+"_l3", eg+"_l3", "load TC programs for L3 devices"
	}
	// Only the two named programs are loaded and verified (a collection of just them).
	sub := spec.Copy()
	sub.Programs = map[string]*ebpf.ProgramSpec{in: spec.Programs[in], eg: spec.Programs[eg]}
	repl := m.replacements()
	repl[".bss"] = m.bss
	coll, err := ebpf.NewCollectionWithOptions(sub, ebpf.CollectionOptions{MapReplacements: repl})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	p := &tcPair{coll.DetachProgram(in), coll.DetachProgram(eg)}
	coll.Close()
	return p, nil
}

// linkLayer says whether packets on ifindex start with an Ethernet header (l3 false) or with
// the IP header (l3 true), from the device's hardware type; other link layers (InfiniBand,
// ...) cannot be parsed.
func linkLayer(ifindex int) (l3 bool, err error) {
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return false, fmt.Errorf("link %d: %w", ifindex, err)
	}
	switch t := l.Attrs().EncapType; t {
	case "ether", "loopback":
		return false, nil
	// netlink names no ARPHRD_IP6GRE (823) or ARPHRD_RAWIP (519, wwan modems): "unknownN".
	case "none", "ipip", "tunnel6", "sit", "gre", "ppp", "unknown823", "unknown519":
		return true, nil
	default:
		return false, fmt.Errorf("%s: link type %q has neither an Ethernet header nor none", l.Attrs().Name, t)
	}
}

// tracer is the loaded and attached tp_btf programs.
type tracer struct {
	progs sockTracePrograms
	links []link.Link
}

// loadTracer loads the TCP tracepoint programs against the shared maps and attaches them.
// tp_btf needs the kernel's BTF (/sys/kernel/btf/vmlinux), which the loader reads.
func loadTracer(m *maps) (*tracer, error) {
	spec, err := loadSockTrace()
	if err != nil {
		return nil, fmt.Errorf("read embedded eBPF objects: %w", err)
	}
	t := &tracer{}
	// The shared maps replace this object's own, which must then declare their size.
	for name, mp := range m.replacements() {
		if ms, ok := spec.Maps[name]; ok {
			ms.MaxEntries = mp.MaxEntries()
		}
	}
	if err := spec.LoadAndAssign(&t.progs, &ebpf.CollectionOptions{MapReplacements: m.replacements()}); err != nil {
		return nil, fmt.Errorf("load TCP tracepoint programs: %w", err)
	}
	for _, p := range []*ebpf.Program{t.progs.ReachdSockState, t.progs.ReachdTcpRetransmit, t.progs.ReachdTcpReset} {
		l, err := link.AttachTracing(link.TracingOptions{Program: p})
		if err != nil {
			t.close()
			return nil, fmt.Errorf("attach TCP tracepoint program %s: %w", p, err)
		}
		t.links = append(t.links, l)
	}
	return t, nil
}

func (t *tracer) close() {
	for _, l := range t.links {
		l.Close()
	}
	t.progs.Close()
}
