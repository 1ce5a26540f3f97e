package config

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"
	"github.com/goccy/go-yaml/token"
)

// Error is one thing wrong with a config file, where it is.
type Error struct {
	File      string
	Line, Col int
	Msg       string
}

func (e Error) Error() string { return fmt.Sprintf("%s:%d:%d: %s", e.File, e.Line, e.Col, e.Msg) }

// Errors are every error of one file, in the order of their lines.
type Errors []Error

func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// doc is one file being read: its name, its anchors, and the errors found so far.
type doc struct {
	file    string
	anchors map[string]ast.Node
	errs    Errors
}

// maxFlowDepth bounds nested [ and { : the parser's time grows with the square of the
// depth, and no config nests more than a few.
const maxFlowDepth = 64

// parse reads YAML into its syntax tree; a syntax error is the only error then.
func (d *doc) parse(data []byte) ast.Node {
	if line, ok := flowDepthOK(data); !ok {
		d.errs = append(d.errs, Error{File: d.file, Line: line, Col: 1, Msg: fmt.Sprintf("[ and { nested deeper than %d", maxFlowDepth)})
		return nil
	}
	f, err := parser.ParseBytes(data, 0)
	if err != nil {
		var ye interface {
			GetToken() *token.Token
			GetMessage() string
		}
		if errors.As(err, &ye) && ye.GetToken() != nil {
			d.errorAtToken(ye.GetToken(), "%s", syntaxMessage(ye.GetMessage()))
		} else {
			d.errs = append(d.errs, Error{File: d.file, Line: 1, Col: 1, Msg: err.Error()})
		}
		return nil
	}
	if len(f.Docs) > 1 {
		d.errorf(f.Docs[1], "several YAML documents: a config is one")
		return nil
	}
	if len(f.Docs) == 0 || f.Docs[0].Body == nil {
		return nil
	}
	return f.Docs[0].Body
}

// flowDepthOK says whether data nests [ and { at most maxFlowDepth deep (a rough count,
// quotes and comments included, which only a contrived file could trip), and if not, on
// which line it goes deeper.
func flowDepthOK(data []byte) (line int, ok bool) {
	depth, line := 0, 1
	for _, c := range data {
		switch c {
		case '[', '{':
			if depth++; depth > maxFlowDepth {
				return line, false
			}
		case ']', '}':
			depth = max(0, depth-1)
		case '\n':
			line++
		}
	}
	return 0, true
}

// syntaxMessage words the parser's messages the way the rest of ours read.
func syntaxMessage(m string) string {
	if strings.HasPrefix(m, "mapping key ") && strings.Contains(m, " already defined at [") {
		// `mapping key "x" already defined at [3:3]`
		i := strings.Index(m, " already defined at [")
		pos := strings.TrimSuffix(m[i+len(" already defined at ["):], "]")
		line, _, _ := strings.Cut(pos, ":")
		return fmt.Sprintf("duplicate key %s (first at line %s)", strings.TrimPrefix(m[:i], "mapping key "), line)
	}
	return "YAML: " + m
}

func (d *doc) errorf(n ast.Node, format string, a ...any) {
	if n == nil {
		// A key without a value has no node: its callers name the key instead. Line 0
		// marks a caller that did not (FuzzParse finds them), without a panic.
		d.errs = append(d.errs, Error{File: d.file, Msg: fmt.Sprintf(format, a...)})
		return
	}
	d.errorAtToken(n.GetToken(), format, a...)
}

func (d *doc) errorAtToken(tk *token.Token, format string, a ...any) {
	line, col := 1, 1
	if tk != nil && tk.Position != nil {
		line, col = tk.Position.Line, tk.Position.Column
	}
	d.errs = append(d.errs, Error{File: d.file, Line: line, Col: col, Msg: fmt.Sprintf(format, a...)})
}

// sorted returns the errors in the order of their positions (stable for one position),
// each once: a default that is wrong is found again for each probe that inherits it.
func (d *doc) sorted() Errors {
	sort.SliceStable(d.errs, func(i, j int) bool {
		a, b := d.errs[i], d.errs[j]
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Col < b.Col
	})
	return slices.Compact(d.errs)
}

