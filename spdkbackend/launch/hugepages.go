package launch

import (
	"cmp"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// DefaultHugePageDir is where the kernel reports its 2 MiB huge pages.
const DefaultHugePageDir = "/sys/kernel/mm/hugepages/hugepages-2048kB"

// Huge pages a target takes at start beyond -s, measured with SPDK 23.01
// on this project's test machine: DPDK maps the -s memory up front, then
// the subsystems allocate their pools from further pages. spdk_tgt's
// iSCSI subsystem alone wants ~250 pages (at -s 256 it held 382 pages in
// all, at -s 128 it could not start on 300); the vhost app ~120 (183 at
// -s 128). A target short of them does not exit: it spins in its
// reactor, or fails its subsystems' start ("create PDU data out pool
// failed").
const (
	extraPagesSPDKTgt = 260
	extraPagesOther   = 130
)

// pagesNeeded is the 2 MiB pages prog needs free to start with -s memMiB.
func pagesNeeded(prog string, memMiB int) int {
	extra := extraPagesOther
	if filepath.Base(prog) == "spdk_tgt" {
		extra = extraPagesSPDKTgt
	}
	return (memMiB+1)/2 + extra
}

// checkHugePages refuses to start prog when fewer 2 MiB huge pages are
// free than it takes at start: the operator gets a number to reserve, not
// a target spinning at start-up until the init timeout.
func checkHugePages(prog string, opt Options) error {
	dir := cmp.Or(opt.HugePageDir, DefaultHugePageDir)
	free, err := readCount(filepath.Join(dir, "free_hugepages"))
	if err != nil {
		return fmt.Errorf("spdk launch: huge pages: %w", err)
	}
	resv, err := readCount(filepath.Join(dir, "resv_hugepages"))
	if err != nil {
		return fmt.Errorf("spdk launch: huge pages: %w", err)
	}
	mem := cmp.Or(opt.MemMiB, 256)
	need := pagesNeeded(prog, mem)
	if avail := free - resv; avail < need {
		return fmt.Errorf("spdk launch: %s with -s %d MiB takes about %d free 2 MiB huge pages at start "+
			"(its memory and its subsystems' pools), and %d are free: reserve more "+
			"(/proc/sys/vm/nr_hugepages) or lower --spdk-mem", filepath.Base(prog), mem, need, max(avail, 0))
	}
	return nil
}

func readCount(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}
