// Package cli is reachd's command line (CONTRACT.md, "Command line").
package cli

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"regexp"
	"runtime"
	"runtime/debug"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"reachd/pkg/netctx"
	"reachd/pkg/probe"
	"reachd/pkg/schedule"
	"reachd/pkg/target"
	"reachd/pkg/verdict"
	"reachd/pkg/wire"
)

// Exit statuses (CONTRACT.md).
const (
	ExitOK       = 0
	ExitNotOK    = 1
	ExitUsage    = 2
	ExitSignaled = 130
)

// Version is set at build time with -ldflags "-X reachd/pkg/cli.Version=...".
var Version = ""

// usageError marks errors that exit 2: bad flags, targets, config or permissions.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// runtimeError marks failures after probing started (stdout closed, say): exit 1.
type runtimeError struct{ err error }

func (e runtimeError) Error() string { return e.err.Error() }

func usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

// Run executes reachd with args (without the program name) and returns the exit status.
// Nothing is written to stdout on a usage error.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	status := ExitOK
	root := newRoot(ctx, stdout, stderr, &status)
	root.SetArgs(args)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintf(stderr, "reachd: %s\n", oneLine(err))
		var rt runtimeError
		if errors.As(err, &rt) {
			return ExitNotOK
		}
		return ExitUsage // cobra's own errors (unknown flag or command) are usage errors too
	}
	return status
}

// openWire loads the eBPF observer and says in one line at start what is degraded, why and
// how to fix it; a verifier rejection is followed by the verifier's log.
func openWire(stderr io.Writer, opt wire.Options) *wire.Observer {
	tcMode := opt.TC
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	// A verifier error's message is its log's last line; the whole log follows the line.
	warn := func(msg string, err error) {
		log.Warn(msg, "reason", oneLine(err), "fix", wire.Fix(err))
		if vlog := wire.VerifierLog(err); vlog != "" {
			fmt.Fprintln(stderr, vlog)
		}
	}
	obs, err := wire.Open(log, opt)
	if err != nil {
		warn("eBPF unavailable: timing in userspace", err)
		return nil
	}
	if st := obs.Status(); st.TCErr != nil && tcMode != wire.TCOff {
		warn("eBPF TC programs unavailable: TCP handshakes timed by kernel tracepoints, not at the wire", st.TCErr)
	} else if st.TraceErr != nil {
		log.Info("TCP tracepoints unavailable: SYN retransmissions counted at TC only", "reason", oneLine(st.TraceErr))
	}
	return obs
}

// closeWire releases the observer and says if the ring buffer overflowed during the run:
// the verdicts whose events were lost fell back to kernel or userspace timing.
func closeWire(stderr io.Writer, obs *wire.Observer) {
	if n, err := obs.Lost(); err == nil && n > 0 {
		slog.New(slog.NewTextHandler(stderr, nil)).Warn("eBPF events lost to a full ring buffer: some verdicts are not wire-timed", "lost_events", n)
	}
	if n := obs.Dropped(); n > 0 {
		slog.New(slog.NewTextHandler(stderr, nil)).Warn("eBPF events dropped: a peer sent far more than a probe asked for; some verdicts are not wire-timed", "dropped_events", n)
	}
	obs.Close()
}

// warmTimeout bounds the wait for the kernel to turn receive timestamps on; it is
// milliseconds on an idle host, longer only when the machine is loaded.
const warmTimeout = 2 * time.Second

func oneLine(err error) string { return strings.ReplaceAll(err.Error(), "\n", "; ") }

func newRoot(ctx context.Context, stdout, stderr io.Writer, status *int) *cobra.Command {
	root := &cobra.Command{
		Use:           "reachd",
		Short:         "eBPF-assisted connectivity verification: says where and why a probe fails",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return usageError{fmt.Errorf("%w (see '%s --help')", err, c.CommandPath())}
	})
	root.CompletionOptions.DisableDefaultCmd = true
	root.AddCommand(newProbe(stdout, status), newVersion(stdout))
	return root
}