// resolve looks through anchors, aliases and tags to the node that holds the value.
func (d *doc) resolve(n ast.Node) ast.Node {
	for range 16 { // an alias chain longer than this is a loop
		switch x := n.(type) {
		case *ast.AnchorNode:
			if name, ok := x.Name.(*ast.StringNode); ok {
				d.anchors[name.Value] = x.Value
			}
			n = x.Value
		case *ast.AliasNode:
			name := x.Value.GetToken().Value
			target, ok := d.anchors[name]
			if !ok {
				d.errorf(x, "alias *%s names no anchor defined before it", name)
				return nil
			}
			n = target
		case *ast.TagNode:
			n = x.Value
		default:
			return n
		}
	}
	return nil
}

// entry is one key of a mapping and its value.
type entry struct {
	key   string
	keyAt ast.Node
	value ast.Node // resolved; nil for no value
}

// mapping returns the entries of a mapping in order, or nil and an error naming what if n
// is not one.
func (d *doc) mapping(n ast.Node, what string) ([]entry, bool) {
	n = d.resolve(n)
	var values []*ast.MappingValueNode
	switch x := n.(type) {
	case *ast.MappingNode:
		values = x.Values
	case *ast.MappingValueNode:
		values = []*ast.MappingValueNode{x}
	case nil:
		return nil, true
	default:
		d.errorf(n, "%s: want a mapping (key: value), got %s", what, describe(n))
		return nil, false
	}
	out := make([]entry, 0, len(values))
	for _, mv := range values {
		if _, ok := mv.Key.(*ast.MergeKeyNode); ok {
			d.errorf(mv.Key, "%s: merge keys (<<) are not supported; shared settings go under defaults", what)
			continue
		}
		k, ok := d.resolve(mv.Key).(*ast.StringNode)
		if !ok {
			d.errorf(mv.Key, "%s: keys are names, got %s", what, describe(mv.Key))
			continue
		}
		v := d.resolve(mv.Value)
		if _, null := v.(*ast.NullNode); null {
			v = nil
		}
		out = append(out, entry{key: k.Value, keyAt: mv.Key, value: v})
	}
	return out, true
}

// sequence returns the elements of a list, resolved.
func (d *doc) sequence(n ast.Node, what string) ([]ast.Node, bool) {
	s, ok := n.(*ast.SequenceNode)
	if !ok {
		d.errorf(n, "%s: want a list, got %s", what, describe(n))
		return nil, false
	}
	out := make([]ast.Node, 0, len(s.Values))
	for _, v := range s.Values {
		if r := d.resolve(v); r != nil {
			out = append(out, r)
		}
	}
	return out, true
}

// scalar returns the text of a scalar as written (0x10 stays 0x10, 3s stays 3s).
func (d *doc) scalar(n ast.Node, what string) (string, bool) {
	switch x := n.(type) {
	case *ast.StringNode:
		return x.Value, true
	case *ast.LiteralNode:
		return x.Value.Value, true
	case *ast.IntegerNode, *ast.FloatNode, *ast.BoolNode, *ast.InfinityNode, *ast.NanNode:
		return x.GetToken().Value, true
	case nil:
		return "", false
	}
	d.errorf(n, "%s: want one value, got %s", what, describe(n))
	return "", false
}

func describe(n ast.Node) string {
	switch n.(type) {
	case *ast.MappingNode, *ast.MappingValueNode:
		return "a mapping"
	case *ast.SequenceNode:
		return "a list"
	case *ast.NullNode, nil:
		return "nothing"
	}
	return fmt.Sprintf("%q", n.GetToken().Value)
}

// suggest names the known key closest to an unknown one, if one is close.
func suggest(key string, known []string) string {
	best, bestD := "", 3
	for _, k := range known {
		if dist := editDistance(key, k); dist < bestD {
			best, bestD = k, dist
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %s?)", best)
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}
