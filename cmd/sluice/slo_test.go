package main

import (
	"strings"
	"testing"

	"github.com/sluice-storage/sluice/controller"
	"github.com/sluice-storage/sluice/policy"
)

func TestSLOsFromPolicy(t *testing.T) {
	reg := policy.NewRegistry()
	if err := reg.SetGroup("gold", []string{"acme", "globex"}); err != nil {
		t.Fatal(err)
	}
	if err := reg.SetGroup("mixed", []string{"acme", "globex/db"}); err != nil {
		t.Fatal(err)
	}
	compile := func(text string) policy.Rule {
		t.Helper()
		r, err := policy.Compile(text, reg)
		if err != nil {
			t.Fatalf("%s: %v", text, err)
		}
		return r
	}
	got, err := slosFromRule(compile("FOR TENANT gold DO SET bandwidth WITH read_min=30MB/s, write_max=1GiB/s, SET iops WITH write_min=500"))
	want := controller.SLO{Tenant: "gold", Min: controller.Rates{ReadBPS: 30e6, WriteIOPS: 500}, Max: controller.Rates{WriteBPS: 1 << 30}}
	if err != nil || len(got) != 1 || got[0] != want {
		t.Fatalf("got %+v, %v; want %+v", got, err, want)
	}
	got, err = slosFromRule(compile("FOR GROUP gold DO SET bandwidth WITH read_min=10MB/s"))
	if err != nil || len(got) != 2 || got[0].Tenant != "acme" || got[1].Tenant != "globex" || got[1].Min.ReadBPS != 10e6 {
		t.Fatalf("group: %+v, %v", got, err)
	}
	for text, says := range map[string]string{
		"FOR VOLUME acme/db DO SET bandwidth WITH read_min=1MB/s":              "per tenant",
		"FOR GROUP mixed DO SET bandwidth WITH read_min=1MB/s":                 "globex/db",
		"FOR TENANT acme DO SET bandwidth WITH min=1MB/s":                      "read_min and write_min",
		"FOR TENANT acme DO SET compression":                                   "not an SLO",
		"FOR TENANT acme WHEN read_iops > 5 DO SET bandwidth WITH read_min=1M": "no WHERE or WHEN",
	} {
		if _, err := slosFromRule(compile(text)); err == nil || !strings.Contains(err.Error(), says) {
			t.Errorf("%s: %v, want an error mentioning %q", text, err, says)
		}
	}
}
