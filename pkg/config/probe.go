package config

import (
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/goccy/go-yaml/ast"
	"github.com/spf13/pflag"

	"reachd/pkg/probe"
)

// settings are a probe's keys as written (or inherited from defaults): the shared flags by
// their key, the kind's own as "KIND.KEY", a kind's block as "KIND".
type settings map[string]*entry

// Keys of a probe besides the flags: identity, targets, schedule, labels.
var ownKeys = []string{"name", "kind", "targets", "interval", "labels"}

// sharedKeys are the keys of probe.Flags, and count (a kind option the contract lets a
// probe set at its top level, beside interval).
var sharedKeys = []string{"timeout", "retries", "family", "interface", "source", "mark", "resolver", "trace", "pmtu", "count"}

func probeKeys() []string {
	keys := slices.Concat(ownKeys, sharedKeys)
	for _, k := range probe.Kinds() {
		keys = append(keys, k.Name)
	}
	return keys
}

// defaults reads the defaults block: any probe key but name, kind and targets.
func (d *doc) defaults(e *entry) settings {
	s := settings{}
	entries, _ := d.mapping(e.value, "defaults")
	for i := range entries {
		m := &entries[i]
		switch {
		case m.key == "name" || m.key == "kind" || m.key == "targets":
			d.errorf(m.keyAt, "defaults.%s: each probe has its own %s", m.key, m.key)
		case slices.Contains(probeKeys(), m.key):
			d.setting(s, m, "defaults")
		default:
			d.errorf(m.keyAt, "unknown key defaults.%s%s", m.key, suggest(m.key, probeKeys()))
		}
	}
	return s
}

// setting records one key, and a kind block's keys as KIND.KEY.
func (d *doc) setting(s settings, m *entry, where string) {
	if prev, dup := s[m.key]; dup { // count, also under the kind's name
		d.errorf(m.keyAt, "%s is set twice in this %s (also at line %d)", m.key, where, prev.keyAt.GetToken().Position.Line)
		return
	}
	s[m.key] = m
	if _, isKind := probe.Lookup(m.key); !isKind || m.value == nil {
		return
	}
	block, ok := d.mapping(m.value, where+"."+m.key)
	if !ok {
		return
	}
	for i := range block {
		b := &block[i]
		key := m.key + "." + b.key
		if b.key == "count" {
			// count under the kind's name is the probe's count.
			if prev, dup := s[b.key]; dup {
				d.errorf(b.keyAt, "%s is set twice in this %s (also at line %d)", b.key, where, prev.keyAt.GetToken().Position.Line)
				continue
			}
			key = b.key
		}
		s[key] = b
	}
}

func (d *doc) probes(e *entry, defs settings) []*Probe {
	if e.value == nil {
		d.errorf(e.keyAt, "probes: want a list of probes, got nothing")
		return nil
	}
	items, ok := d.sequence(e.value, "probes")
	if !ok {
		return nil
	}
	if len(items) == 0 {
		d.errorf(e.keyAt, "probes: the list is empty")
	}
	var out []*Probe
	names := map[string]int{}
	for i, item := range items {
		p, ok := d.probe(item, i, defs)
		if p == nil {
			continue
		}
		// A name is checked even when its probe has errors of its own: each is reported.
		if line, dup := names[p.Name]; dup && p.Name != "" {
			d.errorf(p.nameAt, "probe name %q is used twice (first at line %d)", p.Name, line)
			continue
		}
		names[p.Name] = p.Line
		if ok {
			out = append(out, p)
		}
	}
	for _, p := range out {
		p.nameAt = nil // the syntax tree is not kept past the parse
	}
	return out
}

