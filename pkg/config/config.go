// Package config reads the daemon's configuration (docs/config.md): strict YAML, every
// error with its file, line and column, defaults inherited by every probe, and the probes'
// options set through the same flags and checked by the same code as `reachd probe`'s, so
// the file and the command line are one vocabulary.
package config

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"time"

	"github.com/goccy/go-yaml/ast"

	"reachd/pkg/probe"
	"reachd/pkg/target"
)

// DefaultPath is where `reachd run` reads its config without --config.
const DefaultPath = "/etc/reachd/reachd.yaml"

// Defaults of the daemon's own settings.
const (
	DefaultListen      = "127.0.0.1:9798"
	DefaultInterval    = 30 * time.Second
	DefaultRetries     = 1
	DefaultReminder    = time.Hour
	DefaultConcurrency = 256
	DefaultMaxRate     = 100
)

// Config is a checked configuration.
type Config struct {
	File    string
	Probes  []*Probe
	Metrics Metrics
	Log     Log
	// Concurrency bounds the attempts in flight at once, over every probe.
	Concurrency int
	// NoEBPF: load no eBPF; time in the kernel or userspace.
	NoEBPF bool
}

// Metrics configures the Prometheus endpoint.
type Metrics struct {
	Listen string // host:port; "" turns the endpoint off
}

// Log configures where verdicts go and which.
type Log struct {
	JSON     string // "stdout", "off" or a file path (reopened on SIGHUP)
	Journald string // auto, on, off
	Verdicts string // changes, failures, all
	// Reminder: with verdicts: changes, how often a target that stays not ok is logged again.
	Reminder time.Duration
	// MaxRate bounds the verdict records logged per second over all targets (beyond a
	// minute's worth, or a first round, at once); 0: no bound.
	MaxRate int
}

// Verdict logging modes.
const (
	VerdictsChanges  = "changes"
	VerdictsFailures = "failures"
	VerdictsAll      = "all"
)

// Probe is one configured probe: a kind, its targets, its schedule and its options.
type Probe struct {
	Name     string
	Kind     *probe.Kind
	Targets  []target.Target
	Interval time.Duration
	Options  *probe.Options
	Labels   map[string]string
	Line     int // where it is declared
	// Settings is every setting but the targets, as the probe's flags received them,
	// sorted: a target kept by a probe of the same name and settings is probed the same
	// way (a reload keeps its schedule and state).
	Settings string
	nameAt   ast.Node
}

// MaxSize bounds a config file: 10,000 targets take some 300 KiB.
const MaxSize = 16 << 20

// Load reads and checks the config file at path. Its errors are Errors, one per problem.
func Load(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	switch {
	case err != nil:
		return nil, fmt.Errorf("read config: %w", err)
	case !st.Mode().IsRegular():
		return nil, fmt.Errorf("read config: %s is not a regular file", path)
	case st.Size() > MaxSize:
		return nil, fmt.Errorf("read config: %s is %d bytes; a config is at most %d", path, st.Size(), MaxSize)
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(path, data)
}

// Parse checks a config read from file (the name errors carry).
func Parse(file string, data []byte) (*Config, error) {
	d := &doc{file: file, anchors: map[string]ast.Node{}}
	c := empty(file)
	root := d.parse(data)
	if len(d.errs) > 0 {
		return nil, d.sorted()
	}
	if root == nil {
		d.errs = append(d.errs, Error{File: file, Line: 1, Col: 1, Msg: "the file is empty: a config has probes (see docs/config.md)"})
		return nil, d.sorted()
	}
	c.top(d, root)
	if len(d.errs) > 0 {
		return nil, d.sorted()
	}
	return c, nil
}

// empty is a config of no probes, with every default.
func empty(file string) *Config {
	return &Config{File: file, Concurrency: DefaultConcurrency, Metrics: Metrics{Listen: DefaultListen},
		Log: Log{JSON: "stdout", Journald: "auto", Verdicts: VerdictsChanges, Reminder: DefaultReminder, MaxRate: DefaultMaxRate}}
}

var topKeys = []string{"defaults", "probes", "metrics", "log", "concurrency", "no_ebpf"}

func (c *Config) top(d *doc, root ast.Node) {
	entries, ok := d.mapping(root, "the config")
	if !ok {
		return
	}
	var defaults, probes *entry
	unknown := false
	for i := range entries {
		e := &entries[i]
		switch e.key {
		case "defaults":
			defaults = e
		case "probes":
			probes = e
		case "metrics":
			c.metrics(d, e)
		case "log":
			c.log(d, e)
		case "concurrency":
			if n, ok := d.intValue(e, 1, 1<<16); ok {
				c.Concurrency = n
			}
		case "no_ebpf":
			if b, ok := d.boolValue(e); ok {
				c.NoEBPF = b
			}
		default:
			d.errorf(e.keyAt, "unknown key %q%s", e.key, suggest(e.key, topKeys))
			unknown = true
		}
	}
	var defs settings
	if defaults != nil {
		defs = d.defaults(defaults)
	}
	if probes == nil {
		if !unknown { // a misspelt "probes" is said once
			d.errorf(root, "no probes: a config has a probes list (see docs/config.md)")
		}
		return
	}
	c.Probes = d.probes(probes, defs)
}

func (c *Config) metrics(d *doc, e *entry) {
	entries, _ := d.mapping(e.value, "metrics")
	for _, m := range entries {
		switch m.key {
		case "listen":
			s, ok := d.scalar(m.value, "metrics.listen")
			if !ok && m.value != nil {
				continue
			}
			if s != "" {
				if err := checkListen(s); err != nil {
					d.errorf(m.value, "metrics.listen %q: %v", s, err)
					continue
				}
			}
			c.Metrics.Listen = s
		default:
			d.errorf(m.keyAt, "unknown key metrics.%s%s", m.key, suggest(m.key, []string{"listen"}))
		}
	}
}

func checkListen(s string) error {
	_, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("want host:port (\"\" turns the endpoint off)")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port %q is not a number from 1 to 65535", port)
	}
	return nil
}