func newVersion(stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print reachd's version",
		Args:  noArgs,
		RunE: func(*cobra.Command, []string) error {
			fmt.Fprintf(stdout, "reachd %s (%s, %s/%s)\n", version(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
			return nil
		},
	}
}

func version() string {
	if Version != "" {
		return Version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				return "dev-" + s.Value[:12]
			}
		}
	}
	return "dev"
}

func noArgs(c *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usagef("%s takes no arguments, got %q", c.CommandPath(), args[0])
	}
	return nil
}

// probeFlags are the common flags of every kind.
type probeFlags struct {
	json        bool
	timeout     time.Duration
	retries     int
	v4, v6      bool
	family      string
	iface       string
	source      string
	concurrency int
	noEBPF      bool
	// icmp and udp
	count    int
	interval time.Duration
	// udp
	payloadHex, payload, expect, expectHex string
	payloadSet                             bool // --payload-hex given, maybe empty
	expectClosed                           bool
}

func newProbe(stdout io.Writer, status *int) *cobra.Command {
	var pf probeFlags
	cmd := &cobra.Command{
		Use:   "probe KIND TARGET... [flags]",
		Short: "Run one-shot probes and print a verdict per target",
		Long: "Probe targets concurrently and print one verdict each. Exit status: 0 every verdict ok,\n" +
			"1 at least one not ok, 2 usage or permission error.",
		Args: func(c *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usagef("missing probe kind (one of: %s); see 'reachd probe --help'", kindList)
			}
			return usagef("unknown probe kind %q (one of: %s)", args[0], kindList)
		},
		RunE: func(*cobra.Command, []string) error { return nil },
	}
	fl := cmd.PersistentFlags()
	fl.BoolVar(&pf.json, "json", false, "print one JSON verdict per line")
	fl.DurationVar(&pf.timeout, "timeout", 3*time.Second, "deadline of each attempt, resolution included")
	fl.IntVar(&pf.retries, "retries", 3, "retries after the first attempt, for retryable reasons only")
	fl.BoolVarP(&pf.v4, "ipv4", "4", false, "probe IPv4 addresses only")
	fl.BoolVarP(&pf.v6, "ipv6", "6", false, "probe IPv6 addresses only")
	fl.StringVar(&pf.family, "family", "any", "address family: any, ipv4, ipv6 or both")
	fl.StringVar(&pf.iface, "interface", "", "send through this interface (SO_BINDTODEVICE)")
	fl.StringVar(&pf.source, "source", "", "source address to bind")
	fl.IntVar(&pf.concurrency, "concurrency", schedule.DefaultConcurrency, "targets probed at once")
	fl.BoolVar(&pf.noEBPF, "no-ebpf", false, "do not load eBPF: time in userspace (timing_source userspace)")

	cmd.AddCommand(&cobra.Command{
		Use:   "tcp HOST:PORT... [flags]",
		Short: "TCP three-way handshake, then close",
		Example: "  reachd probe tcp 198.51.100.10:443 '[2001:db8::1]:22' '[fe80::1%eth0]:80'\n" +
			"  reachd probe tcp --json --timeout 2s --retries 1 example.net:443",
		RunE: func(c *cobra.Command, args []string) error {
			return runProbe(c.Context(), "tcp", args, &pf, stdout, c.ErrOrStderr(), status)
		},
	})
	icmp := &cobra.Command{
		Use:   "icmp HOST... [flags]",
		Short: "ICMP/ICMPv6 echo request and reply (raw socket, or ping socket without CAP_NET_RAW)",
		Example: "  reachd probe icmp 198.51.100.10 2001:db8::1 'fe80::1%eth0'\n" +
			"  reachd probe icmp --count 20 --interval 200ms --family both example.net",
		RunE: func(c *cobra.Command, args []string) error {
			return runProbe(c.Context(), "icmp", args, &pf, stdout, c.ErrOrStderr(), status)
		},
	}
	udp := &cobra.Command{
		Use:   "udp HOST:PORT... [flags]",
		Short: "UDP datagram: reply, ICMP error (port unreachable = closed) or silence (open_filtered)",
		Example: "  reachd probe udp --payload dns 198.51.100.53:53\n" +
			"  reachd probe udp --payload ntp '[2001:db8::123]:123'\n" +
			"  reachd probe udp --payload-hex 0d0a --expect '^OK' 198.51.100.7:7000\n" +
			"  reachd probe udp --expect-closed 198.51.100.10:161",
		RunE: func(c *cobra.Command, args []string) error {
			pf.payloadSet = c.Flags().Changed("payload-hex")
			return runProbe(c.Context(), "udp", args, &pf, stdout, c.ErrOrStderr(), status)
		},
	}
	for _, c := range []*cobra.Command{icmp, udp} {
		c.Flags().IntVar(&pf.count, "count", 1, "packets per attempt (loss and min/avg/max/stddev in stats)")
		c.Flags().DurationVar(&pf.interval, "interval", time.Second, "between the packets of an attempt")
	}
	uf := udp.Flags()
	uf.StringVar(&pf.payloadHex, "payload-hex", "", "datagram payload, in hex (\"\" for an empty datagram)")
	uf.StringVar(&pf.payload, "payload", "", "built-in request, whose answer must match it: "+strings.Join(probe.Payloads(), ", ")+
		"\n(default: the request of the protocol the port is known for, else the text \"reachd\\n\")")
	uf.StringVar(&pf.expect, "expect", "", "regular expression the reply must match")
	uf.StringVar(&pf.expectHex, "expect-hex", "", "bytes (hex) the reply must contain")
	uf.BoolVar(&pf.expectClosed, "expect-closed", false, "the port must be closed: ok on ICMP port unreachable")
	cmd.AddCommand(icmp, udp)
	return cmd
}

