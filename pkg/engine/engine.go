// Package engine is what every front-end of reachd stands on (the one-shot CLI, the
// daemon): it owns the eBPF observer and says once what is degraded and why, keeps the
// kernel's receive timestamps on, the netlink handles and the echo sockets the kinds share,
// checks jobs before they run, and runs them concurrently. A front-end opens an engine
// once, runs jobs and closes it; it holds no probing logic of its own.
package engine

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"reachd/pkg/netctx"
	"reachd/pkg/probe"
	"reachd/pkg/schedule"
	"reachd/pkg/target"
	"reachd/pkg/verdict"
	"reachd/pkg/wire"
)

// Config says what an engine is for.
type Config struct {
	// Kinds are the kinds the engine will run: it loads and warms up only what they need.
	Kinds []*probe.Kind
	// NoEBPF: time in the kernel or userspace, load nothing.
	NoEBPF bool
	// TC is the TC attachment mode (wire.TCAuto, TCX, TCLegacy, TCOff); checked even with
	// NoEBPF, so that a typo does not wait for the day eBPF is turned on.
	TC string
	// Concurrency is how many targets run at once (the flow tables are sized from it).
	Concurrency int
	// OneShot: a run of seconds (the CLI), which loads only what its attempts turn out to
	// need (wire.Options.OneShot).
	OneShot bool
	// Log gets what the operator must know once: degradations, lost events.
	Log *slog.Logger
	// Diag gets multi-line diagnostics too long for a log line (a verifier's log); nil:
	// none.
	Diag io.Writer
}

// Engine runs jobs. Open one per run (the CLI) or per process (the daemon).
type Engine struct {
	cfg     Config
	obs     *wire.Observer
	release func() // the timestamp warm-up's socket
	// unfollow stops following route changes (a long-running engine caches routes).
	unfollow func()
}

// echoLinger is how long a long-running engine keeps an echo socket with no echo in
// flight: longer than the intervals probes usually run at, so that each is opened once.
const echoLinger = 5 * time.Minute

// warmTimeout bounds the wait for the kernel to turn receive timestamps on; it is
// milliseconds on an idle host, longer only when the machine is loaded.
const warmTimeout = 2 * time.Second