// probe reads one probe; ok is false when it has errors (they are recorded), and p nil
// when it is not even a mapping.
func (d *doc) probe(n ast.Node, i int, defs settings) (p *Probe, ok bool) {
	before := len(d.errs)
	entries, isMap := d.mapping(n, fmt.Sprintf("probes[%d]", i))
	if !isMap || len(entries) == 0 {
		if isMap {
			d.errorf(n, "probes[%d]: empty probe", i)
		}
		return nil, false
	}
	// A value that could not be read (an alias to nothing) is missing from what follows:
	// checking the rest would only report its absence again.
	unreadable := len(d.errs) > before
	n = entries[0].keyAt // the probe is where its first key is
	p = &Probe{Line: n.GetToken().Position.Line}
	own := settings{}
	var nameAt, kindAt ast.Node = n, n
	for j := range entries {
		m := &entries[j]
		switch {
		case m.key == "name":
			nameAt, p.nameAt = m.value, valueOrKey(m)
			p.Name, _ = d.scalar(m.value, "name")
		case m.key == "kind":
			kindAt = valueOrKey(m)
			kname, _ := d.scalar(m.value, "kind")
			if k, ok := probe.Lookup(kname); ok {
				p.Kind = k
			} else if m.value == nil {
				d.errorf(m.keyAt, "kind: want one of %s, got nothing", kindNames())
			} else {
				d.errorf(m.value, "kind %q: want one of %s", kname, kindNames())
			}
		case slices.Contains(probeKeys(), m.key):
			d.setting(own, m, "probe")
		default:
			d.errorf(m.keyAt, "unknown key %q in a probe%s", m.key, suggest(m.key, probeKeys()))
		}
	}
	switch {
	case nameAt == n || p.Name == "":
		d.errorf(valueOr(nameAt, n), "probes[%d]: every probe needs a name", i)
	case !nameRe.MatchString(p.Name):
		d.errorf(nameAt, "probe name %q: want lower-case letters, digits and _ . -", p.Name)
	}
	if kindAt == n {
		d.errorf(n, "probe %q: no kind (want one of %s)", p.Name, kindNames())
	}
	if p.Kind != nil && !unreadable {
		d.build(p, merge(p.Kind, defs, own), own, n)
	}
	return p, len(d.errs) == before
}

func valueOr(a, b ast.Node) ast.Node {
	if a == nil {
		return b
	}
	return a
}

func kindNames() string {
	var names []string
	for _, k := range probe.Kinds() {
		names = append(names, k.Name)
	}
	return strings.Join(names, ", ")
}

// merge is a probe's settings over the defaults: the probe's key wins, a kind block's keys
// one by one. Defaults for other kinds, and count for a kind that sends one packet, do not
// apply to it.
func merge(k *probe.Kind, defs, own settings) settings {
	out := settings{}
	for key, e := range defs {
		kind, _, _ := strings.Cut(key, ".")
		if _, isKind := probe.Lookup(kind); isKind && kind != k.Name {
			continue
		}
		if key == "count" && !kindTakes(k, "count") || key == "resolver" && k.NameTarget {
			// dns asks its own servers: a probe that sets it itself is told so
			continue
		}
		out[key] = e
	}
	maps.Copy(out, own)
	return out
}

// kindTakes says whether k has the flag.
func kindTakes(k *probe.Kind, flag string) bool {
	return k.NewOptions != nil && kindFlags(k).Lookup(flag) != nil
}

func kindFlags(k *probe.Kind) *pflag.FlagSet {
	fs := pflag.NewFlagSet(k.Name, pflag.ContinueOnError)
	if k.NewOptions != nil {
		k.NewOptions().AddFlags(fs)
	}
	return fs
}

// build sets the probe's flags from its settings and checks them with the kind's own
// checks, as the command line does.
func (d *doc) build(p *Probe, s, own settings, at ast.Node) {
	var flags probe.Flags
	fs := pflag.NewFlagSet(p.Name, pflag.ContinueOnError)
	flags.AddFlags(fs)
	flags.Retries = DefaultRetries
	kopts := probe.KindOptions(nil)
	if p.Kind.NewOptions != nil {
		kopts = p.Kind.NewOptions()
		kopts.AddFlags(fs)
	}
	bySetting := map[string]*entry{} // flag name → the entry that set it
	var applied []string
	before := len(d.errs)
	for _, key := range slices.Sorted(maps.Keys(s)) {
		e := s[key]
		flag, ok := d.flagOf(p, key, e)
		if !ok {
			continue
		}
		if vals, ok := d.flagValues(fs, flag, key, e); ok {
			for _, v := range vals {
				if err := fs.Set(flag, v); err != nil {
					d.errorf(valueOrKey(e), "%s: want %s, got %q", key, typeWord(fs.Lookup(flag).Value.Type()), v)
					break
				}
				applied = append(applied, key+"="+v)
			}
			bySetting[flag] = e
		}
	}
	if len(d.errs) > before {
		// The checks of values would only restate one that was not taken; the targets'
		// form is still checked.
		d.targets(p, s, at, false)
		return
	}
	opts, err := flags.Options(p.Name)
	if err != nil {
		d.flagError(err, bySetting, at)
	}
	if kopts != nil {
		if kerr := kopts.Check(fs.Changed); kerr != nil {
			d.flagError(kerr, bySetting, at)
			err = kerr
		}
	}
	if err != nil {
		d.targets(p, s, at, false)
		return
	}
	opts.Kind = kopts
	p.Options = opts
	d.interval(p, s, own, at)
	d.targets(p, s, at, true)
	p.Labels = d.labels(s["labels"])
	p.Settings = settingsText(p, applied)
}