const kindList = "tcp, icmp, udp"

func runProbe(ctx context.Context, kind string, args []string, pf *probeFlags, stdout, stderr io.Writer, status *int) error {
	if len(args) == 0 {
		return usagef("no target given (want reachd probe %s HOST:PORT...)", kind)
	}
	opts, err := pf.options()
	if err != nil {
		return err
	}
	if err := pf.kindOptions(kind, opts); err != nil {
		return err
	}
	parse := target.ParseHostPort
	if kind == "icmp" {
		parse = target.ParseHost
	}
	targets := make([]target.Target, len(args))
	for i, a := range args {
		t, err := parse(a)
		if err != nil {
			return usageError{err}
		}
		if err := checkTargetAgainstOptions(t, opts); err != nil {
			return err
		}
		targets[i] = t
	}

	if kind == "icmp" {
		if err := checkICMPPermission(targets, opts); err != nil {
			return err
		}
	}
	if kind == "icmp" || kind == "udp" {
		release, err := probe.WarmTimestamps(ctx, warmTimeout)
		defer release()
		if err != nil {
			slog.New(slog.NewTextHandler(stderr, nil)).Warn("kernel timestamps", "reason", oneLine(err))
		}
	}
	defer netctx.Release()
	// Checked with --no-ebpf too: a typo must not wait for the day eBPF is turned on.
	tcMode := os.Getenv("REACHD_TC")
	if err := wire.CheckTCMode(tcMode); err != nil {
		return usagef("REACHD_TC: %v", err)
	}
	if !pf.noEBPF {
		if obs := openWire(stderr, wire.Options{TC: tcMode, NoTracepoints: kind != "tcp", MaxFlows: wire.FlowsFor(pf.concurrency)}); obs != nil {
			defer closeWire(stderr, obs)
			opts.Wire = obs
		}
	}

	width := 0
	for _, t := range targets {
		width = max(width, min(len(t.Raw), 40))
	}
	write := humanWriter(stdout, width)
	if pf.json {
		write = jsonWriter(stdout)
	}

	results := make([][]*verdict.Verdict, len(targets))
	done := make([]chan struct{}, len(targets))
	for i := range done {
		done[i] = make(chan struct{})
	}
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		schedule.ForEach(ctx, len(targets), pf.concurrency, func(i int) {
			results[i] = probe.Run(ctx, kind, targets[i], opts)
			close(done[i])
		})
	}()

	// Print in the order the targets were given, each as soon as it and those before it
	// are done, so scripts get a stable order without waiting for the slowest target.
	allOK := true
	for i := range targets {
		select {
		case <-done[i]:
		case <-finished:
			select {
			case <-done[i]:
			default:
				return interrupted(status)
			}
		}
		for _, v := range results[i] {
			if err := write(v); err != nil {
				return runtimeError{fmt.Errorf("write verdict: %w", err)}
			}
			allOK = allOK && v.OK
		}
	}
	<-finished
	if ctx.Err() != nil {
		return interrupted(status)
	}
	if !allOK {
		*status = ExitNotOK
	}
	return nil
}

