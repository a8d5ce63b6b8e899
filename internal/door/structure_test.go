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
// outside (the HTTP server with its WebSocket and presence handlers, the
// Pusher protocol's server in pusher/pusherd, and ZeroMQ's endpoints) may
// not name a broker, make one or publish past the door. The one broker
// they see is the one server.New hands straight to door.New.
func TestNoWayAroundTheDoor(t *testing.T) {
	seen := map[string]bool{}
	for _, root := range []string{"../server", "../zmq", "../pusher"} {
		n := 0
		err := filepath.WalkDir(root, func(path string, e os.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if e.IsDir() {
				if filepath.Base(path) == "servertest" {
					return filepath.SkipDir // test support: it makes the broker tests serve
				}
				return nil
			}
			if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return nil
			}
			src, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			n++
			seen[filepath.Dir(path)] = true
			for _, p := range checkFile(path, src) {
				t.Error(p)
			}
			return nil
		})
		if err != nil || n == 0 {
			t.Fatalf("no Go files under %s: %v", root, err)
		}
	}
	for _, dir := range []string{"../pusher/pusherd"} {
		if !seen[filepath.Clean(dir)] {
			t.Errorf("%s (a way in) was not checked: moved? check it where it is now", dir)
		}
	}
}

// The import paths of what the ways in must not reach but through the door.
const (
	brokerPath   = "github.com/pushctl/pushctl/internal/broker"
	presencePath = "github.com/pushctl/pushctl/internal/presence"
)

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
	// The names the file gives the two packages (an import may rename them).
	names := map[string]string{"broker": "broker", "presence": "presence"}
	for _, im := range f.Imports {
		path := strings.Trim(im.Path.Value, `"`)
		if im.Name == nil {
			continue
		}
		switch path {
		case brokerPath:
			delete(names, "broker")
			names[im.Name.Name] = "broker"
		case presencePath:
			delete(names, "presence")
			names[im.Name.Name] = "presence"
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
		if ok && forbidden[names[x.Name]][sel.Sel.Name] {
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
		"package server\nimport b \"github.com/pushctl/pushctl/internal/broker\"\nvar x b.Broker\n",
		"package pusherd\nfunc f(c *broker.Core) { c.StartPublish(nil, nil) }\n",
		"package pusherd\nvar r *presence.Registry\n",
	} {
		if len(checkFile("x.go", []byte(src))) == 0 {
			t.Errorf("not caught:\n%s", src)
		}
	}
}