var logKeys = []string{"json", "journald", "verdicts", "reminder", "max_rate"}

func (c *Config) log(d *doc, e *entry) {
	entries, _ := d.mapping(e.value, "log")
	for _, m := range entries {
		s, ok := d.scalar(m.value, "log."+m.key)
		if !ok {
			if m.value == nil {
				d.errorf(m.keyAt, "log.%s: no value", m.key)
			}
			continue
		}
		switch m.key {
		case "json":
			if s != "stdout" && s != "off" && !filepath.IsAbs(s) {
				d.errorf(m.value, "log.json %q: want stdout, off or an absolute file path", s)
				continue
			}
			c.Log.JSON = s
		case "journald":
			if !oneOf(s, "auto", "on", "off") {
				d.errorf(m.value, "log.journald %q: want auto, on or off", s)
				continue
			}
			c.Log.Journald = s
		case "verdicts":
			if !oneOf(s, VerdictsChanges, VerdictsFailures, VerdictsAll) {
				d.errorf(m.value, "log.verdicts %q: want changes, failures or all", s)
				continue
			}
			c.Log.Verdicts = s
		case "max_rate":
			if n, ok := d.intValue(&entry{key: "log.max_rate", keyAt: m.keyAt, value: m.value}, 0, 1_000_000); ok {
				c.Log.MaxRate = n
			}
		case "reminder":
			dur, err := time.ParseDuration(s)
			if err != nil || dur < time.Minute {
				d.errorf(m.value, "log.reminder %q: want a duration of at least 1m", s)
				continue
			}
			c.Log.Reminder = dur
		default:
			d.errorf(m.keyAt, "unknown key log.%s%s", m.key, suggest(m.key, logKeys))
		}
	}
}

func oneOf(s string, vals ...string) bool {
	for _, v := range vals {
		if s == v {
			return true
		}
	}
	return false
}

func (d *doc) intValue(e *entry, lo, hi int) (int, bool) {
	if e.value != nil && !d.typed(e.value, e.key, "int") {
		return 0, false
	}
	s, ok := d.scalar(e.value, e.key)
	if !ok {
		if e.value == nil {
			d.errorf(e.keyAt, "%s: no value", e.key)
		}
		return 0, false
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < lo || n > hi {
		d.errorf(e.value, "%s: want an integer from %d to %d, got %q", e.key, lo, hi, s)
		return 0, false
	}
	return n, true
}

func (d *doc) boolValue(e *entry) (bool, bool) {
	if e.value != nil && !d.typed(e.value, e.key, "bool") {
		return false, false
	}
	s, ok := d.scalar(e.value, e.key)
	b, err := strconv.ParseBool(s)
	if !ok || err != nil {
		d.errorf(valueOrKey(e), "%s: want true or false, got %s", e.key, describe(e.value))
		return false, false
	}
	return b, true
}

func valueOrKey(e *entry) ast.Node {
	if e.value != nil {
		return e.value
	}
	return e.keyAt
}

var nameRe = regexp.MustCompile(`^[a-z0-9_.-]+$`)
