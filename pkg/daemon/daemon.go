// Package daemon is `reachd run`: the engine's second front-end. It schedules every
// configured (probe, target) on its interval with a stable phase under a global
// concurrency cap, logs verdicts by policy to JSON lines and the journal, exports
// Prometheus metrics, reloads its config as a diff on SIGHUP, stops cleanly on SIGTERM,
// and tells systemd how it is (sd_notify).
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"reachd/pkg/config"
	"reachd/pkg/engine"
	"reachd/pkg/probe"
	"reachd/pkg/schedule"
	"reachd/pkg/verdict"
)

// Options are what `reachd run` was given.
type Options struct {
	// ConfigPath is the config file; "" reads config.DefaultPath, or runs the gateway
	// profile when that does not exist.
	ConfigPath string
	// ResolvConf is where the gateway profile finds nameservers; "": config.ResolvConf.
	ResolvConf string
	Version    string
	Stdout     io.Writer // JSON lines with log.json: stdout
	Log        *slog.Logger
	Diag       io.Writer // multi-line diagnostics (a verifier's log)
	// Signals delivers SIGHUP, SIGTERM and SIGINT; nil: the process's own.
	Signals <-chan os.Signal
}

// Daemon is a running `reachd run`.
type Daemon struct {
	opts   Options
	log    *slog.Logger
	eng    *engine.Engine
	sched  *scheduler
	cfg    atomic.Pointer[config.Config]
	out    atomic.Pointer[outputs]
	m      *metrics
	notify *notifier
	// stopMetrics stops the metrics endpoint; swapped when a reload moves it.
	stopMetrics func()
	budget      atomic.Pointer[logBudget] // verdict records a second (log.max_rate)
	suppressed  atomic.Uint64             // records over the budget, over every budget
	// runCtx bounds every attempt; it is cancelled when the drain after SIGTERM is over.
	runCtx    context.Context
	cancelRun context.CancelFunc
	// stopping is closed on SIGTERM: chains make no more retries.
	stopping chan struct{}
	workers  sync.WaitGroup
	// profile is the gateway profile's text while it runs (no config file), to see when
	// the routes or resolv.conf change it; profileMem what it has seen (SIGHUP forgets).
	profile    string
	profileMem *config.ProfileMemory
}

// ErrConfig marks errors of the configuration (exit 2): config.Errors, a sink or an
// endpoint that cannot open, a probe the host cannot run.
var ErrConfig = errors.New("config")

