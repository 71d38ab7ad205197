package policy

import (
	"encoding/json"
	"fmt"
	"path"
	"regexp"
	"sort"
	"strings"

	"github.com/sluice-storage/sluice/gateway/filter"
)

// Registry holds the keywords policies may use beyond the grammar's own:
// filters (with their parameter schemas), metrics, groups and file-type
// sets. It is a plain value: the gateway owns one, persists it as JSON and
// extends it at run time (`sluice registry ...`). Names are case-insensitive
// and stored in lower case. A Registry is not safe for concurrent mutation;
// the owner serialises changes (Clone, change, swap).
//
// Rules are compiled against a registry: a group's members and a file-type
// set's globs are copied into the rule. After changing a group or a file
// type, recompile the rules (their Text) to apply the change.
type Registry struct {
	Filters   map[string]FilterDef `json:"filters"`
	Metrics   map[string]MetricDef `json:"metrics"`
	Groups    map[string][]string  `json:"groups"`     // name → "tenant" or "tenant/volume"
	FileTypes map[string][]string  `json:"file_types"` // name → globs
}

// FilterDef is a filter as the policy language knows it.
type FilterDef struct {
	Kind        filter.Kind        `json:"kind"`
	Description string             `json:"description,omitempty"`
	Params      []filter.ParamSpec `json:"params"`
	Builtin     bool               `json:"builtin,omitempty"` // from package filter; cannot be changed or removed
}

// MetricDef is a workload metric WHEN can test. Type is filter.TypeIOPS
// (operations per second: 5000, 5K) or filter.TypeBandwidth (bytes per
// second: 100MB/s), or TypeInt/TypeSize; it decides how thresholds parse.
// The gateway evaluates a rule's metrics for the rule's target (the volume
// for a volume policy, the tenant's sum for a tenant policy, the members'
// sum for a group).
type MetricDef struct {
	Type        filter.ParamType `json:"type"`
	Description string           `json:"description,omitempty"`
	Builtin     bool             `json:"builtin,omitempty"`
}

// builtinMetrics is the immutable table of metrics every gateway reports.
var builtinMetrics = [...]struct {
	name string
	def  MetricDef
}{
	{"read_iops", MetricDef{Type: filter.TypeIOPS, Description: "read operations per second"}},
	{"write_iops", MetricDef{Type: filter.TypeIOPS, Description: "write operations per second"}},
	{"read_bw", MetricDef{Type: filter.TypeBandwidth, Description: "bytes read per second"}},
	{"write_bw", MetricDef{Type: filter.TypeBandwidth, Description: "bytes written per second"}},
}

// defaultFileTypes is the immutable table of file-type sets a new registry
// starts with. Globs without '/' match a file's base name, case-insensitive.
var defaultFileTypes = [...]struct {
	name  string
	globs []string
}{
	{"docs", []string{"*.pdf", "*.doc", "*.docx", "*.odt", "*.rtf", "*.txt", "*.md", "*.xls", "*.xlsx", "*.ods", "*.ppt", "*.pptx", "*.odp", "*.csv"}},
	{"images", []string{"*.jpg", "*.jpeg", "*.png", "*.gif", "*.bmp", "*.tif", "*.tiff", "*.webp", "*.heic"}},
	{"media", []string{"*.mp3", "*.flac", "*.ogg", "*.wav", "*.aac", "*.mp4", "*.mkv", "*.avi", "*.mov", "*.webm"}},
	{"archives", []string{"*.zip", "*.gz", "*.tgz", "*.bz2", "*.xz", "*.zst", "*.7z", "*.rar", "*.tar", "*.lz4"}},
	{"logs", []string{"*.log", "*.log.*"}},
}

// NewRegistry returns a registry with the built-in filters and metrics and
// the default file-type sets (docs, images, media, archives, logs).
func NewRegistry() *Registry {
	r := &Registry{
		Filters:   map[string]FilterDef{},
		Metrics:   map[string]MetricDef{},
		Groups:    map[string][]string{},
		FileTypes: map[string][]string{},
	}
	r.ensureBuiltins()
	for _, ft := range defaultFileTypes {
		r.FileTypes[ft.name] = append([]string(nil), ft.globs...)
	}
	return r
}

