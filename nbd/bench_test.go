package nbd

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/gateway"
	"github.com/sluice-storage/sluice/internal/testtool"
)

// flatExport is a lock-free in-memory export for benchmarks: the data path
// is a copy, so the numbers measure the server.
type flatExport struct {
	data  []byte
	delay time.Duration // per Do call, to model a slow device
}

func (f *flatExport) Size() int64 { return int64(len(f.data)) }
func (f *flatExport) Do(ctx context.Context, req *gateway.Request) error {
	if f.delay > 0 {
		time.Sleep(f.delay)
	}
	switch req.Op {
	case gateway.OpRead:
		copy(req.Buf, f.data[req.Offset:])
	case gateway.OpWrite:
		copy(f.data[req.Offset:], req.Buf)
	}
	return nil
}
func (f *flatExport) Extents(ctx context.Context, off, length int64) ([]gateway.Extent, error) {
	return []gateway.Extent{{Offset: off, Length: length}}, nil
}

// TestFioBench runs fio's nbd engine against the server. It only runs with
// NBD_BENCH=1 (it takes about a minute) and logs IOPS and bandwidth.
// NBD_BENCH_RUNTIME (seconds per job), NBD_BENCH_JOBS ("randread/4k/32,...")
// and NBD_BENCH_DELAY (a Go duration added to every export call) tune it.
func TestFioBench(t *testing.T) {
	if os.Getenv("NBD_BENCH") != "1" {
		t.Skip("set NBD_BENCH=1 to run the fio benchmark")
	}
	testtool.Need(t, "fio")
	exp := &flatExport{data: make([]byte, 1<<30)}
	for i := range len(exp.data) / 4096 {
		exp.data[i*4096] = byte(i) // fault every page in, like fio's fill pass
	}
	if d := os.Getenv("NBD_BENCH_DELAY"); d != "" {
		var err error
		if exp.delay, err = time.ParseDuration(d); err != nil {
			t.Fatal(err)
		}
	}
	_, sock := startServer(t, memExports{testName: exp}, Options{})
	u := uri(sock, testName)
	runtime := os.Getenv("NBD_BENCH_RUNTIME")
	if runtime == "" {
		runtime = "10"
	}
	jobs := []struct{ rw, bs, qd string }{
		{"write", "1m", "8"},
		{"randread", "4k", "1"},
		{"randread", "4k", "32"},
		{"randwrite", "4k", "1"},
		{"randwrite", "4k", "32"},
		{"read", "1m", "8"},
		{"write", "1m", "8"},
	}
	if j := os.Getenv("NBD_BENCH_JOBS"); j != "" {
		jobs = jobs[:0]
		for _, s := range strings.Split(j, ",") {
			f := strings.Split(s, "/")
			jobs = append(jobs, struct{ rw, bs, qd string }{f[0], f[1], f[2]})
		}
	}
	for _, j := range jobs {
		out, err := exec.Command("fio", "--name=T", "--ioengine=nbd", "--uri="+u, "--size=1g",
			"--numjobs=1", "--thread", "--output-format=json", "--time_based", "--runtime="+runtime,
			"--rw="+j.rw, "--bs="+j.bs, "--iodepth="+j.qd).CombinedOutput()
		if err != nil {
			t.Fatalf("fio: %v\n%s", err, out)
		}
		s := string(out)
		if i := strings.Index(s, "{"); i >= 0 {
			s = s[i:]
		}
		var res struct {
			Jobs []struct {
				Read, Write struct {
					IOPS float64 `json:"iops"`
					BW   float64 `json:"bw_bytes"`
				}
			}
		}
		if err := json.Unmarshal([]byte(s), &res); err != nil {
			t.Fatalf("fio json: %v\n%s", err, out)
		}
		r := res.Jobs[0]
		t.Logf("%-9s %-3s QD%-2s  read %8.0f IOPS %7.0f MB/s  write %8.0f IOPS %7.0f MB/s",
			j.rw, j.bs, j.qd, r.Read.IOPS, r.Read.BW/1e6, r.Write.IOPS, r.Write.BW/1e6)
	}
}

// BenchmarkRead4K pipelines 4 KiB reads (QD32) over a unix socket from a
// minimal client; allocs/op covers client and server.
func BenchmarkRead4K(b *testing.B) {
	for _, structured := range []bool{false, true} {
		b.Run(map[bool]string{false: "simple", true: "structured"}[structured], func(b *testing.B) {
			exp := &flatExport{data: make([]byte, 64<<20)}
			_, sock := startServer(b, memExports{testName: exp}, Options{})
			rc := dial(b, sock)
			rc.connect(testName, structured)
			const qd = 32
			req := make([]byte, 0, qd*requestHeaderLen)
			for i := range qd {
				req = append(req, requestBytes(0, cmdRead, uint64(i), uint64(i)*4096, 4096, nil)...)
			}
			replyLen := simpleReplyLen + 4096
			if structured {
				replyLen = structuredHeaderLen + 8 + 4096
			}
			buf := make([]byte, qd*replyLen)
			b.SetBytes(4096)
			b.ReportAllocs()
			b.ResetTimer()
			for n := 0; n < b.N; n += qd {
				if _, err := rc.c.Write(req); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(rc.r, buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkWrite4K pipelines 4 KiB writes (QD32), like BenchmarkRead4K.
func BenchmarkWrite4K(b *testing.B) {
	exp := &flatExport{data: make([]byte, 64<<20)}
	_, sock := startServer(b, memExports{testName: exp}, Options{})
	rc := dial(b, sock)
	rc.connect(testName, false)
	const qd = 32
	var req []byte
	for i := range qd {
		req = append(req, requestBytes(0, cmdWrite, uint64(i), uint64(i)*4096, 4096, make([]byte, 4096))...)
	}
	buf := make([]byte, qd*simpleReplyLen)
	b.SetBytes(4096)
	b.ReportAllocs()
	b.ResetTimer()
	for n := 0; n < b.N; n += qd {
		if _, err := rc.c.Write(req); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(rc.r, buf); err != nil {
			b.Fatal(err)
		}
	}
}
