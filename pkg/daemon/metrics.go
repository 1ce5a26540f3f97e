package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"reachd/pkg/probe"
	"reachd/pkg/verdict"
	"reachd/pkg/wire"
)

// metrics are the daemon's Prometheus metrics (CONTRACT.md). The per-target series are
// written at scrape time from the scheduler's slots (exposition.go), so that a reload's
// removed probes lose their series and the config's label keys may change.
type metrics struct {
	d            *Daemon
	reg          *prometheus.Registry
	lateness     prometheus.Histogram
	selfOverload prometheus.Counter
	reloadOK     prometheus.Gauge
	reloadTime   prometheus.Gauge
	// reloadFailures counts rejected reloads (the gauge says only the last).
	reloadFailures prometheus.Counter
}

func newMetrics(d *Daemon, version string) *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	m.lateness = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "reachd_schedule_lateness_seconds",
		Help:    "How long after its tick a probe started (waiting for a free worker: the concurrency cap).",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	})
	m.selfOverload = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "reachd_self_overload_total",
		Help: "Verdicts that were self_overload: reachd itself was too late to probe fairly.",
	})
	m.reloadOK = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "reachd_config_last_reload_successful",
		Help: "1 if the last config load (start or SIGHUP) was applied, 0 if it was rejected.",
	})
	m.reloadTime = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "reachd_config_last_reload_success_timestamp_seconds",
		Help: "When a config was last applied, in seconds since the epoch.",
	})
	m.reloadFailures = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "reachd_config_reload_failures_total",
		Help: "Config reloads rejected (errors in the file, or a sink or endpoint that could not open); the running config stayed.",
	})
	build := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "reachd_build_info",
		Help:        "reachd's version and Go version; always 1.",
		ConstLabels: prometheus.Labels{"version": version, "goversion": runtime.Version()},
	})
	build.Set(1)
	m.reg.MustRegister(m.lateness, m.selfOverload, m.reloadOK, m.reloadTime, m.reloadFailures, build,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		&daemonCollector{d: d})
	m.d = d
	return m
}

// serve serves /metrics on addr until ctx is done; "" serves nothing. Only the metrics:
// no endpoint probes anything a request names.
func (m *metrics) serve(ctx context.Context, addr string, log *slog.Logger) (stop func(), err error) {
	if addr == "" {
		return func() {}, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics.listen %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.handler(m.d, log))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, WriteTimeout: 30 * time.Second,
		BaseContext: func(net.Listener) context.Context { return ctx }}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics endpoint stopped", "listen", addr, "err", err)
		}
	}()
	return func() {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		<-done
	}, nil
}

// baseLabels are the labels of every per-target series, before the config's.
var baseLabels = []string{"probe", "kind", "target", "family", "interface", "dns_server"}

// legFamily is a leg's family label: the family it probes when that is fixed (a literal
// address, a server's, ipv4, ipv6, each half of both), else "any" (a name resolved either way), so a
// leg's series never changes name.
func legFamily(v *verdict.Verdict, o *probe.Options, literal bool) string {
	if o.Family == probe.FamilyAny && !literal && v.Server == "" { // a server's family is its own
		return string(probe.FamilyAny)
	}
	if v.Family != "" {
		return v.Family
	}
	return string(o.Family)
}

// daemonCollector emits the process-wide series that are read from elsewhere at scrape
// time: the observer's counters, skipped ticks, the sinks' failures.
type daemonCollector struct{ d *Daemon }

func (c *daemonCollector) Describe(chan<- *prometheus.Desc) {}

var (
	descLost    = prometheus.NewDesc("reachd_wire_events_lost_total", "eBPF events lost to a full ring buffer (their verdicts are not wire-timed).", nil, nil)
	descDropped = prometheus.NewDesc("reachd_wire_events_dropped_total", "eBPF events dropped because a peer sent far more than a probe asked for.", nil, nil)
	descFull    = prometheus.NewDesc("reachd_wire_flows_full_total", "Attempts the eBPF flow table had no room for (timed by the kernel instead).", nil, nil)
	descSkipped = prometheus.NewDesc("reachd_schedule_skipped_total", "Ticks skipped because the target's previous attempt chain was still running (or reachd was stopped).", []string{"probe"}, nil)
	descTargets = prometheus.NewDesc("reachd_schedule_targets", "Targets scheduled, by probe.", []string{"probe"}, nil)
	descWrite   = prometheus.NewDesc("reachd_log_write_errors_total", "Verdicts a sink failed to take, by sink (json, journald).", []string{"sink"}, nil)
	descTCRuns  = prometheus.NewDesc("reachd_tc_runs_total", "Packets reachd's TC programs ran on, by direction; counted while kernel.bpf_stats_enabled=1 (off by default: it costs every BPF program a clock read).", []string{"direction"}, nil)
	descTCTime  = prometheus.NewDesc("reachd_tc_run_seconds_total", "Time reachd's TC programs ran, by direction; its rate over reachd_tc_runs_total's is the cost per packet. Counted while kernel.bpf_stats_enabled=1.", []string{"direction"}, nil)
	descSuppr   = prometheus.NewDesc("reachd_log_suppressed_total", "Verdict records not logged because they came faster than log.max_rate.", nil, nil)
	descQueue   = prometheus.NewDesc("reachd_schedule_queue", "Due probes waiting for a free worker.", nil, nil)
)

func (c *daemonCollector) Collect(ch chan<- prometheus.Metric) {
	d := c.d
	if obs := d.eng.Wire(); obs != nil {
		lost, _ := obs.Lost()
		ch <- prometheus.MustNewConstMetric(descLost, prometheus.CounterValue, float64(lost))
		ch <- prometheus.MustNewConstMetric(descDropped, prometheus.CounterValue, float64(obs.Dropped()))
		ch <- prometheus.MustNewConstMetric(descFull, prometheus.CounterValue, float64(obs.Refused()))
		if in, out, err := obs.TCStats(); err == nil {
			for dir, st := range map[string]wire.TCStats{"ingress": in, "egress": out} {
				ch <- prometheus.MustNewConstMetric(descTCRuns, prometheus.CounterValue, float64(st.Runs), dir)
				ch <- prometheus.MustNewConstMetric(descTCTime, prometheus.CounterValue, st.Runtime.Seconds(), dir)
			}
		}
	} else {
		for _, desc := range []*prometheus.Desc{descLost, descDropped, descFull} {
			ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, 0)
		}
	}
	// Read under the scheduler's lock, sent after it: a slow scrape must not hold it.
	s := d.sched
	s.mu.Lock()
	targets := map[string]int{}
	for _, sl := range s.slots {
		targets[sl.probe.Name]++
	}
	skipped := maps.Clone(s.skipped)
	queue := len(s.queue)
	s.mu.Unlock()
	for p, n := range skipped {
		ch <- prometheus.MustNewConstMetric(descSkipped, prometheus.CounterValue, float64(n), p)
	}
	ch <- prometheus.MustNewConstMetric(descQueue, prometheus.GaugeValue, float64(queue))
	for p, n := range targets {
		ch <- prometheus.MustNewConstMetric(descTargets, prometheus.GaugeValue, float64(n), p)
	}
	ch <- prometheus.MustNewConstMetric(descSuppr, prometheus.CounterValue, float64(d.suppressed.Load()))
	for _, sink := range []string{"json", "journald"} {
		ch <- prometheus.MustNewConstMetric(descWrite, prometheus.CounterValue, float64(d.outputs().errors()[sink]), sink)
	}
}
