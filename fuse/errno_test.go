package fuse

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/sluice-storage/sluice/gateway"
	"github.com/sluice-storage/sluice/gateway/store"
)

// sentinelErrnos is what each store sentinel (as the gateway re-exports it,
// where it does) must become at the FUSE door.
var sentinelErrnos = map[string]struct {
	err   error
	errno syscall.Errno
}{
	"ErrNotFound":    {gateway.ErrNotFound, syscall.ENOENT},
	"ErrExists":      {gateway.ErrExists, syscall.EEXIST},
	"ErrInvalid":     {gateway.ErrInvalid, syscall.EINVAL},
	"ErrOutOfRange":  {gateway.ErrOutOfRange, syscall.EINVAL},
	"ErrNoSpace":     {gateway.ErrNoSpace, syscall.ENOSPC},
	"ErrReadOnly":    {gateway.ErrReadOnly, syscall.EROFS},
	"ErrIO":          {gateway.ErrIO, syscall.EIO},
	"ErrClosed":      {gateway.ErrClosed, syscall.EIO},
	"ErrUnsupported": {gateway.ErrUnsupported, syscall.EOPNOTSUPP},
	"ErrNotDir":      {gateway.ErrNotDir, syscall.ENOTDIR},
	"ErrIsDir":       {gateway.ErrIsDir, syscall.EISDIR},
	"ErrNotEmpty":    {gateway.ErrNotEmpty, syscall.ENOTEMPTY},
	"ErrNameTooLong": {gateway.ErrNameTooLong, syscall.ENAMETOOLONG},
	"ErrNoData":      {gateway.ErrNoData, syscall.ENODATA},
	"ErrRange":       {gateway.ErrRange, syscall.ERANGE},
	"ErrTooBig":      {gateway.ErrTooBig, syscall.EFBIG},
	"ErrPerm":        {gateway.ErrPerm, syscall.EPERM},
	"ErrNXIO":        {gateway.ErrNXIO, syscall.ENXIO},
	// Damaged metadata: the store refuses to open, but the errno must
	// still be EIO should it reach a request.
	"ErrCorrupt": {store.ErrCorrupt, syscall.EIO},
}

// logBuffer returns a logger whose text output is kept in the buffer.
func logBuffer() (*slog.Logger, *bytes.Buffer) {
	var b bytes.Buffer
	return slog.New(slog.NewTextHandler(&b, &slog.HandlerOptions{Level: slog.LevelDebug})), &b
}

func TestErrnoOfSentinels(t *testing.T) {
	log, _ := logBuffer()
	for name, c := range sentinelErrnos {
		wrapped := fmt.Errorf("volume acme/fs: inode 7: %w", c.err)
		twice := fmt.Errorf("rename: %w", wrapped)
		joined := errors.Join(errors.New("context"), wrapped)
		for _, err := range []error{c.err, wrapped, twice, joined} {
			if got := errnoOf(log, "test", err); got != c.errno {
				t.Errorf("%s as %q: errno %v (%d), want %v (%d)", name, err, got, int(got), c.errno, int(c.errno))
			}
		}
	}
}

// Every sentinel the store declares has a row above: a new one cannot reach
// the door unmapped (and silently become EIO) without this test failing.
func TestErrnoTableCoversStoreSentinels(t *testing.T) {
	dir := filepath.Join("..", "gateway", "store")
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	var found []string
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		file, err := parser.ParseFile(fset, f, src, 0)
		if err != nil {
			t.Fatal(err)
		}
		found = append(found, sentinelNames(file)...)
	}
	if len(found) < len(sentinelErrnos) {
		t.Fatalf("found %d sentinels (%v) in %s, fewer than the %d the table maps: did they move?", len(found), found, dir, len(sentinelErrnos))
	}
	for _, name := range found {
		if _, ok := sentinelErrnos[name]; !ok {
			t.Errorf("store sentinel %s has no errno in this test's table (and maybe none in errno.go)", name)
		}
	}
}

// sentinelNames lists the exported package-level variables named Err* that
// are set with errors.New.
func sentinelNames(file *ast.File) []string {
	var out []string
	for _, d := range file.Decls {
		g, ok := d.(*ast.GenDecl)
		if !ok || g.Tok != token.VAR {
			continue
		}
		for _, s := range g.Specs {
			vs := s.(*ast.ValueSpec)
			for i, n := range vs.Names {
				if !strings.HasPrefix(n.Name, "Err") || !n.IsExported() || i >= len(vs.Values) {
					continue
				}
				call, ok := vs.Values[i].(*ast.CallExpr)
				if !ok {
					continue
				}
				if sel, ok := call.Fun.(*ast.SelectorExpr); ok && sel.Sel.Name == "New" {
					if pkg, ok := sel.X.(*ast.Ident); ok && pkg.Name == "errors" {
						out = append(out, n.Name)
					}
				}
			}
		}
	}
	return out
}

func TestErrnoOfOthers(t *testing.T) {
	cases := []struct {
		name  string
		err   error
		errno syscall.Errno
	}{
		{"nil", nil, 0},
		{"canceled", context.Canceled, syscall.EINTR},
		{"canceled, wrapped", fmt.Errorf("write: %w", context.Canceled), syscall.EINTR},
		{"deadline", context.DeadlineExceeded, syscall.ETIMEDOUT},
		{"an errno passes through", syscall.EACCES, syscall.EACCES},
		{"a wrapped errno passes through", fmt.Errorf("open: %w", syscall.EXDEV), syscall.EXDEV},
		{"unknown", errors.New("something broke"), syscall.EIO},
		{"unknown, wrapped", fmt.Errorf("read: %w", errors.New("badger: corrupt")), syscall.EIO},
	}
	for _, c := range cases {
		log, _ := logBuffer()
		if got := errnoOf(log, "test", c.err); got != c.errno {
			t.Errorf("%s: errno %v (%d), want %v (%d)", c.name, got, int(got), c.errno, int(c.errno))
		}
	}
}

// An error the table does not know is EIO and one log line naming the op
// and the error (never go-fuse's ENOTSUP default); mapped errors and
// cancellations log nothing.
func TestErrnoOfLogsOnlyUnknown(t *testing.T) {
	log, buf := logBuffer()
	if got := errnoOf(log, "fsync", fmt.Errorf("flush: %w", errors.New("disk on fire"))); got != syscall.EIO {
		t.Fatalf("unknown error: errno %v, want EIO", got)
	}
	line := buf.String()
	if strings.Count(line, "\n") != 1 || !strings.Contains(line, "level=ERROR") ||
		!strings.Contains(line, "op=fsync") || !strings.Contains(line, "disk on fire") {
		t.Fatalf("unknown error logged %q, want one error line with the op and the error", line)
	}
	buf.Reset()
	for _, err := range []error{
		gateway.ErrNotFound, fmt.Errorf("x: %w", gateway.ErrClosed), context.Canceled, syscall.EACCES, nil,
	} {
		errnoOf(log, "lookup", err)
	}
	if buf.Len() != 0 {
		t.Fatalf("mapped errors logged:\n%s", buf.String())
	}
}
