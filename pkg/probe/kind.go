package probe

import (
	"cmp"
	"context"
	"slices"
	"strings"

	"github.com/spf13/pflag"
)

// Kind is one probe kind: what its targets look like, what it needs from the host, its own
// options and how it runs an attempt. Each kind declares itself in its own file and
// registers there; nothing outside a kind's file tests its name, so the engine and its
// front-ends (the CLI, the daemon) treat every kind alike.
type Kind struct {
	Name    string
	Order   int    // where it is listed among the kinds (help, usage messages)
	Summary string // one line: what an attempt does
	Example string // command-line examples, indented
	// HostOnly: targets are hosts, without a port (echo); URL: http(s) URLs; else HOST:PORT.
	HostOnly bool
	URL      bool
	// NameTarget: targets are names asked of servers (dns), not hosts probed: "." or a
	// name, or an address (whose reverse name is asked).
	NameTarget bool
	Needs      Needs
	// NewOptions returns the kind's own options at their defaults (nil: it has none).
	NewOptions func() KindOptions
	run        func(ctx context.Context, a Attempt) Result
}

// Needs is what a kind needs from the host, so that an engine opens only what a run uses.
type Needs struct {
	// EchoSocket: raw or ICMP datagram sockets, which need a privilege; checked before
	// probing so that its absence is a usage error with the fix, not a verdict a target.
	EchoSocket bool
	// Tracepoints: the TCP tracepoints (a handshake timed in the kernel when TC cannot).
	Tracepoints bool
	// Timestamps: the kernel's receive timestamps, on before the first packet.
	Timestamps bool
}

// KindOptions are one kind's own options. A front-end binds them to its flags (or a config
// file sets them) and checks them before probing; errors are plain, naming the flag, for the
// front-end to turn into its usage error (the CLI's exit 2, a config's file:line).
type KindOptions interface {
	AddFlags(fs *pflag.FlagSet)
	// Check validates the options; set says whether a flag was given (an empty value may
	// mean something other than its absence).
	Check(set func(flag string) bool) error
}

// packetOptions are options of kinds that send several packets an attempt.
type packetOptions interface {
	packets() Packets
}

var registry = map[string]*Kind{}

func register(k *Kind) *Kind {
	registry[k.Name] = k
	return k
}

// Kinds returns every kind, in their listing order.
func Kinds() []*Kind {
	out := make([]*Kind, 0, len(registry))
	for _, k := range registry {
		out = append(out, k)
	}
	slices.SortFunc(out, func(a, b *Kind) int { return cmp.Or(a.Order-b.Order, strings.Compare(a.Name, b.Name)) })
	return out
}

// Lookup returns the kind named name.
func Lookup(name string) (*Kind, bool) {
	k, ok := registry[name]
	return k, ok
}

// TargetForm says how the kind's targets are written, for usage lines and messages.
func (k *Kind) TargetForm() string {
	switch {
	case k.HostOnly:
		return "HOST"
	case k.URL:
		return "URL"
	case k.NameTarget:
		return "NAME"
	}
	return "HOST:PORT"
}

// options returns o, or the kind's defaults when o is nil.
func (k *Kind) options(o KindOptions) KindOptions {
	if o == nil && k.NewOptions != nil {
		return k.NewOptions()
	}
	return o
}
