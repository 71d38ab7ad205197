package main

import (
	"fmt"
	"strconv"
	"strings"
	"unicode"
)

// parseSize reads a byte count: a plain number of bytes, or a number with a
// binary unit K, M, G, T, P or KiB, MiB, GiB, TiB, PiB (case-insensitive;
// "10G" and "10GiB" are both 10×2³⁰). Fractions are allowed when the result
// is a whole number of bytes ("1.5G").
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	num := strings.TrimRightFunc(t, func(r rune) bool { return r >= 'A' && r <= 'z' })
	unit := strings.ToLower(strings.TrimSpace(t[len(num):]))
	num = strings.TrimSpace(num)
	shift := map[string]uint{"": 0, "b": 0, "k": 10, "kib": 10, "m": 20, "mib": 20,
		"g": 30, "gib": 30, "t": 40, "tib": 40, "p": 50, "pib": 50}
	sh, ok := shift[unit]
	if !ok || num == "" {
		return 0, fmt.Errorf("size %q: want a number with an optional unit K, M, G, T (or KiB, MiB, GiB, TiB)", s)
	}
	if n, err := strconv.ParseInt(num, 10, 64); err == nil {
		if n < 0 || (sh > 0 && n > (1<<62)>>sh) {
			return 0, fmt.Errorf("size %q: out of range", s)
		}
		return n << sh, nil
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || f < 0 || f*float64(int64(1)<<sh) > 1<<62 {
		return 0, fmt.Errorf("size %q: want a number with an optional unit K, M, G, T (or KiB, MiB, GiB, TiB)", s)
	}
	b := f * float64(int64(1)<<sh)
	if b != float64(int64(b)) {
		return 0, fmt.Errorf("size %q is not a whole number of bytes", s)
	}
	return int64(b), nil
}

// formatSize prints bytes with the largest binary unit that divides them
// exactly, or with one decimal place otherwise ("10GiB", "1.5MiB").
func formatSize(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB"}
	i := 0
	f := float64(n)
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	if f == float64(int64(f)) {
		return fmt.Sprintf("%d%s", int64(f), units[i])
	}
	return fmt.Sprintf("%.1f%s", f, units[i])
}

// exactSize is a size for messages: "100 TiB (109951162777600 bytes)", or
// "1000 bytes" below 1 KiB.
func exactSize(n int64) string {
	if n < 1024 {
		return fmt.Sprintf("%d bytes", n)
	}
	h := formatSize(n) // "100TiB", "1.5MiB"
	i := strings.IndexFunc(h, unicode.IsLetter)
	return fmt.Sprintf("%s %s (%d bytes)", h[:i], h[i:], n)
}

// formatLatency prints seconds in the unit that suits them: "850ns",
// "12.4µs", "929.3ms", "1.25s".
// (The bounds are where the rounded number would reach 1000.)
func formatLatency(sec float64) string {
	switch {
	case sec < 999.5e-9:
		return fmt.Sprintf("%.0fns", sec*1e9)
	case sec < 999.95e-6:
		return fmt.Sprintf("%.1fµs", sec*1e6)
	case sec < 999.95e-3:
		return fmt.Sprintf("%.1fms", sec*1e3)
	}
	return fmt.Sprintf("%.2fs", sec)
}
