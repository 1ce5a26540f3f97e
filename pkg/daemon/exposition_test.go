package daemon

import (
	"bytes"
	"compress/gzip"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"reachd/pkg/config"
	"reachd/pkg/verdict"
)

// TestExposition: the streamed per-target series parse as the text format, with their
// labels (the config's union, escaped) and values, plain and gzipped.
func TestExposition(t *testing.T) {
	cfg := mustConfig(t, "probes:\n  - {name: a, kind: icmp, targets: [198.51.100.1], labels: {site: \"fra\\\"1\"}}\n  - {name: b, kind: tcp, targets: [\"198.51.100.2:80\"]}\n")
	d := &Daemon{sched: newScheduler()}
	d.sched.apply(cfg.Probes)
	d.cfg.Store(cfg)
	now := time.Now()
	for _, sl := range d.sched.slots {
		l := &leg{family: "ipv4"}
		v := &verdict.Verdict{Attempts: 2}
		v.SetReason(verdict.OK, "")
		rtt := verdict.Millis(1.5)
		v.RTTMs = &rtt
		v.Stats = &verdict.Stats{Count: 3, Received: 2}
		v.TLS = &verdict.TLS{Expiry: "2027-01-02T03:04:05Z"}
		l.update(v, config.Log{Verdicts: config.VerdictsAll}, now)
		sl.legs = []*leg{l}
	}
	m := &metrics{}
	m.reg, m.d = newRegistryForTest(), d
	for _, gz := range []bool{false, true} {
		req := httptest.NewRequest("GET", "/metrics", nil)
		if gz {
			req.Header.Set("Accept-Encoding", "gzip")
		}
		rec := httptest.NewRecorder()
		m.handler(d, discardLog()).ServeHTTP(rec, req)
		var body io.Reader = rec.Body
		if gz {
			zr, err := gzip.NewReader(rec.Body)
			if err != nil {
				t.Fatal(err)
			}
			body = zr
		}
		text, _ := io.ReadAll(body)
		p := expfmt.NewTextParser(model.LegacyValidation)
		mfs, err := p.TextToMetricFamilies(bytes.NewReader(text))
		if err != nil {
			t.Fatalf("gzip %v: %v\n%s", gz, err, text)
		}
		h := mfs["reachd_probe_rtt_seconds"]
		if h == nil || len(h.Metric) != 2 || h.Metric[0].Histogram.GetSampleCount() != 1 {
			t.Fatalf("rtt histogram: %v", h)
		}
		if !strings.Contains(string(text), `reachd_probe_success{dns_server="",family="ipv4",interface="",kind="icmp",probe="a",site="fra\"1",target="198.51.100.1"} 1`) {
			t.Errorf("success series of a, labels sorted and escaped:\n%s", text)
		}
		if !strings.Contains(string(text), `reachd_probe_verdicts_total{dns_server="",family="ipv4",interface="",kind="tcp",probe="b",reason="ok",site="",target="198.51.100.2:80"} 1`) {
			t.Errorf("verdicts series of b, reason in order, empty site:\n%s", text)
		}
		if got := mfs["reachd_probe_packets_received_total"]; got == nil || got.Metric[0].Counter.GetValue() != 2 {
			t.Errorf("packets received: %v", got)
		}
		if got := mfs["reachd_probe_tls_earliest_cert_expiry_timestamp_seconds"]; got == nil || got.Metric[0].Gauge.GetValue() != 1798859045 {
			t.Errorf("certificate expiry: %v", got)
		}
		for name := range mfs {
			if !model.IsValidLegacyMetricName(name) {
				t.Errorf("bad name %s", name)
			}
		}
	}
}

func newRegistryForTest() *prometheus.Registry { return prometheus.NewRegistry() }

func discardLog() *slog.Logger { return slog.New(slog.DiscardHandler) }
