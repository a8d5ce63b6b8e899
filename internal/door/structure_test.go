package door_test

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// forbidden are the ways to the broker and to presence that bypass the
// door: holding a broker, making one, publishing past it, or holding the
// presence registry.
var forbidden = map[string]map[string]bool{
	"broker":   {"Broker": true, "Core": true, "Pipeliner": true, "StartPublish": true, "New": true, "NewMemory": true, "OpenDurable": true, "NewHub": true},
	"presence": {"New": true, "Registry": true},
}

// TestNoWayAroundTheDoor keeps the ways in from reaching the broker or
// presence except through the door: the packages that take input from
// outside (the HTTP server with its WebSocket, Pusher and presence
// handlers, and ZeroMQ's endpoints) may not name a broker, make one or
// publish past the door. The one broker they see is the one server.New
// hands straight to door.New.
func TestNoWayAroundTheDoor(t *testing.T) {
	for _, dir := range []string{"../server", "../zmq"} {
		files, err := filepath.Glob(filepath.Join(dir, "*.go"))
		if err != nil || len(files) == 0 {
			t.Fatalf("no Go files in %s: %v", dir, err)
		}
		for _, path := range files {
			if strings.HasSuffix(path, "_test.go") {
				continue
			}
			src, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range checkFile(path, src) {
				t.Error(p)
			}
		}
	}
}

// checkFile returns the problems of one file.
func checkFile(path string, src []byte) (problems []string) {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, path, src, 0)
	if err != nil {
		return []string{err.Error()}
	}
	allowed := map[ast.Node]bool{}
	if f.Name.Name == "server" {
		for _, d := range f.Decls {
			fd, ok := d.(*ast.FuncDecl)
			if !ok || fd.Recv != nil || fd.Name.Name != "New" {
				continue
			}
			// func New(b broker.Broker, …): b goes to door.New and nowhere else.
			p := fd.Type.Params.List[0]
			allowed[p.Type] = true
			name := p.Names[0].Name
			uses, toDoor := 0, 0
			ast.Inspect(fd.Body, func(n ast.Node) bool {
				if id, ok := n.(*ast.Ident); ok && id.Name == name {
					uses++
				}
				if call, ok := n.(*ast.CallExpr); ok && isSel(call.Fun, "door", "New") && len(call.Args) > 0 {
					if id, ok := call.Args[0].(*ast.Ident); ok && id.Name == name {
						toDoor++
					}
				}
				return true
			})
			if uses != 1 || toDoor != 1 {
				problems = append(problems, fmt.Sprintf("%s: server.New must hand its broker %s to door.New and use it nowhere else (%d uses, %d to door.New)", path, name, uses, toDoor))
			}
		}
	}
	ast.Inspect(f, func(n ast.Node) bool {
		if allowed[n] {
			return false
		}
		sel, ok := n.(*ast.SelectorExpr)
		if !ok {
			return true
		}
		x, ok := sel.X.(*ast.Ident)
		if ok && forbidden[x.Name][sel.Sel.Name] {
			problems = append(problems, fmt.Sprintf("%s: %s.%s reaches past the door; go through internal/door", fset.Position(sel.Pos()), x.Name, sel.Sel.Name))
		}
		return true
	})
	return problems
}

func isSel(e ast.Expr, pkg, name string) bool {
	sel, ok := e.(*ast.SelectorExpr)
	if !ok {
		return false
	}
	x, ok := sel.X.(*ast.Ident)
	return ok && x.Name == pkg && sel.Sel.Name == name
}

// TestStructureCheckCatchesABypass makes sure the check above can fail.
func TestStructureCheckCatchesABypass(t *testing.T) {
	for _, src := range []string{
		"package server\nimport \"x/broker\"\ntype S struct{ b broker.Broker }\n",
		"package server\nfunc f() { broker.StartPublish(nil, nil, nil) }\n",
		"package zmq\nfunc f() { presence.New(nil, 0) }\n",
		"package server\nfunc New(b broker.Broker) *S { d := door.New(b); keep(b); return nil }\n",
	} {
		if len(checkFile("x.go", []byte(src))) == 0 {
			t.Errorf("not caught:\n%s", src)
		}
	}
}
