// Package cli is reachd's command line: flags become jobs for the engine, and verdicts are
// printed (human lines or JSON) in the order the targets were given.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/spf13/cobra"

	"reachd/pkg/config"
	"reachd/pkg/engine"
	"reachd/pkg/probe"
	"reachd/pkg/schedule"
	"reachd/pkg/verdict"
)

// Exit statuses: every verdict ok, at least one not, usage error, interrupted.
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
		var cerrs config.Errors
		if errors.As(err, &cerrs) { // FILE:LINE:COL: message, one a line, as compilers do
			fmt.Fprintln(stderr, cerrs.Error())
			return ExitUsage
		}
		fmt.Fprintf(stderr, "reachd: %s\n", oneLine(err))
		var rt runtimeError
		if errors.As(err, &rt) {
			return ExitNotOK
		}
		return ExitUsage // cobra's own errors (unknown flag or command) are usage errors too
	}
	return status
}

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
	root.AddCommand(newProbe(stdout, status), newRun(stdout), newConfig(stdout), newVersion(stdout))
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

// probeFlags are the flags of every kind: those a config file has too (probe.Flags), and
// the command line's own.
type probeFlags struct {
	probe.Flags
	json        bool
	v4, v6      bool
	concurrency int
	noEBPF      bool
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
				return usagef("missing probe kind (one of: %s); see 'reachd probe --help'", kindList())
			}
			return usagef("unknown probe kind %q (one of: %s)", args[0], kindList())
		},
		RunE: func(*cobra.Command, []string) error { return nil },
	}
	fl := cmd.PersistentFlags()
	fl.BoolVar(&pf.json, "json", false, "print one JSON verdict per line")
	pf.Flags.AddFlags(fl)
	fl.BoolVarP(&pf.v4, "ipv4", "4", false, "probe IPv4 addresses only")
	fl.BoolVarP(&pf.v6, "ipv6", "6", false, "probe IPv6 addresses only")
	fl.IntVar(&pf.concurrency, "concurrency", schedule.DefaultConcurrency, "targets probed at once")
	fl.BoolVar(&pf.noEBPF, "no-ebpf", false, "do not load eBPF: time in userspace (timing_source userspace)")

	for _, k := range probe.Kinds() {
		cmd.AddCommand(newKind(k, &pf, stdout, status))
	}
	return cmd
}

// newKind is the command of one kind: the common flags, and the kind's own.
func newKind(k *probe.Kind, pf *probeFlags, stdout io.Writer, status *int) *cobra.Command {
	use := k.Name + " " + k.TargetForm() + "... [flags]"
	var kopts probe.KindOptions
	if k.NewOptions != nil {
		kopts = k.NewOptions()
	}
	c := &cobra.Command{
		Use:     use,
		Short:   k.Summary,
		Example: k.Example,
		RunE: func(c *cobra.Command, args []string) error {
			job, err := pf.job(k, kopts, c.Flags().Changed, args)
			if err != nil {
				return err
			}
			return runProbe(c.Context(), job, pf, stdout, c.ErrOrStderr(), status)
		},
	}
	if kopts != nil {
		kopts.AddFlags(c.Flags())
	}
	return c
}

func kindList() string {
	var names []string
	for _, k := range probe.Kinds() {
		names = append(names, k.Name)
	}
	return strings.Join(names, ", ")
}

// job turns the flags and arguments into a job, checked: every error is a usage error.
func (pf *probeFlags) job(k *probe.Kind, kopts probe.KindOptions, set func(string) bool, args []string) (engine.Job, error) {
	j := engine.Job{Kind: k}
	if len(args) == 0 {
		return j, usagef("no target given (want reachd probe %s %s...)", k.Name, k.TargetForm())
	}
	opts, err := pf.options()
	if err != nil {
		return j, err
	}
	if kopts != nil {
		if err := kopts.Check(set); err != nil {
			return j, usageError{err}
		}
	}
	opts.Kind = kopts
	j.Options = opts
	if err := probe.CheckServerZones(opts); err != nil {
		return j, usageError{err}
	}
	for _, a := range args {
		t, err := k.ParseTarget(a)
		if err != nil {
			return j, usageError{err}
		}
		// Each target is checked as it comes, so the first bad one is the one named.
		if err := probe.CheckTarget(t, opts); err != nil {
			return j, usageError{err}
		}
		if err := probe.CheckZone(t); err != nil {
			return j, usageError{err}
		}
		j.Targets = append(j.Targets, t)
	}
	if err := engine.Check(j); err != nil {
		return j, usageError{err}
	}
	return j, nil
}

func runProbe(ctx context.Context, j engine.Job, pf *probeFlags, stdout, stderr io.Writer, status *int) error {
	eng, err := engine.Open(ctx, engine.Config{
		Kinds:       []*probe.Kind{j.Kind},
		NoEBPF:      pf.noEBPF,
		TC:          os.Getenv("REACHD_TC"),
		Concurrency: pf.concurrency,
		OneShot:     true,
		Log:         slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Diag:        stderr,
	})
	if err != nil {
		return usageError{err}
	}
	defer eng.Close()

	width, servers := 0, 0
	for _, s := range probe.Servers(j.Options) { // a dns verdict's target names its server
		servers = max(servers, len(" @ ")+len(s.String()))
	}
	for _, t := range j.Targets {
		width = max(width, min(len(t.Raw), 40)+min(servers, 30))
	}
	write := humanWriter(stdout, width)
	if pf.json {
		write = jsonWriter(stdout)
	}
	results := make([][]*verdict.Verdict, len(j.Targets))
	done := make([]chan struct{}, len(j.Targets))
	for i := range done {
		done[i] = make(chan struct{})
	}
	// A failed write (stdout closed: `| head -1`) ends the run: the probes still going are
	// cancelled rather than waited for.
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		eng.Run(rctx, j, func(i int, vs []*verdict.Verdict) { results[i] = vs; close(done[i]) })
	}()
	return printInOrder(ctx, results, done, finished, write, cancel, status)
}

// printInOrder prints in the order the targets were given, each as soon as it and those
// before it are done, so scripts get a stable order without waiting for the slowest target.
func printInOrder(ctx context.Context, results [][]*verdict.Verdict, done []chan struct{}, finished chan struct{},
	write func(*verdict.Verdict) error, cancel func(), status *int) error {
	allOK := true
	for i := range results {
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
				cancel()
				<-finished
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
	fam, ferr := probe.ParseFamily(pf.Family)
	switch {
	case ferr != nil: // worded by Options
	case pf.v4 && pf.v6:
		return nil, usagef("-4 and -6 exclude each other (use --family both for both)")
	case pf.v4 && fam != probe.FamilyAny && fam != probe.FamilyV4, pf.v6 && fam != probe.FamilyAny && fam != probe.FamilyV6:
		return nil, usagef("-4/-6 contradict --family %s", fam)
	case pf.v4:
		pf.Family = string(probe.FamilyV4)
	case pf.v6:
		pf.Family = string(probe.FamilyV6)
	}
	o, err := pf.Flags.Options("cli")
	if err != nil {
		return nil, usageError{err}
	}
	if pf.concurrency < 1 {
		return nil, usagef("--concurrency must be at least 1, got %d", pf.concurrency)
	}
	if err := o.CheckHost(); err != nil { // --interface exists here
		return nil, usageError{err}
	}
	return o, nil
}