// LoadRegistry decodes a registry the gateway persisted, checks every entry
// and refreshes the built-in filters and metrics from this binary (a newer
// binary may have added or changed them).
func LoadRegistry(data []byte) (*Registry, error) {
	r := &Registry{}
	if err := json.Unmarshal(data, r); err != nil {
		return nil, fmt.Errorf("registry: %v: %w", err, ErrRegistry)
	}
	old := r
	r = &Registry{Filters: map[string]FilterDef{}, Metrics: map[string]MetricDef{}, Groups: map[string][]string{}, FileTypes: map[string][]string{}}
	r.ensureBuiltins()
	for n, d := range old.Filters {
		if d.Builtin {
			continue
		}
		if err := r.AddFilter(n, d); err != nil {
			return nil, err
		}
	}
	for n, d := range old.Metrics {
		if d.Builtin {
			continue
		}
		if err := r.AddMetric(n, d); err != nil {
			return nil, err
		}
	}
	for n, m := range old.Groups {
		if err := r.SetGroup(n, m); err != nil {
			return nil, err
		}
	}
	for n, g := range old.FileTypes {
		if err := r.SetFileType(n, g); err != nil {
			return nil, err
		}
	}
	return r, nil
}

func (r *Registry) ensureBuiltins() {
	for _, s := range filter.Builtins() {
		r.Filters[s.Name] = FilterDef{Kind: s.Kind, Description: s.Description, Params: s.Params, Builtin: true}
	}
	for _, m := range builtinMetrics {
		d := m.def
		d.Builtin = true
		r.Metrics[m.name] = d
	}
}

// Clone returns a deep copy.
func (r *Registry) Clone() *Registry {
	c := &Registry{
		Filters:   make(map[string]FilterDef, len(r.Filters)),
		Metrics:   make(map[string]MetricDef, len(r.Metrics)),
		Groups:    make(map[string][]string, len(r.Groups)),
		FileTypes: make(map[string][]string, len(r.FileTypes)),
	}
	for n, d := range r.Filters {
		ps := make([]filter.ParamSpec, len(d.Params))
		for i, p := range d.Params {
			p.Allowed = append([]string(nil), p.Allowed...)
			ps[i] = p
		}
		d.Params = ps
		c.Filters[n] = d
	}
	for n, d := range r.Metrics {
		c.Metrics[n] = d
	}
	for n, m := range r.Groups {
		c.Groups[n] = append([]string(nil), m...)
	}
	for n, g := range r.FileTypes {
		c.FileTypes[n] = append([]string(nil), g...)
	}
	return c
}

// identPattern: filter, metric, parameter and file-type names must scan as
// one identifier.
var identPattern = regexp.MustCompile(`^[a-z_][a-z0-9_.-]{0,62}$`)

func checkIdent(what, name string) (string, error) {
	n := strings.ToLower(name)
	if !identPattern.MatchString(n) {
		return "", fmt.Errorf("%s name %q: use 1-63 letters, digits, '_', '.' or '-', starting with a letter or '_': %w", what, name, ErrRegistry)
	}
	if keyword(n) != "" {
		return "", fmt.Errorf("%s name %q is a keyword: %w", what, name, ErrRegistry)
	}
	return n, nil
}

// AddFilter registers a filter (for example one deployed at run time) or
// replaces a registered one; built-ins cannot be replaced.
func (r *Registry) AddFilter(name string, d FilterDef) error {
	n, err := checkIdent("filter", name)
	if err != nil {
		return err
	}
	if old, ok := r.Filters[n]; ok && old.Builtin {
		return fmt.Errorf("filter %s is built in: %w", n, ErrRegistry)
	}
	if d.Kind != filter.Transform && d.Kind != filter.Control {
		return fmt.Errorf("filter %s: kind must be transform or control: %w", n, ErrRegistry)
	}
	seen := map[string]bool{}
	for _, p := range d.Params {
		pn, err := checkIdent("parameter", p.Name)
		if err != nil {
			return fmt.Errorf("filter %s: %w", n, err)
		}
		if seen[pn] {
			return fmt.Errorf("filter %s: parameter %s twice: %w", n, pn, ErrRegistry)
		}
		seen[pn] = true
		if _, err := p.Type.MarshalText(); err != nil {
			return fmt.Errorf("filter %s: parameter %s: %v: %w", n, pn, err, ErrRegistry)
		}
		if p.Type == filter.TypeEnum && len(p.Allowed) == 0 {
			return fmt.Errorf("filter %s: enum parameter %s lists no values: %w", n, pn, ErrRegistry)
		}
		if p.Default != "" {
			if _, err := p.Parse(p.Default); err != nil {
				return fmt.Errorf("filter %s: default: %v: %w", n, err, ErrRegistry)
			}
		}
	}
	d.Builtin = false
	r.Filters[n] = d
	return nil
}

