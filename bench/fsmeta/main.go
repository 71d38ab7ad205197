// Command fsmeta is bench/fuse.sh's metadata run: it creates N empty files
// in DIR, stats each, then unlinks each, one process, and prints the rate of
// each phase in operations per second:
//
//	fsmeta DIR N   →   create OPS stat OPS unlink OPS
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: fsmeta DIR N")
		os.Exit(2)
	}
	dir := os.Args[1]
	n, err := strconv.Atoi(os.Args[2])
	if err != nil || n < 1 {
		fmt.Fprintln(os.Stderr, "fsmeta: N must be a positive integer")
		os.Exit(2)
	}
	names := make([]string, n)
	for i := range names {
		names[i] = filepath.Join(dir, fmt.Sprintf("f%06d", i))
	}
	phase := func(name string, op func(string) error) {
		start := time.Now()
		for _, p := range names {
			if err := op(p); err != nil {
				fmt.Fprintf(os.Stderr, "fsmeta: %s %s: %v\n", name, p, err)
				os.Exit(1)
			}
		}
		fmt.Printf("%s %.0f ", name, float64(n)/time.Since(start).Seconds())
	}
	phase("create", func(p string) error {
		f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		return f.Close()
	})
	phase("stat", func(p string) error { _, err := os.Stat(p); return err })
	phase("unlink", os.Remove)
	fmt.Println()
}