// flagOf names the flag a key sets: the shared keys by themselves, a kind block's keys
// with _ written -. Keys that are not flags (interval, labels, a kind block) give false.
func (d *doc) flagOf(p *Probe, key string, e *entry) (string, bool) {
	kind, sub, inBlock := strings.Cut(key, ".")
	if _, isKind := probe.Lookup(kind); isKind && kind != p.Kind.Name {
		if !inBlock { // once for the block, not for each of its keys
			d.errorf(e.keyAt, "%s options on probe %q of kind %s", kind, p.Name, p.Kind.Name)
		}
		return "", false
	}
	switch {
	case !inBlock && slices.Contains(ownKeys, key), !inBlock && kind == p.Kind.Name:
		if !inBlock && kind == p.Kind.Name && e.value == nil {
			d.errorf(e.keyAt, "%s: no options given", key)
		}
		return "", false
	case !inBlock && key == "count" && !kindTakes(p.Kind, "count"):
		d.errorf(e.keyAt, "count: kind %s sends one packet an attempt; count is for kinds that send several", p.Kind.Name)
		return "", false
	case !inBlock:
		return key, true
	}
	flag := strings.ReplaceAll(sub, "_", "-")
	if strings.Contains(sub, "-") || !kindTakes(p.Kind, flag) {
		var known []string
		kindFlags(p.Kind).VisitAll(func(f *pflag.Flag) { known = append(known, strings.ReplaceAll(f.Name, "-", "_")) })
		hint := suggest(sub, known)
		switch {
		case hint != "":
		case len(known) == 0:
			hint = " (it takes no options of its own)"
		default:
			hint = " (it has: " + strings.Join(known, ", ") + ")"
		}
		d.errorf(e.keyAt, "kind %s has no option %q%s", kind, sub, hint)
		return "", false
	}
	return flag, true
}

// flagValues are the values a key gives its flag: one, or each of a list for a flag that
// may be repeated.
func (d *doc) flagValues(fs *pflag.FlagSet, flag, key string, e *entry) ([]string, bool) {
	typ := fs.Lookup(flag).Value.Type()
	if seq, ok := e.value.(*ast.SequenceNode); ok {
		if !strings.HasSuffix(typ, "Array") && !strings.HasSuffix(typ, "Slice") {
			d.errorf(e.value, "%s: want %s, got a list", key, typeWord(typ))
			return nil, false
		}
		items, _ := d.sequence(seq, key)
		var vals []string
		for _, it := range items {
			v, ok := d.scalar(it, key)
			if !ok {
				return nil, false
			}
			vals = append(vals, v)
		}
		if len(vals) == 0 {
			d.errorf(e.value, "%s: the list is empty", key)
			return nil, false
		}
		return vals, true
	}
	if e.value == nil {
		d.errorf(e.keyAt, "%s: no value (want %s)", key, typeWord(typ))
		return nil, false
	}
	if !d.typed(e.value, key, typ) {
		return nil, false
	}
	v, ok := d.scalar(e.value, key)
	return []string{v}, ok
}

// typed says whether n has the YAML type a flag of type typ wants: a number for a number,
// true or false for a switch, not a string that reads as one ("3").
func (d *doc) typed(n ast.Node, key, typ string) bool {
	want := map[string]ast.NodeType{"int": ast.IntegerType, "uint32": ast.IntegerType, "bool": ast.BoolType}[typ]
	if want == ast.UnknownNodeType || n.Type() == want {
		return true
	}
	d.errorf(n, "%s: want %s, got %s", key, typeWord(typ), describe(n))
	return false
}

func typeWord(typ string) string {
	switch typ {
	case "duration":
		return "a duration such as 500ms or 3s"
	case "int":
		return "an integer"
	case "uint32":
		return "an integer from 0 to 4294967295 (0x10 is 16)"
	case "bool":
		return "true or false"
	case "stringArray", "stringSlice":
		return "a value or a list of values"
	}
	return "a " + typ
}

var flagRe = regexp.MustCompile(`--([a-z0-9][a-z0-9-]*)`)

// flagError places an error of the flags' checks at the key that set the flag it names
// first, and words the flags as the config's keys (--expect-closed is expect_closed).
func (d *doc) flagError(err error, bySetting map[string]*entry, at ast.Node) {
	msg := err.Error()
	pos := at
	if m := flagRe.FindStringSubmatch(msg); m != nil {
		if e, ok := bySetting[m[1]]; ok {
			pos = valueOrKey(e)
		}
	}
	msg = flagRe.ReplaceAllStringFunc(msg, func(f string) string { return strings.ReplaceAll(f[2:], "-", "_") })
	d.errorf(pos, "%s", msg)
}

