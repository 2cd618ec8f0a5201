package config

import (
	"bytes"
	"encoding"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/kmsmail/kms/policy"
)

// The decoder walks the parsed YAML node tree against the Config types
// instead of calling yaml.v3's Decode with KnownFields(true), for three
// reasons:
//   - errors name the full key ("relay.password"), where yaml.v3 says "field
//     password not found in type config.Relay" and "cannot unmarshal !!str";
//   - a per-domain policy override is merged onto the global policy key by
//     key, so it must be decoded after the whole global policy, onto a copy;
//   - yaml.v3's Node.Decode ignores KnownFields, so decoding the overrides
//     with it would let a misspelt key through silently.
//
// Leaves (strings, numbers, booleans, durations) keep YAML's own scalar
// rules: yaml.v3 resolves and decodes them.

var (
	durationType        = reflect.TypeFor[time.Duration]()
	textUnmarshalerType = reflect.TypeFor[encoding.TextUnmarshaler]()
)

// decoder holds the state of one walk.
type decoder struct {
	*problems
	// pending holds maps (policy.domains), decoded after everything else so
	// that their entries can start from values the rest of the file set.
	pending []pendingMap
	// bases gives the starting value of a map entry by the map's key path.
	bases map[string]func() reflect.Value
	// visits counts decoded values, to stop aliases from multiplying work.
	visits int
}

// maxVisits bounds the values one document may decode to. A real
// configuration has a few hundred; the bound is there for aliases, which
// could otherwise multiply work, e.g. thousands of overrides each naming a
// long list by alias.
const maxVisits = 1 << 18

type pendingMap struct {
	path string
	node *yaml.Node
	v    reflect.Value
}

// decodeFile parses data as one YAML document and decodes it onto c, which
// holds the defaults. Problems are recorded in p.
func decodeFile(p *problems, data []byte, c *Config) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if !errors.Is(err, io.EOF) {
			p.add("", 0, err, "not valid YAML: %v", err)
		}
		return // an empty file: every key keeps its default
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		p.add("", extra.Line, err, "holds more than one YAML document (a second \"---\"); keep one")
		return
	}
	d := &decoder{problems: p, bases: map[string]func() reflect.Value{
		// A domain's policy starts as a copy of the global policy; the
		// override then changes only the keys it names.
		"policy.domains": func() reflect.Value { return reflect.ValueOf(clonePolicy(c.Policy.Policy)) },
	}}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	d.value("", root, reflect.ValueOf(c).Elem())
	for i := 0; i < len(d.pending) && !d.full(); i++ {
		d.mapEntries(d.pending[i])
	}
}

