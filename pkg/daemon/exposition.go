package daemon

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"io"
	"log/slog"
	"maps"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/prometheus/common/expfmt"
)

// The per-target series are written as they are read, in the text format: with 10,000
// targets they are some 250,000 samples, which client_golang would first build as objects
// (over 100 MiB at each scrape); streamed, a scrape costs a buffer. The process-wide series
// go through client_golang's registry as usual, ahead of them.

// handler serves /metrics: the registry's families, then the targets'.
func (m *metrics) handler(d *Daemon, log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mfs, err := m.reg.Gather()
		if err != nil {
			log.Warn("gather metrics", "err", err)
		}
		w.Header().Set("Content-Type", string(expfmt.NewFormat(expfmt.TypeTextPlain)))
		var out io.Writer = w
		if strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
			w.Header().Set("Content-Encoding", "gzip")
			gz := gzip.NewWriter(w)
			defer gz.Close()
			out = gz
		}
		bw := bufio.NewWriterSize(out, 64<<10)
		defer bw.Flush()
		for _, mf := range mfs {
			if _, err := expfmt.MetricFamilyToText(bw, mf); err != nil {
				return // the scraper went away
			}
		}
		d.writeTargetSeries(bw)
	})
}

// family is one per-target metric family: its text header and how a leg's samples read.
type family struct {
	name, help, typ string
	write           func(e *seriesWriter, l *leg)
}

var targetFamilies = []family{
	{"reachd_probe_success", "1 if the target's last verdict was ok, else 0.", "gauge", func(e *seriesWriter, l *leg) {
		e.sample("", "", "", b2f(l.ok))
	}},
	{"reachd_probe_rtt_seconds", "Round trips of the target's verdicts (at the wire where eBPF times them).", "histogram", func(e *seriesWriter, l *leg) {
		cum := l.rtt.cumulative()
		for _, b := range rttBuckets {
			e.sample("_bucket", "le", strconv.FormatFloat(b, 'g', -1, 64), float64(cum[b]))
		}
		e.sample("_bucket", "le", "+Inf", float64(l.rtt.n))
		e.sample("_sum", "", "", l.rtt.sum)
		e.sample("_count", "", "", float64(l.rtt.n))
	}},
	{"reachd_probe_verdicts_total", "Verdicts of the target, by reason.", "counter", func(e *seriesWriter, l *leg) {
		for _, r := range slices.Sorted(maps.Keys(l.verdicts)) {
			e.sample("", "reason", string(r), float64(l.verdicts[r]))
		}
	}},
	{"reachd_probe_attempts_total", "Attempts made for the target, retries included.", "counter", func(e *seriesWriter, l *leg) {
		e.sample("", "", "", float64(l.attempts))
	}},
	{"reachd_probe_last_verdict_timestamp_seconds", "When the target's last verdict was made.", "gauge", func(e *seriesWriter, l *leg) {
		e.sample("", "", "", float64(l.lastAt.UnixNano())/1e9)
	}},
	{"reachd_probe_packets_sent_total", "Packets sent to the target by kinds that send several an attempt (icmp, udp).", "counter", func(e *seriesWriter, l *leg) {
		if l.sent > 0 {
			e.sample("", "", "", float64(l.sent))
		}
	}},
	{"reachd_probe_packets_received_total", "Packets of the target answered (loss = 1 - received/sent).", "counter", func(e *seriesWriter, l *leg) {
		if l.sent > 0 {
			e.sample("", "", "", float64(l.received))
		}
	}},
	{"reachd_probe_tls_earliest_cert_expiry_timestamp_seconds", "When the earliest-expiring certificate of the target's chain expires, from its last completed TLS handshake (tls, https).", "gauge", func(e *seriesWriter, l *leg) {
		if !l.certExpiry.IsZero() {
			e.sample("", "", "", float64(l.certExpiry.Unix()))
		}
	}},
}

// seriesWriter writes one family's samples for one leg at a time.
type seriesWriter struct {
	w      *bufio.Writer
	name   string
	labels []labelPair // the leg's, sorted by name as client_golang writes them
}

type labelPair struct{ name, value string }

func (e *seriesWriter) sample(suffix, extraName, extraValue string, v float64) {
	w := e.w
	w.WriteString(e.name)
	w.WriteString(suffix)
	w.WriteByte('{')
	extra := extraName != ""
	for i, p := range e.labels {
		if extra && extraName < p.name {
			writePair(w, extraName, extraValue, i > 0)
			extra = false
			i++
		}
		writePair(w, p.name, p.value, i > 0)
	}
	if extra {
		writePair(w, extraName, extraValue, len(e.labels) > 0)
	}
	w.WriteString("} ")
	w.WriteString(formatValue(v))
	w.WriteByte('\n')
}

func writePair(w *bufio.Writer, name, value string, comma bool) {
	if comma {
		w.WriteByte(',')
	}
	w.WriteString(name)
	w.WriteString(`="`)
	w.WriteString(escapeLabel(value))
	w.WriteByte('"')
}

// chunk is how many slots are read under the scheduler's lock at a time: the lock is
// never held while writing to the scraper.
const chunk = 128

// writeTargetSeries writes every per-target family. The slots are listed once; each
// family then reads them a chunk at a time under the lock, into a buffer written after.
func (d *Daemon) writeTargetSeries(w *bufio.Writer) {
	s := d.sched
	s.mu.Lock()
	slots := make([]*slot, 0, len(s.slots))
	keys := map[string]bool{}
	for _, sl := range s.slots {
		slots = append(slots, sl)
		for k := range sl.probe.Labels {
			keys[k] = true
		}
	}
	s.mu.Unlock()
	slices.SortFunc(slots, func(a, b *slot) int { return strings.Compare(a.key, b.key) })
	extra := slices.Sorted(maps.Keys(keys))
	var buf bytes.Buffer // reused: its memory is one chunk's text
	bw := bufio.NewWriterSize(&buf, 4096)
	for _, f := range targetFamilies {
		w.WriteString("# HELP " + f.name + " " + f.help + "\n# TYPE " + f.name + " " + f.typ + "\n")
		for i := 0; i < len(slots); i += chunk {
			buf.Reset()
			bw.Reset(&buf)
			e := &seriesWriter{w: bw, name: f.name}
			s.mu.Lock()
			for _, sl := range slots[i:min(i+chunk, len(slots))] {
				if sl.removed {
					continue
				}
				for _, l := range sl.legs {
					if l.seen {
						e.labels = legLabels(sl, l, extra)
						f.write(e, l)
					}
				}
			}
			s.mu.Unlock()
			bw.Flush()
			if _, err := w.Write(buf.Bytes()); err != nil {
				return
			}
		}
	}
}

// legLabels are a leg's labels, sorted by name: the base ones and the config's, empty
// where the probe has none.
func legLabels(sl *slot, l *leg, extra []string) []labelPair {
	vals := []string{sl.probe.Name, sl.probe.Kind.Name, sl.target.Raw, l.family, l.iface, l.server}
	out := make([]labelPair, 0, len(baseLabels)+len(extra))
	for i, name := range baseLabels {
		out = append(out, labelPair{name, vals[i]})
	}
	for _, k := range extra {
		out = append(out, labelPair{k, sl.probe.Labels[k]})
	}
	slices.SortFunc(out, func(a, b labelPair) int { return strings.Compare(a.name, b.name) })
	return out
}

var labelEscaper = strings.NewReplacer(`\`, `\\`, "\n", `\n`, `"`, `\"`)

func escapeLabel(s string) string { return labelEscaper.Replace(s) }

func formatValue(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	case math.IsNaN(v):
		return "NaN"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