func interrupted(status *int) error {
	*status = ExitSignaled
	return nil
}

func humanWriter(w io.Writer, width int) func(*verdict.Verdict) error {
	h := &verdict.HumanWriter{W: w, TargetWidth: width}
	return h.Write
}

func jsonWriter(w io.Writer) func(*verdict.Verdict) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	return func(v *verdict.Verdict) error { return enc.Encode(v) }
}

func (pf *probeFlags) options() (*probe.Options, error) {
	fam, err := probe.ParseFamily(pf.family)
	if err != nil {
		return nil, usageError{err}
	}
	switch {
	case pf.v4 && pf.v6:
		return nil, usagef("-4 and -6 exclude each other (use --family both for both)")
	case pf.v4 && fam != probe.FamilyAny && fam != probe.FamilyV4, pf.v6 && fam != probe.FamilyAny && fam != probe.FamilyV6:
		return nil, usagef("-4/-6 contradict --family %s", fam)
	case pf.v4:
		fam = probe.FamilyV4
	case pf.v6:
		fam = probe.FamilyV6
	}
	if pf.timeout <= 0 {
		return nil, usagef("--timeout must be positive, got %s", pf.timeout)
	}
	if pf.retries < 0 || pf.retries > 20 {
		return nil, usagef("--retries must be between 0 and 20, got %d", pf.retries)
	}
	if pf.concurrency < 1 {
		return nil, usagef("--concurrency must be at least 1, got %d", pf.concurrency)
	}
	o := &probe.Options{Probe: "cli", Family: fam, Timeout: pf.timeout, Interface: pf.iface}
	o.Policy = schedule.DefaultPolicy()
	o.Policy.Retries = pf.retries
	if pf.iface != "" {
		if _, err := net.InterfaceByName(pf.iface); err != nil {
			return nil, usagef("--interface %s: no such interface", pf.iface)
		}
	}
	if pf.source != "" {
		src, err := netip.ParseAddr(pf.source)
		if err != nil {
			return nil, usagef("--source %q is not an IP address", pf.source)
		}
		src = src.Unmap()
		sf := probe.FamilyV4
		if src.Is6() {
			sf = probe.FamilyV6
		}
		switch o.Family {
		case probe.FamilyAny:
			o.Family = sf // the source address decides the family of names
		case probe.FamilyBoth:
			return nil, usagef("--source %s has one family; it cannot be used with --family both", src)
		case sf:
		default:
			return nil, usagef("--source %s is %s but the family asked for is %s", src, sf, o.Family)
		}
		o.Source = src
	}
	return o, nil
}

