package main

import (
	"encoding/json"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/controller"
	"github.com/sluice-storage/sluice/gateway"
	"github.com/sluice-storage/sluice/gateway/admin"
	"github.com/sluice-storage/sluice/gateway/filter"
	"github.com/sluice-storage/sluice/policy"
)

var snakeCase = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)

// TestJSONStyle checks the types that --json prints against docs/CLI.md:
// every field has a snake_case key, and no duration goes out as a bare
// time.Duration (nanoseconds). Types with their own MarshalJSON are tested
// in their packages (qos.Limits, qos.QueueStats).
func TestJSONStyle(t *testing.T) {
	for _, v := range []any{
		admin.Volume{}, volumeChange{}, admin.Stats{}, admin.MountInfo{}, admin.Attachment{},
		admin.VirtioExport{}, admin.ControllerStatus{}, gateway.QoSRuleStats{}, gateway.PolicyStatus{},
		gateway.FsckReport{}, gateway.ScrubReport{}, gateway.VolumeFilters{}, []filter.Spec{},
		policy.Registry{}, controller.Status{}, controller.SLO{},
	} {
		checkJSONType(t, reflect.TypeOf(v), reflect.TypeOf(v).String(), map[reflect.Type]bool{})
	}
}

var (
	marshaler = reflect.TypeOf((*json.Marshaler)(nil)).Elem()
	duration  = reflect.TypeOf(time.Duration(0))
)

func checkJSONType(t *testing.T, typ reflect.Type, path string, seen map[reflect.Type]bool) {
	t.Helper()
	if seen[typ] || typ.Implements(marshaler) || reflect.PointerTo(typ).Implements(marshaler) {
		return
	}
	seen[typ] = true
	switch typ.Kind() {
	case reflect.Pointer, reflect.Slice, reflect.Array, reflect.Map:
		checkJSONType(t, typ.Elem(), path, seen)
		return
	case reflect.Struct:
	default:
		return
	}
	for i := 0; i < typ.NumField(); i++ {
		f := typ.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		switch {
		case !f.IsExported() || tag == "-":
			continue
		case f.Anonymous && tag == "":
			checkJSONType(t, f.Type, path, seen)
			continue
		case tag == "":
			t.Errorf("%s.%s: no JSON tag, so its key is the Go name", path, f.Name)
		case !snakeCase.MatchString(tag):
			t.Errorf("%s.%s: JSON key %q is not snake_case", path, f.Name, tag)
		case f.Type == duration || strings.HasSuffix(tag, "_ns"):
			t.Errorf("%s.%s: a time.Duration is nanoseconds in JSON; use seconds in a _seconds key", path, f.Name)
		}
		checkJSONType(t, f.Type, path+"."+f.Name, seen)
	}
}