// Open checks the configuration and opens what the kinds need. Its errors are the
// configuration's (exit 2, or file:line in a config): eBPF that does not load is a
// degradation, logged, not an error.
func Open(ctx context.Context, cfg Config) (*Engine, error) {
	if err := wire.CheckTCMode(cfg.TC); err != nil {
		return nil, fmt.Errorf("REACHD_TC: %w", err)
	}
	if cfg.Concurrency < 1 {
		return nil, fmt.Errorf("--concurrency must be at least 1, got %d", cfg.Concurrency)
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	e := &Engine{cfg: cfg, release: func() {}, unfollow: func() {}}
	netctx.Baseline() // failure snapshots count conntrack's drops from now
	if !cfg.OneShot {
		// Asked again every interval, routes are cached until the kernel reports a change;
		// echo sockets stay open between probes.
		if stop, err := netctx.FollowRoutes(); err != nil {
			cfg.Log.Warn("route changes cannot be followed: every attempt asks the kernel for its route", "err", err)
		} else {
			e.unfollow = stop
		}
		probe.KeepEchoSockets(echoLinger)
	}
	var needs probe.Needs
	for _, k := range cfg.Kinds {
		needs.Timestamps = needs.Timestamps || k.Needs.Timestamps
		needs.Tracepoints = needs.Tracepoints || k.Needs.Tracepoints
	}
	if needs.Timestamps {
		release, err := probe.WarmTimestamps(ctx, warmTimeout)
		e.release = release
		if err != nil {
			cfg.Log.Warn("kernel timestamps", "reason", oneLine(err))
		}
	}
	if !cfg.NoEBPF {
		flows := wire.FlowsFor(cfg.Concurrency)
		if !cfg.OneShot {
			// A daemon keeps its echo destinations registered between ticks while the
			// table is less than half full (see probe's watches): room for that.
			flows = max(flows, wire.DefaultMaxFlows)
		}
		e.obs = e.openWire(wire.Options{TC: cfg.TC, NoTracepoints: !needs.Tracepoints, MaxFlows: flows, OneShot: cfg.OneShot})
	}
	return e, nil
}

// openWire loads the eBPF observer and says in one line what is degraded, why and how to
// fix it; a verifier rejection is followed by the verifier's log.
func (e *Engine) openWire(opt wire.Options) *wire.Observer {
	log := e.cfg.Log
	warn := func(msg string, err error) {
		log.Warn(msg, "reason", oneLine(err), "fix", wire.Fix(err))
		if vlog := wire.VerifierLog(err); vlog != "" && e.cfg.Diag != nil {
			fmt.Fprintln(e.cfg.Diag, vlog)
		}
	}
	obs, err := wire.Open(log, opt)
	if err != nil {
		warn("eBPF unavailable: timing in userspace", err)
		return nil
	}
	if st := obs.Status(); st.TCErr != nil && opt.TC != wire.TCOff {
		warn("eBPF TC programs unavailable: TCP handshakes timed by kernel tracepoints, not at the wire", st.TCErr)
	} else if st.TraceErr != nil && !opt.NoTracepoints && !opt.OneShot {
		log.Info("TCP tracepoints unavailable: SYN retransmissions counted at TC only", "reason", oneLine(st.TraceErr))
	}
	return obs
}

// Close releases what Open took, and says whether eBPF events were lost or dropped during
// the run: the verdicts they belonged to are not wire-timed.
func (e *Engine) Close() {
	if !e.cfg.OneShot { // the echo sockets kept open go before the observer they report to
		probe.KeepEchoSockets(0)
		probe.CloseEchoSockets()
	}
	if e.obs != nil {
		if n, err := e.obs.Lost(); err == nil && n > 0 {
			e.cfg.Log.Warn("eBPF events lost to a full ring buffer: some verdicts are not wire-timed", "lost_events", n)
		}
		if n := e.obs.Refused(); n > 0 {
			e.cfg.Log.Warn("eBPF flow table full: some attempts were timed by the kernel, not at the wire", "refused_flows", n)
		}
		if n := e.obs.Dropped(); n > 0 {
			e.cfg.Log.Warn("eBPF events dropped: a peer sent far more than a probe asked for; some verdicts are not wire-timed", "dropped_events", n)
		}
		e.obs.Close()
	}
	e.release()
	e.unfollow()
	netctx.Release()
}

// Job is one kind's targets and their options.
type Job struct {
	Kind    *probe.Kind
	Targets []target.Target
	Options *probe.Options
}

// Check says whether a job can run here: its options, each target against them, and what
// the kind needs that needs a privilege (with the fix in the message). The errors are plain,
// for the front-end to word as its usage errors.
func Check(j Job) error {
	if err := j.Options.Check(); err != nil {
		return err
	}
	for _, t := range j.Targets {
		if err := probe.CheckTarget(t, j.Options); err != nil {
			return err
		}
	}
	if j.Kind.Needs.EchoSocket {
		v4, v6 := probe.Families(j.Targets, j.Options)
		for _, fam := range []struct{ need, v6 bool }{{v4, false}, {v6, true}} {
			if fam.need {
				if err := probe.CheckICMP(fam.v6); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// Run runs the job's targets, Concurrency at once, and hands each target's verdicts (one,
// or two with --family both) to done, from the goroutine that probed it, as soon as they
// are ready. It returns when every target is done or ctx is done.
func (e *Engine) Run(ctx context.Context, j Job, done func(i int, vs []*verdict.Verdict)) {
	o := e.options(j.Options)
	schedule.ForEach(ctx, len(j.Targets), e.cfg.Concurrency, func(i int) {
		done(i, probe.Run(ctx, j.Kind, j.Targets[i], o))
	})
}

// Probe probes one target of a checked job and returns its verdicts (one per leg: family
// and interface), for a front-end that schedules targets itself (the daemon).
func (e *Engine) Probe(ctx context.Context, k *probe.Kind, t target.Target, o *probe.Options) []*verdict.Verdict {
	return probe.Run(ctx, k, t, e.options(o))
}

// Prepare attaches what the job's probes will be watched by (the TC programs on the
// interfaces their routes leave by), so that a long-running front-end is watching before
// its first probe.
func (e *Engine) Prepare(j Job) {
	o := e.options(j.Options)
	for _, t := range j.Targets {
		probe.Prepare(t, o)
	}
}

// options are o with the engine's observer and log.
func (e *Engine) options(o *probe.Options) *probe.Options {
	out := *o
	out.Wire = e.obs
	if out.Log == nil {
		out.Log = e.cfg.Log
	}
	return &out
}

// Wire is the engine's observer (nil without eBPF), for tests and diagnostics.
func (e *Engine) Wire() *wire.Observer { return e.obs }

func oneLine(err error) string { return strings.ReplaceAll(err.Error(), "\n", "; ") }