// AddMetric registers a metric or replaces a registered one; built-ins
// cannot be replaced.
func (r *Registry) AddMetric(name string, d MetricDef) error {
	n, err := checkIdent("metric", name)
	if err != nil {
		return err
	}
	if old, ok := r.Metrics[n]; ok && old.Builtin {
		return fmt.Errorf("metric %s is built in: %w", n, ErrRegistry)
	}
	if !d.Type.Numeric() {
		return fmt.Errorf("metric %s: type must be iops, bandwidth, int or size: %w", n, ErrRegistry)
	}
	d.Builtin = false
	r.Metrics[n] = d
	return nil
}

// SetGroup defines or replaces a group: members are tenants ("acme") or
// volumes ("acme/db").
func (r *Registry) SetGroup(name string, members []string) error {
	n := strings.ToLower(name)
	if !namePattern.MatchString(n) {
		return fmt.Errorf("group name %q: %s: %w", name, nameRule, ErrRegistry)
	}
	seen := map[string]bool{}
	var out []string
	for _, m := range members {
		t, v, isVol := strings.Cut(m, "/")
		if !namePattern.MatchString(t) || (isVol && !namePattern.MatchString(v)) {
			return fmt.Errorf("group %s: member %q: want TENANT or TENANT/VOLUME (%s): %w", n, m, nameRule, ErrRegistry)
		}
		if !seen[m] {
			seen[m] = true
			out = append(out, m)
		}
	}
	sort.Strings(out)
	r.Groups[n] = out
	return nil
}

// SetFileType defines or replaces a file-type set: globs in path.Match
// syntax; one without '/' matches the base name, one with '/' the whole path
// within the volume; matching is case-insensitive.
func (r *Registry) SetFileType(name string, globs []string) error {
	n, err := checkIdent("file type", name)
	if err != nil {
		return err
	}
	if len(globs) == 0 {
		return fmt.Errorf("file type %s: no globs: %w", n, ErrRegistry)
	}
	out := make([]string, 0, len(globs))
	for _, g := range globs {
		g = strings.ToLower(strings.TrimPrefix(g, "/"))
		if _, err := path.Match(g, ""); err != nil || g == "" || len(g) > maxGlob {
			return fmt.Errorf("file type %s: glob %q is malformed: %w", n, g, ErrRegistry)
		}
		out = append(out, g)
	}
	r.FileTypes[n] = out
	return nil
}

// Remove deletes an entry: kind is "filter", "metric", "group" or
// "file_type". Built-in filters and metrics cannot be removed.
func (r *Registry) Remove(kind, name string) error {
	n := strings.ToLower(name)
	var ok, builtin bool
	switch kind {
	case "filter":
		var d FilterDef
		d, ok = r.Filters[n]
		builtin = d.Builtin
		if ok && !builtin {
			delete(r.Filters, n)
		}
	case "metric":
		var d MetricDef
		d, ok = r.Metrics[n]
		builtin = d.Builtin
		if ok && !builtin {
			delete(r.Metrics, n)
		}
	case "group":
		_, ok = r.Groups[n]
		delete(r.Groups, n)
	case "file_type":
		_, ok = r.FileTypes[n]
		delete(r.FileTypes, n)
	default:
		return fmt.Errorf("registry kind %q: want filter, metric, group or file_type: %w", kind, ErrRegistry)
	}
	if !ok {
		return fmt.Errorf("%s %s is not registered: %w", kind, n, ErrRegistry)
	}
	if builtin {
		return fmt.Errorf("%s %s is built in: %w", kind, n, ErrRegistry)
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
