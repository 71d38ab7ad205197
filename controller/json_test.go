package controller

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"
)

// A time not yet known is left out of the JSON, not shown as year 1; a
// known one is kept.
func TestZeroTimesLeftOut(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	cases := []struct {
		zero, set any
		key       string
	}{
		{GatewayRegistration{ID: "gw1"}, GatewayRegistration{ID: "gw1", Registered: now}, `"registered"`},
		{GatewayStatus{}, GatewayStatus{LastReport: now}, `"last_report"`},
		{FollowerState{}, FollowerState{LastContact: now}, `"last_contact"`},
		{Status{}, Status{Round: now}, `"round"`},
	}
	for _, c := range cases {
		zero, err := json.Marshal(c.zero)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(zero, []byte(c.key)) || bytes.Contains(zero, []byte("0001-01-01")) {
			t.Errorf("%T with a zero time: %s", c.zero, zero)
		}
		set, err := json.Marshal(c.set)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(set, []byte(c.key+`:"2026-01-02T03:04:05Z"`)) {
			t.Errorf("%T with a time: %s", c.set, set)
		}
	}
}
