package qos

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestLimitsJSON(t *testing.T) {
	l := Limits{BPS: 20 << 20, Burst: 1500 * time.Millisecond, ReservationIOPS: 500, Weight: 2}
	b, err := json.Marshal(l)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"bps":20971520,"reservation_iops":500,"weight":2,"burst_seconds":1.5}`
	if string(b) != want {
		t.Fatalf("Marshal = %s, want %s", b, want)
	}
	var back Limits
	if err := json.Unmarshal(b, &back); err != nil || back != l {
		t.Fatalf("round trip: %+v, %v; want %+v", back, err, l)
	}
	// Rules stored before burst_seconds carry burst in nanoseconds.
	var old Limits
	if err := json.Unmarshal([]byte(`{"bps":1024,"burst":100000000}`), &old); err != nil || old.Burst != 100*time.Millisecond || old.BPS != 1024 {
		t.Fatalf("old form: %+v, %v", old, err)
	}
	// A misspelt key is refused, not ignored.
	if err := json.Unmarshal([]byte(`{"iopz":5}`), &old); err == nil || !strings.Contains(err.Error(), "iopz") {
		t.Fatalf("unknown key: %v, want an error naming it", err)
	}
}

func TestQueueStatsJSON(t *testing.T) {
	st := QueueStats{Name: "rule-1", Limits: Limits{IOPS: 100}, AdmittedOps: 7, AdmittedBytes: 8192,
		ReservedOps: 2, ThrottledTime: 929337300 * time.Nanosecond, Depth: 1, InFlight: 3}
	st.Classes[Read] = ClassStats{Ops: 5, Bytes: 4096, Units: 5, Waited: 2 * time.Millisecond, InFlight: 1}
	st.Classes[Write] = ClassStats{Ops: 2, Bytes: 4096, Units: 2, Depth: 1, InFlight: 2}
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	var keys map[string]any
	if err := json.Unmarshal(b, &keys); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"name", "limits", "admitted_ops", "admitted_bytes", "reserved_ops", "throttled_seconds", "depth", "in_flight", "classes"} {
		if _, ok := keys[k]; !ok {
			t.Errorf("key %q missing from %s", k, b)
		}
	}
	if len(keys) != 9 {
		t.Errorf("%d keys, want 9: %s", len(keys), b)
	}
	if keys["throttled_seconds"] != 0.9293373 {
		t.Errorf("throttled_seconds = %v, want 0.9293373", keys["throttled_seconds"])
	}
	classes, _ := keys["classes"].(map[string]any)
	read, _ := classes["read"].(map[string]any)
	if read["waited_seconds"] != 0.002 || read["ops"] != 5.0 || classes["write"] == nil || classes["other"] == nil {
		t.Errorf("classes = %v", classes)
	}
	var back QueueStats
	if err := json.Unmarshal(b, &back); err != nil || !reflect.DeepEqual(back, st) {
		t.Fatalf("round trip:\n got %+v, %v\nwant %+v", back, err, st)
	}
}
