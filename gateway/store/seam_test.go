package store

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strings"
	"testing"
)

// TestEngineSeam checks that the chunk engine does not tell files from a
// block volume by inode number: an object either grows (Object.grows) or
// has a fixed length, and what differs for files is the namespace's hooks
// (store.Namespace). The engine cannot name the namespace's code at all:
// fsns imports store.
func TestEngineSeam(t *testing.T) {
	fset := token.NewFileSet()
	names, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, name := range names {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		checked++
		ast.Inspect(f, func(n ast.Node) bool {
			b, ok := n.(*ast.BinaryExpr)
			if ok && (b.Op == token.EQL || b.Op == token.NEQ) && (isInoField(b.X) && isZero(b.Y) || isInoField(b.Y) && isZero(b.X)) {
				t.Errorf("%s: the engine branches on an object's inode number (use Object.grows or a Namespace hook)", fset.Position(b.Pos()))
			}
			return true
		})
	}
	if checked == 0 {
		t.Fatal("no engine files found")
	}
}

func isInoField(e ast.Expr) bool {
	s, ok := e.(*ast.SelectorExpr)
	return ok && s.Sel.Name == "ino"
}

func isZero(e ast.Expr) bool {
	l, ok := e.(*ast.BasicLit)
	return ok && l.Value == "0"
}
