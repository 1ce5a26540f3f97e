package daemon

import (
	"errors"
	"fmt"
	"runtime/debug"
	"strings"

	"reachd/pkg/config"
)

// reload applies the config file again on SIGHUP, as a diff: unchanged probes keep their
// phase and state, removed ones stop (their series go), new ones start at their phase. A
// config with errors is rejected whole, its errors logged and counted, and the running
// one goes on. The JSON log file is reopened either way (logrotate).
func (d *Daemon) reload() {
	d.notify.reloading()
	old := d.cfg.Load()
	cfg, err := d.loadChecked()
	if err != nil {
		d.m.reloadOK.Set(0)
		d.m.reloadFailures.Inc()
		var cerrs config.Errors
		n := 1
		if errors.As(err, &cerrs) {
			n = len(cerrs)
		}
		d.log.Error("config reload rejected: the previous config keeps running", "errors", n, "err", strings.ReplaceAll(err.Error(), "\n", "; "))
		if rerr := d.outputs().reopen(); rerr != nil {
			d.log.Error("reopen log.json", "err", rerr)
		}
		d.notify.ready(fmt.Sprintf("%s; last reload rejected (%d errors)", d.statusLine(), n))
		return
	}
	if err := d.applyOutputs(old, cfg); err != nil {
		d.m.reloadOK.Set(0)
		d.m.reloadFailures.Inc()
		d.log.Error("config reload rejected: the previous config keeps running", "err", err)
		d.notify.ready(d.statusLine() + "; last reload rejected")
		return
	}
	if old.Concurrency != cfg.Concurrency || old.NoEBPF != cfg.NoEBPF {
		d.log.Warn("concurrency and no_ebpf take effect at the next start; the running values stay",
			"concurrency", old.Concurrency, "no_ebpf", old.NoEBPF)
		cfg.Concurrency, cfg.NoEBPF = old.Concurrency, old.NoEBPF
	}
	d.prepare(cfg)
	d.setBudget(cfg)
	d.cfg.Store(cfg)
	removed, added := d.sched.apply(cfg.Probes)
	d.m.reloadOK.Set(1)
	d.m.reloadTime.SetToCurrentTime()
	d.log.Info("config reloaded", "probes", len(cfg.Probes), "targets", targetCount(cfg), "removed", removed, "added", added)
	d.notify.ready(d.statusLine())
}

// loadChecked reads and checks the new config. A panic there is a bug of reachd's, but it
// must not end a daemon that has a good config running (and exit 2 would keep systemd from
// restarting it): the reload is rejected instead, with the panic and its stack logged.
func (d *Daemon) loadChecked() (cfg *config.Config, err error) {
	defer func() {
		if r := recover(); r != nil {
			d.log.Error("BUG: reading the config panicked; please report it with this message", "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			cfg, err = nil, fmt.Errorf("reachd failed to read the config (a bug): %v", r)
		}
	}()
	if cfg, err = d.load(); err == nil {
		err = checkProbes(cfg)
	}
	return cfg, err
}

// applyOutputs moves the sinks and the endpoint where the new config says, all or none: a
// reload it rejects leaves the old ones in place. The JSON file is reopened in any case.
func (d *Daemon) applyOutputs(old, cfg *config.Config) error {
	var out *outputs
	if old.Log != cfg.Log {
		var err error
		if out, err = openOutputs(cfg.Log, d.opts.Stdout, d.log); err != nil {
			return err
		}
	} else if err := d.outputs().reopen(); err != nil {
		return err
	}
	if old.Metrics.Listen != cfg.Metrics.Listen {
		if err := d.moveMetrics(old.Metrics.Listen, cfg.Metrics.Listen); err != nil {
			if out != nil {
				out.close()
			}
			return err
		}
	}
	if out != nil {
		d.out.Swap(out).close()
	}
	return nil
}

// moveMetrics serves the endpoint at to instead of from: beside the old one first, or in
// its place when they need the same port, and back at from if to cannot be had.
func (d *Daemon) moveMetrics(from, to string) error {
	stop, err := d.m.serve(d.runCtx, to, d.log)
	if err != nil {
		d.stopMetrics()
		if stop, err = d.m.serve(d.runCtx, to, d.log); err != nil {
			d.stopMetrics, _ = d.m.serve(d.runCtx, from, d.log)
			return err
		}
	} else {
		d.stopMetrics()
	}
	d.stopMetrics = stop
	return nil
}