// resolve follows aliases (*name) to the anchored node. The walk is driven by
// the Config types, which are finite, so even an alias cycle ends; the
// amount of work aliases can cause is bounded by maxVisits.
func resolve(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode && i < 100; i++ {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n == nil || (n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null")
}

// value decodes n onto v. A null (an empty value) keeps the default.
func (d *decoder) value(path string, n *yaml.Node, v reflect.Value) {
	n = resolve(n)
	if isNull(n) || d.full() {
		return
	}
	if d.visits++; d.visits > maxVisits {
		if d.visits == maxVisits+1 {
			d.add("", n.Line, nil, "holds, or expands through aliases to, more than %d values", maxVisits)
		}
		return
	}
	if n.Kind == yaml.AliasNode {
		d.add(path, n.Line, nil, "alias chain is too long")
		return
	}
	t := v.Type()
	switch {
	case t == durationType:
		d.fixedDuration(path, n, v)
	case reflect.PointerTo(t).Implements(textUnmarshalerType):
		s, ok := d.scalar(path, n, "a single value")
		if !ok {
			return
		}
		if err := v.Addr().Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(s)); err != nil {
			d.add(path, n.Line, err, "%v", err)
		}
	case t.Kind() == reflect.Struct:
		d.mapping(path, n, v)
	case t.Kind() == reflect.Slice:
		d.sequence(path, n, v)
	case t.Kind() == reflect.Map:
		if n.Kind != yaml.MappingNode {
			d.add(path, n.Line, nil, "expected a mapping of names to settings, got %s", describe(n))
			return
		}
		d.pending = append(d.pending, pendingMap{path: path, node: n, v: v})
	default:
		d.scalarValue(path, n, v)
	}
}

// scalarValue decodes a string, number or boolean.
func (d *decoder) scalarValue(path string, n *yaml.Node, v reflect.Value) {
	want := map[reflect.Kind]string{
		reflect.String: "a string", reflect.Bool: "true or false",
		reflect.Int: "a whole number", reflect.Int64: "a whole number",
		reflect.Float64: "a number",
	}[v.Kind()]
	if want == "" {
		// A Config field of a type this decoder does not know: a bug here.
		panic(fmt.Sprintf("config: decoder cannot handle %s at %s", v.Type(), path))
	}
	s, ok := d.scalar(path, n, want)
	if !ok {
		return
	}
	if v.Kind() == reflect.String {
		v.SetString(s)
		return
	}
	target := reflect.New(v.Type())
	if err := n.Decode(target.Interface()); err != nil {
		d.add(path, n.Line, nil, "%q is not %s", s, want)
		return
	}
	v.Set(target.Elem())
}

// fixedDuration decodes a time.Duration written as policy durations are
// ("90s", "5m", "5d"), without months: a timeout of "1mo" has no fixed length.
func (d *decoder) fixedDuration(path string, n *yaml.Node, v reflect.Value) {
	s, ok := d.scalar(path, n, "a duration such as 90s, 5m or 5d")
	if !ok {
		return
	}
	pd, err := policy.ParseDuration(s)
	if err != nil {
		d.add(path, n.Line, err, "%v", err)
		return
	}
	if pd.Months != 0 {
		d.add(path, n.Line, nil, "%q: months and years have no fixed length here; use s, m, h or d", s)
		return
	}
	v.SetInt(int64(pd.Fixed))
}

// scalar returns n's text, or records that a single value was expected.
func (d *decoder) scalar(path string, n *yaml.Node, want string) (string, bool) {
	if n.Kind != yaml.ScalarNode {
		d.add(path, n.Line, nil, "expected %s, got %s", want, describe(n))
		return "", false
	}
	return n.Value, true
}

// sequence decodes a list; it replaces the default list as a whole.
func (d *decoder) sequence(path string, n *yaml.Node, v reflect.Value) {
	if n.Kind != yaml.SequenceNode {
		d.add(path, n.Line, nil, "expected a list such as [a, b], got %s", describe(n))
		return
	}
	s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
	for i, item := range n.Content {
		ip := fmt.Sprintf("%s[%d]", path, i)
		d.lines[ip] = item.Line
		if isNull(resolve(item)) {
			d.add(ip, item.Line, nil, "list item is empty")
			continue
		}
		d.value(ip, item, s.Index(i))
	}
	v.Set(s)
}

// mapping decodes the keys of n onto the fields of struct v.
func (d *decoder) mapping(path string, n *yaml.Node, v reflect.Value) {
	fields, names := fieldsOf(v.Type())
	if n.Kind != yaml.MappingNode {
		d.add(path, n.Line, nil, "expected a mapping with the keys %s, got %s", strings.Join(names, ", "), describe(n))
		return
	}
	d.pairs(path, n, func(key string, kn, vn *yaml.Node) {
		idx, ok := fields[key]
		if !ok {
			d.unknown(path, key, kn.Line, names)
			return
		}
		d.value(joinKey(path, key), vn, v.FieldByIndex(idx))
	})
}

// mapEntries decodes a map whose every entry starts from its base value.
func (d *decoder) mapEntries(pm pendingMap) {
	t := pm.v.Type()
	m := reflect.MakeMapWithSize(t, len(pm.node.Content)/2)
	d.pairs(pm.path, pm.node, func(key string, _, vn *yaml.Node) {
		elem := reflect.New(t.Elem()).Elem()
		if base := d.bases[pm.path]; base != nil {
			elem.Set(base())
		}
		d.value(joinKey(pm.path, key), vn, elem)
		m.SetMapIndex(reflect.ValueOf(key).Convert(t.Key()), elem)
	})
	pm.v.Set(m)
}

// pairs calls fn for every key of mapping n, after checking that the key is
// a plain name written once, and records the key's line.
func (d *decoder) pairs(path string, n *yaml.Node, fn func(key string, kn, vn *yaml.Node)) {
	seen := make(map[string]int)
	for i := 0; i+1 < len(n.Content) && !d.full(); i += 2 {
		kn, vn := n.Content[i], n.Content[i+1]
		if kn.Kind == yaml.ScalarNode && kn.ShortTag() == "!!merge" {
			d.add(path, kn.Line, nil, "merge keys (<<) are not supported; write the keys, or use an alias (*name) for a whole value")
			continue
		}
		if kn.Kind != yaml.ScalarNode || kn.Value == "" {
			d.add(path, kn.Line, nil, "a key must be a plain name, got %s", describe(kn))
			continue
		}
		kp := joinKey(path, kn.Value)
		if first, dup := seen[kn.Value]; dup {
			d.add(kp, kn.Line, nil, "is set twice (first on line %d); keep one", first)
			continue
		}
		seen[kn.Value] = kn.Line
		d.lines[kp] = kn.Line
		fn(kn.Value, kn, vn)
	}
}

// unknown records an unknown key, with the known ones or, for a secret, the
// way secrets are given.
func (d *decoder) unknown(path, key string, line int, names []string) {
	kp := joinKey(path, key)
	if hint := secretHint(path, key); hint != "" {
		d.add(kp, line, nil, "unknown key; secrets never go in the configuration file: %s", hint)
		return
	}
	where := "at the top level"
	if path != "" {
		where = "in " + path
	}
	d.add(kp, line, nil, "unknown key; the keys %s are %s", where, strings.Join(names, ", "))
}

// secretHint tells where a secret written into the file belongs instead.
func secretHint(path, key string) string {
	k := strings.ToLower(key)
	if !strings.Contains(k, "password") && !strings.Contains(k, "passphrase") && !strings.Contains(k, "secret") {
		return ""
	}
	section := path
	if section == "" {
		// A top-level "relay_password" or "db_password" belongs to a section.
		section, _, _ = strings.Cut(k, "_")
	}
	switch section {
	case "relay", "smtp":
		return "use relay.password_file or " + EnvRelayPassword
	case "imap":
		return "use imap.password_file or " + EnvIMAPPassword
	case "ca":
		return "use ca.passphrase_file or " + EnvCAPassphrase
	case "store", "db", "database", "postgres":
		return "use store.password_file or " + EnvDBPassword
	}
	return "put it in a file named by a *_file key, or in an environment variable"
}

// fieldsOf maps the yaml names of t's fields, inline ones included, to their
// field index, and lists the names in declaration order for messages.
func fieldsOf(t reflect.Type) (map[string][]int, []string) {
	fields := make(map[string][]int)
	var names []string
	var walk func(t reflect.Type, prefix []int)
	walk = func(t reflect.Type, prefix []int) {
		for i := range t.NumField() {
			f := t.Field(i)
			if !f.IsExported() {
				continue
			}
			name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if name == "-" {
				continue
			}
			idx := append(append([]int(nil), prefix...), i)
			if opts == "inline" && f.Anonymous {
				walk(f.Type, idx)
				continue
			}
			if name == "" {
				name = strings.ToLower(f.Name)
			}
			fields[name] = idx
			names = append(names, name)
		}
	}
	walk(t, nil)
	return fields, names
}

// joinKey appends key to path. A key that is not a plain name (spaces,
// control characters) is quoted, so that an error message stays one line
// and shows exactly what the file holds.
func joinKey(path, key string) string {
	if strings.ContainsFunc(key, func(r rune) bool { return r <= ' ' || r == '"' || r >= 0x7f }) {
		key = strconv.Quote(key)
	}
	if path == "" {
		return key
	}
	return path + "." + key
}

// describe names the kind of a node for "expected X, got Y" messages,
// quoting a scalar's text.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return fmt.Sprintf("%q", n.Value)
	}
	return "an alias"
}
