package daemon

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/coreos/go-systemd/v22/journal"

	"reachd/pkg/config"
	"reachd/pkg/verdict"
)

// MessageID marks verdict records in the journal (journalctl MESSAGE_ID=...).
const MessageID = "6a1e3d0c9b8f4e27a5d2c7b14f9e3a68"

// outputs are where logged verdicts go: JSON lines (stdout or a file) and the journal.
type outputs struct {
	mu      sync.Mutex
	json    io.Writer // nil: off
	file    *os.File  // when json is a file, reopened on SIGHUP
	path    string
	journal bool
	closed  bool
	log     *slog.Logger
	// writeErrs counts verdicts a sink failed to take, by sink.
	writeErrs map[string]uint64
}

// openOutputs opens the sinks lg asks for. Under systemd, stdout may itself be the journal:
// then, with the journal on, JSON lines do not go to stdout too (a verdict once).
func openOutputs(lg config.Log, stdout io.Writer, log *slog.Logger) (*outputs, error) {
	o := &outputs{log: log, writeErrs: map[string]uint64{}}
	switch lg.Journald {
	case "on":
		if !journal.Enabled() {
			return nil, fmt.Errorf("log.journald is on but the journal's socket (/run/systemd/journal/socket) does not answer")
		}
		o.journal = true
	case "auto":
		o.journal = journal.Enabled()
	}
	switch lg.JSON {
	case "off":
	case "stdout":
		if isJournal, _ := journal.StdoutIsJournalStream(); isJournal && o.journal {
			log.Info("stdout is the journal: verdicts go to it once, as native fields, not also as JSON lines")
			break
		}
		o.json = stdout
	default:
		o.path = lg.JSON
		if err := o.reopen(); err != nil {
			return nil, err
		}
	}
	return o, nil
}

// reopen reopens the JSON file (after logrotate moved it); a no-op for stdout.
func (o *outputs) reopen() error {
	if o.path == "" {
		return nil
	}
	f, err := os.OpenFile(o.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return fmt.Errorf("open log.json %s: %w", o.path, err)
	}
	o.mu.Lock()
	old := o.file
	o.file, o.json = f, f
	o.mu.Unlock()
	if old != nil {
		old.Close()
	}
	return nil
}

// write logs v: one JSON line in one write (never torn by another verdict's), and one
// journal record. It returns false when the outputs were closed (a reload replaced them):
// the caller writes to the new ones.
func (o *outputs) write(v *verdict.Verdict, prio int) bool {
	line, err := json.Marshal(v)
	if err != nil { // a verdict always encodes; if not, say so rather than lose it silently
		o.log.Error("encode verdict", "probe", v.Probe, "target", v.Target, "err", err)
		return true
	}
	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		return false
	}
	if o.json != nil {
		if _, err := o.json.Write(append(line, '\n')); err != nil {
			o.failed("json", err)
		}
	}
	o.mu.Unlock()
	// A journal record is one datagram, never torn: no lock, so that a slow journald
	// delays only the worker whose verdict it is.
	if o.journal {
		if err := journal.Send(humanLine(v), journal.Priority(prio), journalFields(v, line)); err != nil {
			o.mu.Lock()
			o.failed("journald", err)
			o.mu.Unlock()
		}
	}
	return true
}

// failed counts a sink's failure and says so on its first.
func (o *outputs) failed(sink string, err error) {
	if o.writeErrs[sink] == 0 {
		o.log.Warn("a verdict could not be written; counting further failures in reachd_log_write_errors_total", "sink", sink, "err", err)
	}
	o.writeErrs[sink]++
}

func (o *outputs) errors() map[string]uint64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := make(map[string]uint64, len(o.writeErrs))
	for k, v := range o.writeErrs {
		out[k] = v
	}
	return out
}

func (o *outputs) close() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.closed = true
	if o.file != nil {
		o.file.Sync()
		o.file.Close()
		o.file, o.json = nil, nil
	}
}

// humanLine is the verdict's human line, as `reachd probe` prints it, without alignment.
func humanLine(v *verdict.Verdict) string {
	var b bytes.Buffer
	h := verdict.HumanWriter{W: &b}
	_ = h.Write(v)
	line := strings.TrimSpace(b.String())
	if v.Probe != "" {
		line = v.Probe + ": " + line
	}
	return line
}

// journalFields are the verdict's native journal fields (CONTRACT.md).
func journalFields(v *verdict.Verdict, line []byte) map[string]string {
	f := map[string]string{
		"SYSLOG_IDENTIFIER":    "reachd",
		"MESSAGE_ID":           MessageID,
		"REACHD_PROBE":         v.Probe,
		"REACHD_KIND":          v.Kind,
		"REACHD_TARGET":        v.Target,
		"REACHD_ADDR":          v.Addr,
		"REACHD_FAMILY":        v.Family,
		"REACHD_OK":            strconv.FormatBool(v.OK),
		"REACHD_REASON":        string(v.Reason),
		"REACHD_LAYER":         string(v.Layer),
		"REACHD_DETAIL":        v.Detail,
		"REACHD_TIMING_SOURCE": v.TimingSource,
		"REACHD_ATTEMPTS":      strconv.Itoa(v.Attempts),
		"REACHD_VERDICT":       string(line),
	}
	if v.RTTMs != nil {
		f["REACHD_RTT_MS"] = strconv.FormatFloat(float64(*v.RTTMs), 'f', 3, 64)
	}
	if v.Wire != nil && v.Wire.ICMP != nil && v.Wire.ICMP.From != "" {
		f["REACHD_ICMP_FROM"] = v.Wire.ICMP.From
	}
	if v.Interface != "" {
		f["REACHD_INTERFACE"] = v.Interface
	}
	if v.Server != "" {
		f["REACHD_SERVER"] = v.Server
	}
	if v.Resolver != "" {
		f["REACHD_RESOLVER"] = v.Resolver
	}
	for k, val := range v.Labels { // keys are [a-z][a-z0-9_]* (config), valid field names in upper case
		f["REACHD_LABEL_"+strings.ToUpper(k)] = val
	}
	return f
}
