package store

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strings"
	"testing"
)

// engineFiles are the chunk engine's files (see the package doc); the rest
// of the package's non-test files are the namespace's.
var engineFiles = []string{
	"alloc.go", "config.go", "cow.go", "entrycache.go", "errors.go", "fileobj.go",
	"format.go", "fsck.go", "io.go", "metacheck.go", "namespace.go", "object.go",
	"scrub.go", "store.go", "syncmark.go", "table.go", "transformed.go", "volumes.go",
}

// TestEngineSeam checks that the chunk engine reaches the namespace only
// through the Namespace and NamespaceMaker interfaces: no engine file calls
// a method of FS that the interfaces do not have, names a function, type,
// constant or variable of the namespace's files (its keys, FS, newFS,
// initRoot...), uses Volume's namespace other than through the interfaces,
// or branches on an object's inode number. The exceptions: FS and fsHooks
// in the FS() accessor (volumes.go), and fsMaker where Open defaults to it
// (store.go).
func TestEngineSeam(t *testing.T) {
	fset := token.NewFileSet()
	files := map[string]*ast.File{}
	all, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	engine := map[string]bool{}
	for _, name := range engineFiles {
		engine[name] = true
	}
	for _, name := range all {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		files[name] = f
	}
	for _, name := range engineFiles {
		if files[name] == nil {
			t.Fatalf("engine file %s is missing: update engineFiles and the package doc", name)
		}
	}

	// The methods of FS, the hooks of the namespace interface, and every
	// function, method or struct field name the engine declares itself
	// (without type information, a selector of one of those is taken to
	// mean it).
	fsMethods, engineDecls, hooks := map[string]bool{}, map[string]bool{}, map[string]bool{}
	nsTop := map[string]bool{} // top-level names the namespace's files declare
	for name, f := range files {
		if !engine[name] {
			for _, d := range f.Decls {
				switch d := d.(type) {
				case *ast.FuncDecl:
					if d.Recv == nil {
						nsTop[d.Name.Name] = true
					}
				case *ast.GenDecl:
					for _, s := range d.Specs {
						switch s := s.(type) {
						case *ast.TypeSpec:
							nsTop[s.Name.Name] = true
						case *ast.ValueSpec:
							for _, id := range s.Names {
								if id.Name != "_" {
									nsTop[id.Name] = true
								}
							}
						}
					}
				}
			}
		}
		if engine[name] {
			ast.Inspect(f, func(n ast.Node) bool {
				if st, ok := n.(*ast.StructType); ok {
					for _, fl := range st.Fields.List {
						for _, id := range fl.Names {
							engineDecls[id.Name] = true
						}
					}
				}
				return true
			})
		}
		for _, d := range f.Decls {
			switch d := d.(type) {
			case *ast.FuncDecl:
				if engine[name] {
					engineDecls[d.Name.Name] = true
				} else if d.Recv != nil && receiverIs(d.Recv, "FS") {
					fsMethods[d.Name.Name] = true
				}
			case *ast.GenDecl:
				for _, s := range d.Specs {
					ts, ok := s.(*ast.TypeSpec)
					if !ok || ts.Name.Name != "Namespace" && ts.Name.Name != "NamespaceMaker" {
						continue
					}
					for _, m := range ts.Type.(*ast.InterfaceType).Methods.List {
						for _, n := range m.Names {
							hooks[n.Name] = true
						}
					}
				}
			}
		}
	}
	if len(hooks) == 0 || len(fsMethods) == 0 {
		t.Fatalf("found %d hooks and %d FS methods: the test no longer sees the seam", len(hooks), len(fsMethods))
	}

	allowed := map[string]map[string]bool{
		"FS":      {"volumes.go": true},
		"fsHooks": {"volumes.go": true},
		"fsMaker": {"store.go": true},
	}
	for _, name := range engineFiles {
		ast.Inspect(files[name], func(n ast.Node) bool {
			pos := func() string { return fset.Position(n.Pos()).String() }
			switch n := n.(type) {
			case *ast.Ident:
				if nsTop[n.Name] && !engineDecls[n.Name] && !allowed[n.Name][name] {
					t.Errorf("%s: engine file names the namespace's %s", pos(), n.Name)
				}
			case *ast.SelectorExpr:
				m := n.Sel.Name
				if fsMethods[m] && !hooks[m] && !engineDecls[m] {
					t.Errorf("%s: engine calls FS.%s, which is not a namespace hook", pos(), m)
				}
				if m == "fs" {
					t.Errorf("%s: engine reaches a namespace as .fs, not through the namespace interface", pos())
				}
			case *ast.BinaryExpr:
				if (n.Op == token.EQL || n.Op == token.NEQ) && (isInoField(n.X) && isZero(n.Y) || isInoField(n.Y) && isZero(n.X)) {
					t.Errorf("%s: engine branches on an object's inode number (use object.grows or a namespace hook)", pos())
				}
			}
			return true
		})
	}
}

func receiverIs(recv *ast.FieldList, typ string) bool {
	if len(recv.List) != 1 {
		return false
	}
	e := recv.List[0].Type
	if s, ok := e.(*ast.StarExpr); ok {
		e = s.X
	}
	id, ok := e.(*ast.Ident)
	return ok && id.Name == typ
}

func isInoField(e ast.Expr) bool {
	s, ok := e.(*ast.SelectorExpr)
	return ok && s.Sel.Name == "ino"
}

func isZero(e ast.Expr) bool {
	l, ok := e.(*ast.BasicLit)
	return ok && l.Value == "0"
}
