package wire

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
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

// maps are shared by the TC and the tracepoint programs.
type maps = tcWireMaps

// loadMaps creates the maps from the TC object's spec (the tracepoint object declares the
// same ones and is given these instead).
func loadMaps(spec *ebpf.CollectionSpec) (*maps, error) {
	var m maps
	if err := spec.LoadAndAssign(&m, nil); err != nil {
		return nil, fmt.Errorf("load eBPF maps: %w", err)
	}
	return &m, nil
}

func (m *maps) replacements() map[string]*ebpf.Map {
	return map[string]*ebpf.Map{"events": m.Events, "flows": m.Flows, "lost_events": m.LostEvents, "socks": m.Socks}
}

// loadTC loads the TC programs against the shared maps.
func loadTC(spec *ebpf.CollectionSpec, m *maps) (*tcWirePrograms, error) {
	var p tcWirePrograms
	if err := spec.LoadAndAssign(&p, &ebpf.CollectionOptions{MapReplacements: m.replacements()}); err != nil {
		return nil, fmt.Errorf("load TC programs: %w", err)
	}
	return &p, nil
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