func checkTargetAgainstOptions(t target.Target, o *probe.Options) error {
	if !t.IsLiteral() {
		return nil
	}
	tf := probe.FamilyV4
	if t.Addr.Is6() {
		tf = probe.FamilyV6
	}
	if o.Family != probe.FamilyAny && o.Family != probe.FamilyBoth && o.Family != tf {
		return usagef("target %q is %s but the family asked for is %s", t.Raw, tf, o.Family)
	}
	if t.Addr.Is6() && t.Addr.IsLinkLocalUnicast() && t.Addr.Zone() == "" && o.Interface == "" {
		example := "[fe80::1%eth0]:80"
		if t.Port == 0 {
			example = "fe80::1%eth0"
		}
		return usagef("target %q is link-local: give its zone (%s) or --interface", t.Raw, example)
	}
	if z := t.Addr.Zone(); z != "" {
		if _, err := net.InterfaceByName(z); err != nil && !isNumber(z) {
			return usagef("target %q: zone %s is not an interface on this host", t.Raw, z)
		}
	}
	return nil
}

func isNumber(s string) bool {
	return s != "" && strings.Trim(s, "0123456789") == ""
}

// kindOptions checks and applies the flags of one kind.
func (pf *probeFlags) kindOptions(kind string, o *probe.Options) error {
	if kind != "icmp" && kind != "udp" {
		return nil
	}
	if pf.count < 1 || pf.count > 10000 {
		return usagef("--count must be between 1 and 10000, got %d", pf.count)
	}
	if pf.count > 1 && pf.interval < time.Millisecond {
		return usagef("--interval must be at least 1ms, got %s", pf.interval)
	}
	o.Count, o.Interval = pf.count, pf.interval
	if kind != "udp" {
		return nil
	}
	u := &o.UDP
	if pf.payload != "" && !probe.IsPayload(pf.payload) {
		return usagef("--payload %q: want one of %s (or --payload-hex for your own bytes)", pf.payload, strings.Join(probe.Payloads(), ", "))
	}
	u.Builtin = pf.payload
	if pf.payload != "" && pf.payloadSet {
		return usagef("--payload and --payload-hex exclude each other")
	}
	u.PayloadSet = pf.payloadSet
	var err error
	if u.Payload, err = parseHex("--payload-hex", pf.payloadHex); err != nil {
		return err
	}
	if len(u.Payload) > 65507 {
		return usagef("--payload-hex is %d bytes; a UDP datagram carries at most 65507", len(u.Payload))
	}
	if u.ExpectHex, err = parseHex("--expect-hex", pf.expectHex); err != nil {
		return err
	}
	if pf.expect != "" {
		if u.Expect, err = regexp.Compile(pf.expect); err != nil {
			return usagef("--expect %q is not a regular expression: %v", pf.expect, err)
		}
	}
	u.ExpectClosed = pf.expectClosed
	if u.ExpectClosed && (u.Expect != nil || len(u.ExpectHex) > 0) {
		return usagef("--expect-closed wants no reply at all; it excludes --expect and --expect-hex")
	}
	return nil
}

// parseHex accepts hex digits, optionally after 0x and separated by spaces or colons
// (0d0a, 0x0d0a, 0d:0a).
func parseHex(flag, s string) ([]byte, error) {
	clean := strings.NewReplacer(" ", "", ":", "").Replace(strings.TrimPrefix(s, "0x"))
	b, err := hex.DecodeString(clean)
	if err != nil {
		return nil, usagef("%s %q is not hex: %v", flag, s, err)
	}
	return b, nil
}

// checkICMPPermission makes a missing capability a usage error (exit 2) before probing,
// with the fix in the message, rather than one failed verdict per target.
func checkICMPPermission(targets []target.Target, o *probe.Options) error {
	need := map[bool]bool{}
	for _, t := range targets {
		switch {
		case t.IsLiteral():
			need[t.Addr.Is6()] = true
		case o.Family == probe.FamilyV6:
			need[true] = true
		case o.Family == probe.FamilyBoth:
			need[false], need[true] = true, true
		default:
			need[false] = true
		}
	}
	for _, v6 := range []bool{false, true} {
		if need[v6] {
			if err := probe.CheckICMP(v6); err != nil {
				return usageError{err}
			}
		}
	}
	return nil
}