// interval reads the probe's schedule, which must leave room for an attempt.
func (d *doc) interval(p *Probe, s, own settings, at ast.Node) {
	p.Interval = DefaultInterval
	e := s["interval"]
	if e != nil {
		v, ok := d.scalar(e.value, "interval")
		dur, err := time.ParseDuration(v)
		if !ok || err != nil || dur < 100*time.Millisecond {
			d.errorf(valueOrKey(e), "interval: want a duration of at least 100ms, got %s", describe(e.value))
			return
		}
		p.Interval = dur
	}
	budget := probe.AttemptBudget(p.Kind, p.Options)
	searched := p.Options.PMTU == probe.PMTUAlways // after every answer: part of each tick
	if searched {
		budget += probe.PMTUBudget
	}
	if budget <= p.Interval {
		return
	}
	// The error is where the probe says something of it: its own interval or timeout,
	// else what it inherits.
	pos := at
	for _, set := range []settings{own, s} {
		if e := set["interval"]; e != nil {
			pos = valueOrKey(e)
		} else if e := set["timeout"]; e != nil {
			pos = valueOrKey(e)
		} else {
			continue
		}
		break
	}
	if searched {
		d.errorf(pos, "an attempt and its path MTU search (pmtu: always) take up to %s, longer than the interval %s", budget, p.Interval)
		return
	}
	if budget == p.Options.Timeout {
		d.errorf(pos, "timeout %s is longer than the interval %s: an attempt must end before the next is due", budget, p.Interval)
		return
	}
	d.errorf(pos, "an attempt takes up to %s (timeout and the packets' intervals), longer than the interval %s", budget, p.Interval)
}

// targets reads the probe's targets; checked, also against its options.
func (d *doc) targets(p *Probe, s settings, at ast.Node, checked bool) {
	e := s["targets"]
	if e == nil || e.value == nil {
		d.errorf(valueOr(nodeOf(e), at), "probe %q has no targets", p.Name)
		return
	}
	items, ok := d.sequence(e.value, "targets")
	if !ok {
		return
	}
	if len(items) == 0 {
		d.errorf(e.value, "probe %q: targets: the list is empty", p.Name)
	}
	seen := map[string]bool{}
	for _, it := range items {
		raw, ok := d.scalar(it, "targets")
		if !ok {
			continue
		}
		t, err := p.Kind.ParseTarget(raw)
		if err == nil && checked {
			err = probe.CheckTarget(t, p.Options)
		}
		switch {
		case err != nil:
			d.flagError(err, nil, it)
		case seen[raw]:
			d.errorf(it, "target %q is listed twice", raw)
		default:
			seen[raw] = true
			p.Targets = append(p.Targets, t)
		}
	}
}

func nodeOf(e *entry) ast.Node {
	if e == nil {
		return nil
	}
	return e.keyAt
}

// labelRe: a label is a Prometheus label name and, upper-cased after REACHD_LABEL_, a
// journald field name (at most 64 characters).
var labelRe = regexp.MustCompile(`^[a-z][a-z0-9_]{0,31}$`)

// reservedLabels are the metrics' own labels and the ones a scrape adds, which a config
// label must not shadow.
var reservedLabels = []string{"probe", "kind", "target", "family", "interface", "dns_server", "reason", "le", "quantile", "job", "instance"}

func (d *doc) labels(e *entry) map[string]string {
	if e == nil {
		return nil
	}
	entries, _ := d.mapping(e.value, "labels")
	out := map[string]string{}
	for _, m := range entries {
		switch {
		case !labelRe.MatchString(m.key):
			d.errorf(m.keyAt, "label %q: want at most 32 lower-case letters, digits and _, starting with a letter", m.key)
		case slices.Contains(reservedLabels, m.key):
			d.errorf(m.keyAt, "label %q is one of reachd's own metric labels (%s)", m.key, strings.Join(reservedLabels, ", "))
		default:
			v, ok := d.scalar(m.value, "labels."+m.key)
			if !ok && m.value == nil {
				d.errorf(m.keyAt, "label %s: no value", m.key)
			}
			out[m.key] = v
		}
	}
	return out
}

// settingsText is how a probe probes each of its targets, for a reload: a target of a
// probe of the same name and text is probed the same way as before (its list of targets
// may change around it).
func settingsText(p *Probe, applied []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "kind=%s interval=%s", p.Kind.Name, p.Interval)
	for _, a := range applied {
		fmt.Fprintf(&b, " %s", a)
	}
	for _, k := range slices.Sorted(maps.Keys(p.Labels)) {
		fmt.Fprintf(&b, " label.%s=%s", k, p.Labels[k])
	}
	return b.String()
}
