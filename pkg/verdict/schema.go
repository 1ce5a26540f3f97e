package verdict

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"time"
)

// Schema is the verdict schema as docs/verdict.md states it in its tables. Tests validate
// real output against it, so the document and the code cannot drift apart unnoticed.
type Schema struct {
	Fields    map[string]FieldDoc // by dotted path; array elements as "tries[].n"
	Reasons   map[Reason][]Layer
	Retried   map[Reason]bool
	Examples  map[Reason]string // the example JSON line under "### `reason`"
	fieldList []string
}

// FieldDoc is one row of the field table.
type FieldDoc struct {
	Types    []string
	Required bool
}

var (
	rowRe     = regexp.MustCompile("^\\| `([^`]+)` \\| ([^|]+) \\| ([^|]+) \\|")
	headingRe = regexp.MustCompile("^### `([a-z0-9_]+)`")
)

// ParseSchema reads the field and reason tables and the examples of docs/verdict.md.
func ParseSchema(md []byte) (*Schema, error) {
	s := &Schema{Fields: map[string]FieldDoc{}, Reasons: map[Reason][]Layer{}, Retried: map[Reason]bool{}, Examples: map[Reason]string{}}
	section, example := "", Reason("")
	inCode := false
	for i, line := range strings.Split(string(md), "\n") {
		switch {
		case strings.HasPrefix(line, "## "):
			section = strings.TrimSpace(strings.TrimPrefix(line, "## "))
			continue
		case strings.HasPrefix(line, "```"):
			inCode = !inCode
			continue
		}
		if inCode {
			if section == "Examples" && example != "" && strings.TrimSpace(line) != "" {
				s.Examples[example] = line
			}
			continue
		}
		if m := headingRe.FindStringSubmatch(line); m != nil {
			example = Reason(m[1])
			continue
		}
		m := rowRe.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		name, c2, c3 := m[1], strings.TrimSpace(m[2]), strings.TrimSpace(m[3])
		switch section {
		case "Fields":
			var types []string
			for _, t := range strings.Split(c2, " or ") {
				types = append(types, strings.TrimSpace(t))
			}
			if c3 != "yes" && c3 != "no" {
				return nil, fmt.Errorf("verdict.md line %d: required column %q, want yes or no", i+1, c3)
			}
			s.Fields[name] = FieldDoc{Types: types, Required: c3 == "yes"}
			s.fieldList = append(s.fieldList, name)
		case "Reasons":
			var ls []Layer
			for _, l := range strings.Split(c2, ",") {
				ls = append(ls, Layer(strings.TrimSpace(l)))
			}
			s.Reasons[Reason(name)] = ls
			s.Retried[Reason(name)] = c3 == "yes"
		}
	}
	if len(s.Fields) == 0 || len(s.Reasons) == 0 {
		return nil, errors.New("verdict.md: no field or reason table found")
	}
	return s, nil
}

var enumValues = map[string][]string{
	"kind":          {"tcp", "icmp", "udp", "dns", "http", "tls", "line"},
	"family":        {"ipv4", "ipv6", ""},
	"timing_source": {SourceWire, SourceKernel, SourceUserspace},
}

// Validate checks one JSON verdict against the schema: every field documented with its
// type, every required field present, the reason known, the layer one of the reason's, ok
// consistent with the reason, and the time in RFC 3339 with microseconds.
func (s *Schema) Validate(line []byte) error {
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.UseNumber()
	var obj map[string]any
	if err := dec.Decode(&obj); err != nil {
		return fmt.Errorf("not a JSON object: %w", err)
	}
	var errs []string
	s.walk("", obj, &errs)
	reason, _ := obj["reason"].(string)
	layer, _ := obj["layer"].(string)
	if layers, ok := s.Reasons[Reason(reason)]; !ok {
		errs = append(errs, fmt.Sprintf("reason %q is not in the reason table", reason))
	} else if !containsLayer(layers, Layer(layer)) {
		errs = append(errs, fmt.Sprintf("layer %q is not one of reason %s's layers %v", layer, reason, layers))
	}
	if okv, _ := obj["ok"].(bool); okv != (reason == string(OK)) {
		errs = append(errs, fmt.Sprintf("ok=%v disagrees with reason %q", okv, reason))
	}
	if ts, _ := obj["time"].(string); !validTime(ts) {
		errs = append(errs, fmt.Sprintf("time %q is not RFC 3339 with microseconds", ts))
	}
	for f, vals := range enumValues {
		if v, ok := obj[f].(string); ok && !containsString(vals, v) {
			errs = append(errs, fmt.Sprintf("%s %q is not one of %q", f, v, vals))
		}
	}
	if tries, ok := obj["tries"].([]any); ok {
		for _, t := range tries {
			if m, ok := t.(map[string]any); ok {
				if r, _ := m["reason"].(string); !Reason(r).Known() || s.Reasons[Reason(r)] == nil {
					errs = append(errs, fmt.Sprintf("tries[].reason %q is not in the reason table", r))
				}
			}
		}
	}
	if len(errs) > 0 {
		sort.Strings(errs)
		return errors.New(strings.Join(errs, "; "))
	}
	return nil
}

func validTime(s string) bool {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return false
	}
	return t.Format(timeLayout) == s
}

func (s *Schema) walk(prefix string, obj map[string]any, errs *[]string) {
	for k, v := range obj {
		path := k
		if prefix != "" {
			path = prefix + "." + k
		}
		doc, ok := s.Fields[path]
		if !ok && prefix != "" { // a map of the user's keys: "labels.*"
			doc, ok = s.Fields[prefix+".*"]
		}
		if !ok {
			*errs = append(*errs, fmt.Sprintf("field %s is not documented", path))
			continue
		}
		if t := jsonType(v); !containsString(doc.Types, t) {
			*errs = append(*errs, fmt.Sprintf("field %s is %s, documented as %s", path, t, strings.Join(doc.Types, " or ")))
			continue
		}
		switch x := v.(type) {
		case map[string]any:
			s.walk(path, x, errs)
		case []any:
			for _, e := range x {
				if m, ok := e.(map[string]any); ok {
					s.walk(path+"[]", m, errs)
				}
			}
		}
	}
	// Required fields of this object (top level, or inside a present parent).
	for _, f := range s.fieldList {
		parent, name := splitPath(f)
		if parent != prefix || !s.Fields[f].Required {
			continue
		}
		if _, ok := obj[name]; !ok {
			*errs = append(*errs, fmt.Sprintf("required field %s is missing", f))
		}
	}
}

func splitPath(p string) (parent, name string) {
	if i := strings.LastIndex(p, "."); i >= 0 {
		return p[:i], p[i+1:]
	}
	return "", p
}

func jsonType(v any) string {
	switch x := v.(type) {
	case nil:
		return "null"
	case bool:
		return "bool"
	case string:
		return "string"
	case json.Number:
		if _, err := x.Int64(); err == nil {
			return "integer"
		}
		return "number"
	case map[string]any:
		return "object"
	case []any:
		return "array"
	}
	return fmt.Sprintf("%T", v)
}

// containsString also lets an integer satisfy "number", as JSON does.
func containsString(list []string, v string) bool {
	for _, x := range list {
		if x == v || (x == "number" && v == "integer") {
			return true
		}
	}
	return false
}

func containsLayer(list []Layer, l Layer) bool {
	for _, x := range list {
		if x == l {
			return true
		}
	}
	return false
}