// Run runs the daemon until ctx is done or SIGTERM/SIGINT, and returns nil after a clean
// stop. Its errors before the first schedule wrap ErrConfig or are config.Errors.
func Run(ctx context.Context, opts Options) error {
	d := &Daemon{opts: opts, log: opts.Log, sched: newScheduler(), notify: newNotifier(), stopping: make(chan struct{})}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	if d.opts.Signals == nil {
		// Caught from the start: a SIGHUP while eBPF loads must not kill the daemon (it is
		// answered once the schedule runs).
		ch := make(chan os.Signal, 4)
		signal.Notify(ch, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
		defer signal.Stop(ch)
		d.opts.Signals = ch
	}
	cfg, err := d.load()
	if err != nil {
		return err
	}
	if err := d.start(ctx, cfg); err != nil {
		return err
	}
	return d.serve(ctx)
}

// load reads the config file, or the gateway profile when no file was named and the
// default one does not exist.
func (d *Daemon) load() (*config.Config, error) {
	path := d.opts.ConfigPath
	if path == "" {
		path = config.DefaultPath
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			return d.loadProfile()
		}
	}
	d.profile = ""
	c, err := config.Load(path)
	if err != nil {
		var cerrs config.Errors
		if errors.As(err, &cerrs) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	return c, nil
}

// loadProfile builds the gateway profile and says what it probes.
func (d *Daemon) loadProfile() (*config.Config, error) {
	rc := d.opts.ResolvConf
	if rc == "" {
		rc = config.ResolvConf
	}
	if d.profileMem == nil {
		d.profileMem = &config.ProfileMemory{}
	}
	c, text, err := config.LoadProfile(rc, d.profileMem)
	if err != nil {
		return nil, fmt.Errorf("%w: gateway profile: %w", ErrConfig, err)
	}
	if text != d.profile {
		d.log.Info("no config file ("+config.DefaultPath+"): probing this host's default gateways and nameservers",
			"targets", profileTargets(c))
		if text == "" {
			d.log.Warn("gateway profile: no default route and no nameserver to probe; checking again as they change")
		} else if d.opts.Diag != nil {
			fmt.Fprint(d.opts.Diag, text)
		}
	}
	d.profile = text
	return c, nil
}

func profileTargets(c *config.Config) []string {
	var out []string
	for _, p := range c.Probes {
		for _, t := range p.Targets {
			out = append(out, p.Name+":"+t.Raw)
		}
	}
	return out
}

// start opens the engine, the sinks and the endpoint, and sets the first schedule.
func (d *Daemon) start(ctx context.Context, cfg *config.Config) error {
	out, err := openOutputs(cfg.Log, d.opts.Stdout, d.log)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	d.out.Store(out)
	// Every kind is made ready, not only the config's: a reload may add any.
	eng, err := engine.Open(ctx, engine.Config{Kinds: probe.Kinds(), NoEBPF: cfg.NoEBPF, TC: os.Getenv("REACHD_TC"),
		Concurrency: cfg.Concurrency, Log: d.log, Diag: d.opts.Diag})
	if err != nil {
		out.close()
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	d.eng = eng
	if err := checkProbes(cfg); err != nil {
		d.closeAll()
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	d.m = newMetrics(d, d.opts.Version)
	if d.stopMetrics, err = d.m.serve(ctx, cfg.Metrics.Listen, d.log); err != nil {
		d.closeAll()
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	d.runCtx, d.cancelRun = context.WithCancel(context.WithoutCancel(ctx))
	d.prepare(cfg)
	d.setBudget(cfg)
	// What only the start needed (loading the tracepoints: CAP_PERFMON; CAP_SYS_ADMIN as
	// root) goes now: a bug later cannot use it.
	if dropped, err := dropCapabilities(); err != nil {
		d.log.Warn("capabilities not dropped", "err", err)
	} else if len(dropped) > 0 {
		d.log.Info("capabilities dropped after start", "dropped", len(dropped), "kept", "cap_net_raw,cap_net_admin,cap_bpf")
	}
	d.cfg.Store(cfg)
	d.sched.apply(cfg.Probes)
	d.m.reloadOK.Set(1)
	d.m.reloadTime.SetToCurrentTime()
	d.sched.setWorkers(cfg.Concurrency, d.workers.Go, d.runTick)
	d.log.Info("reachd running", "config", cfg.File, "probes", len(cfg.Probes), "targets", targetCount(cfg),
		"concurrency", cfg.Concurrency, "metrics", cfg.Metrics.Listen)
	return nil
}

// setBudget bounds the verdict records a second as cfg says: log.max_rate, beyond a burst
// of a minute's worth or a whole round of the config's verdicts, whichever is more.
func (d *Daemon) setBudget(cfg *config.Config) {
	legs := 0
	for _, p := range cfg.Probes {
		legs += probe.Verdicts(p.Targets, p.Options)
	}
	rate, burst := cfg.Log.MaxRate, max(60*cfg.Log.MaxRate, legs)
	if b := d.budget.Load(); b != nil {
		b.configure(rate, burst, time.Now())
		return
	}
	d.budget.Store(newLogBudget(rate, burst, time.Now()))
}

// checkProbes says whether the host can run every probe (the echo sockets' privilege).
func checkProbes(cfg *config.Config) error {
	for _, p := range cfg.Probes {
		if err := engine.Check(engine.Job{Kind: p.Kind, Targets: p.Targets, Options: p.Options}); err != nil {
			return fmt.Errorf("%s:%d: probe %s: %w", cfg.File, p.Line, p.Name, err)
		}
	}
	return nil
}

// prepare attaches the eBPF programs where the probes' routes leave, before they run.
func (d *Daemon) prepare(cfg *config.Config) {
	for _, p := range cfg.Probes {
		d.eng.Prepare(engine.Job{Kind: p.Kind, Targets: p.Targets, Options: p.Options})
	}
}

func targetCount(cfg *config.Config) int {
	n := 0
	for _, p := range cfg.Probes {
		n += len(p.Targets)
	}
	return n
}

// serve runs the scheduler and answers signals until a stop.
func (d *Daemon) serve(ctx context.Context) error {
	sigs := d.opts.Signals
	lctx, stopLoop := context.WithCancel(ctx)
	d.sched.tick = func() {
		// The loop runs, but the watchdog also wants the workers to: a tick queued far
		// longer than any chain takes means they are stuck, and systemd should restart us.
		if now := time.Now(); !d.sched.stuck(now, stuckAfter(d.cfg.Load())) {
			d.notify.watchdog(now)
		}
	}
	d.sched.tickEvery = min(time.Second, max(d.notify.every, 10*time.Millisecond))
	loopDone := make(chan struct{})
	go func() { defer close(loopDone); d.sched.loop(lctx) }()
	d.notify.ready(d.statusLine())
	// The gateway profile follows the routes and resolv.conf: checked on this clock.
	follow := time.NewTicker(profileEvery)
	defer follow.Stop()
	for {
		select {
		case <-ctx.Done():
		case <-follow.C:
			d.followProfile()
			continue
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				d.profileMem = nil // the gateway profile forgets what is gone
				d.reload()
				continue
			}
		}
		break
	}
	stopLoop()
	<-loopDone
	d.stop()
	return nil
}

// profileEvery is how often the gateway profile is rebuilt to see whether it changed.
const profileEvery = 5 * time.Second

// followProfile applies the gateway profile again when the default routes or the
// nameservers changed it.
func (d *Daemon) followProfile() {
	if d.cfg.Load().File != config.ProfileName || d.opts.ConfigPath != "" {
		return
	}
	if _, err := os.Stat(config.DefaultPath); !errors.Is(err, os.ErrNotExist) {
		// A config file appeared but a reload rejected it: it, not the profile, is what
		// the next SIGHUP reads (the profile keeps running until then).
		return
	}
	rc := d.opts.ResolvConf
	if rc == "" {
		rc = config.ResolvConf
	}
	// A copy of the memory: the reload itself adds what is new.
	if _, text, err := config.LoadProfile(rc, d.profileMem.Clone()); err == nil && text != d.profile {
		d.reload()
	}
}

func (d *Daemon) statusLine() string {
	cfg := d.cfg.Load()
	return fmt.Sprintf("probing %d targets of %d probes", targetCount(cfg), len(cfg.Probes))
}

// runTick probes one due slot, or says self_overload when reachd took too long to get to
// it: a probe that late would blame the target for reachd's own delay.
func (d *Daemon) runTick(q *queued) {
	p, t := q.probe, q.s.target
	late := max(time.Since(q.due), 0) // queued early with others due then (tickAhead)
	d.m.lateness.Observe(late.Seconds())
	var vs []*verdict.Verdict
	if limit := lateLimit(p); late > limit {
		vs = probe.Overloaded(p.Kind, t, p.Options, fmt.Sprintf(
			"reachd started this probe %s after its tick (limit %s): reachd was overloaded (concurrency %d, %d ticks queued); nothing was sent",
			late.Round(time.Millisecond), limit, d.cfg.Load().Concurrency, d.sched.queueLen()))
	} else {
		o := *p.Options
		// Retries stop with reachd; the attempt in flight still ends and writes its verdict.
		o.Sleep = schedule.StoppableSleep(d.stopping)
		vs = d.eng.Probe(d.runCtx, p.Kind, t, &o)
	}
	d.record(q.s, vs)
}

// lateLimit is how late a probe may start and still be fair to its target: half its
// interval, and no more than its timeout.
func lateLimit(p *config.Probe) time.Duration {
	return min(p.Interval/2, p.Options.Timeout)
}

// record keeps a slot's verdicts for the metrics and the logging policy, and logs those
// the policy says to.
func (d *Daemon) record(sl *slot, vs []*verdict.Verdict) {
	cfg := d.cfg.Load()
	now := time.Now()
	type logged struct {
		v    *verdict.Verdict
		prio int
	}
	var out []logged
	d.sched.mu.Lock()
	sl.legs = matchLegs(sl.legs, vs)
	for i, v := range vs {
		v.Labels = sl.probe.Labels
		l := sl.legs[i]
		if !l.seen {
			l.family, l.iface = legFamily(v, sl.probe.Options, sl.target.IsLiteral()), v.Interface
		}
		if log, prio := l.update(v, cfg.Log, now); log {
			out = append(out, logged{v, prio})
		}
		if v.Reason == verdict.SelfOverload {
			d.m.selfOverload.Inc()
		}
	}
	d.sched.mu.Unlock()
	budget := d.budget.Load()
	for _, l := range out {
		ok, summary := budget.take(now)
		if summary > 0 {
			d.log.Warn("verdict records over log.max_rate were not logged (counted in reachd_log_suppressed_total)",
				"suppressed", summary, "max_rate", cfg.Log.MaxRate)
		}
		if !ok {
			d.suppressed.Add(1)
			continue
		}
		// Outputs a reload replaced meanwhile refuse it: the new ones take it.
		written := false
		for try := 0; try < 3 && !written; try++ {
			written = d.outputs().write(l.v, l.prio)
		}
		if !written {
			d.log.Error("verdict not written: the outputs kept closing under it", "probe", l.v.Probe, "target", l.v.Target)
		}
	}
}

func (d *Daemon) outputs() *outputs { return d.out.Load() }

// drainMax bounds how long a stop waits for attempts in flight.
const drainMax = 30 * time.Second

// stop ends the daemon: no more ticks, no more retries, the attempts in flight end (within
// a bound, after which they are cancelled and still write their verdicts), sinks flushed.
func (d *Daemon) stop() {
	d.notify.stopping()
	dropped := d.sched.stop()
	close(d.stopping)
	bound := drainMax
	if cfg := d.cfg.Load(); cfg != nil {
		bound = min(drainMax, maxBudget(cfg)+time.Second)
	}
	drained := make(chan struct{})
	go func() { d.workers.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(bound):
		d.log.Warn("attempts still running after the drain bound: cancelling them", "bound", bound)
		d.cancelRun()
		<-drained
	}
	d.log.Info("reachd stopped", "ticks_not_started", dropped)
	d.closeAll()
}

// stuckAfter is how long a queued tick may wait before the workers count as stuck: longer
// than any attempt chain of cfg can take (its attempts and their backoffs), and a minute.
func stuckAfter(cfg *config.Config) time.Duration {
	var longest time.Duration
	for _, p := range cfg.Probes {
		o := p.Options
		chain := time.Duration(o.Policy.Retries+1)*probe.AttemptBudget(p.Kind, o) + probe.AfterBudget(o)
		for i, b := 0, float64(o.Policy.Initial); i < o.Policy.Retries; i, b = i+1, b*o.Policy.Multiplier {
			chain += time.Duration(b * (1 + o.Policy.Jitter))
		}
		longest = max(longest, chain)
	}
	return max(time.Minute, 2*longest)
}

func maxBudget(cfg *config.Config) time.Duration {
	var m time.Duration
	for _, p := range cfg.Probes {
		m = max(m, probe.AttemptBudget(p.Kind, p.Options)+probe.AfterBudget(p.Options))
	}
	return m
}

// closeAll releases what start opened.
func (d *Daemon) closeAll() {
	if d.cancelRun != nil {
		d.cancelRun()
	}
	if d.stopMetrics != nil {
		d.stopMetrics()
	}
	if out := d.outputs(); out != nil {
		out.close()
	}
	if d.eng != nil {
		d.eng.Close()
	}
}
