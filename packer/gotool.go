package packer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// goPackage is the part of `go list -json` the packer reads.
type goPackage struct {
	ImportPath string
	Name       string
	Dir        string
	GoFiles    []string
	CgoFiles   []string
	Standard   bool
	Module     *struct{ Path string }
	Error      *struct{ Err string }
}

// goList runs `go list -e -json` for pkg with env and returns, with deps,
// pkg and every package it imports, in dependency order (pkg itself last);
// without, pkg alone (cheaper).
func (p *pack) goList(ctx context.Context, env []string, pkg string, deps bool) ([]goPackage, error) {
	args := []string{"list", "-e"}
	if deps {
		args = append(args, "-deps")
	}
	args = append(args, "-json=ImportPath,Name,Dir,GoFiles,CgoFiles,Standard,Module,Error", "--", pkg)
	cmd := exec.CommandContext(ctx, p.o.GoCmd, args...)
	cmd.Dir = p.o.Dir
	cmd.Env = env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go list %s failed: %v: %s: %w", pkg, err, strings.TrimSpace(stderr.String()), ErrBuild)
	}
	var pkgs []goPackage
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var gp goPackage
		if err := dec.Decode(&gp); err == io.EOF {
			break
		} else if err != nil {
			return nil, fmt.Errorf("go list output: %v: %w", err, ErrBuild)
		}
		pkgs = append(pkgs, gp)
	}
	if len(pkgs) == 0 {
		return nil, fmt.Errorf("go list %s listed nothing: %w", pkg, ErrBuild)
	}
	return pkgs, nil
}

// cgoPackages names the non-standard packages in pkg's build that have cgo
// files for the profile's target (standard packages such as net and
// os/user have pure-Go fallbacks and build without cgo).
func (p *pack) cgoPackages(ctx context.Context, j *job) ([]string, error) {
	env := append(append([]string(nil), p.env...), j.prof.Env()...)
	env = append(env, "CGO_ENABLED=1")
	pkgs, err := p.goList(ctx, env, p.o.Package, true)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, gp := range pkgs {
		if !gp.Standard && len(gp.CgoFiles) > 0 {
			out = append(out, fmt.Sprintf("%s (imports \"C\" in %s)", gp.ImportPath, strings.Join(gp.CgoFiles, ", ")))
		}
	}
	return out, nil
}

// errVarMissing marks a checkVersionVar error for a variable that is not
// declared at all (rather than declared in a way -X cannot set).
var errVarMissing = errors.New("")

// checkVersionVar refuses unless name (e.g. "version") is a package-level
// string var in gp, declared so that -X can set it: `var version string`,
// `var version = "dev"` or `var version string = "dev"`.
func checkVersionVar(gp goPackage, fullName, name string) error {
	fset := token.NewFileSet()
	for _, f := range gp.GoFiles {
		path := filepath.Join(gp.Dir, f)
		file, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return fmt.Errorf("parse %s: %v: %w", path, err, ErrVersionVar)
		}
		for _, decl := range file.Decls {
			switch d := decl.(type) {
			case *ast.FuncDecl:
				if d.Recv == nil && d.Name.Name == name {
					return fmt.Errorf("%s is a function (%s), not a variable; -X can only set a package-level string var: declare `var %s = \"dev\"`: %w",
						fullName, fset.Position(d.Pos()), name, ErrVersionVar)
				}
			case *ast.GenDecl:
				for _, spec := range d.Specs {
					vs, ok := spec.(*ast.ValueSpec)
					if !ok {
						if ts, ok := spec.(*ast.TypeSpec); ok && ts.Name.Name == name {
							return fmt.Errorf("%s is a type (%s), not a variable: %w", fullName, fset.Position(ts.Pos()), ErrVersionVar)
						}
						continue
					}
					for i, id := range vs.Names {
						if id.Name != name {
							continue
						}
						pos := fset.Position(id.Pos())
						if d.Tok == token.CONST {
							return fmt.Errorf("%s is a const (%s); go build -X silently ignores consts, so the binary would not know its version: change `const %s` to `var %s`: %w",
								fullName, pos, name, name, ErrVersionVar)
						}
						return checkVarSpec(vs, i, fullName, name, pos.String())
					}
				}
			}
		}
	}
	return fmt.Errorf("package %s (%s) has no package-level variable %q, so go build -X %s=... would be silently ignored; declare `var %s = \"dev\"`, point --version-var at the right variable, or pass --version-var '' to pack without stamping: %w%w",
		gp.ImportPath, gp.Dir, name, fullName, name, ErrVersionVar, errVarMissing)
}

func checkVarSpec(vs *ast.ValueSpec, i int, fullName, name, pos string) error {
	if vs.Type != nil {
		if id, ok := vs.Type.(*ast.Ident); !ok || id.Name != "string" {
			return fmt.Errorf("%s is declared with type %s (%s); -X can only set a variable of type string: %w",
				fullName, exprString(vs.Type), pos, ErrVersionVar)
		}
	}
	if len(vs.Values) == 0 {
		if vs.Type == nil {
			return fmt.Errorf("%s has neither a type nor a value (%s): %w", fullName, pos, ErrVersionVar)
		}
		return nil
	}
	if len(vs.Values) != len(vs.Names) {
		return fmt.Errorf("%s is initialized from a multi-value expression (%s); -X needs a constant string initializer like `var %s = \"dev\"`: %w",
			fullName, pos, name, ErrVersionVar)
	}
	if !isStringConstExpr(vs.Values[i]) {
		return fmt.Errorf("%s is initialized with %s (%s), not a string literal; at run time that overwrites what -X sets (or it is not a string): write `var %s = \"dev\"`: %w",
			fullName, exprString(vs.Values[i]), pos, name, ErrVersionVar)
	}
	return nil
}

// isStringConstExpr reports whether e is a string literal or a
// concatenation of string literals.
func isStringConstExpr(e ast.Expr) bool {
	switch x := e.(type) {
	case *ast.BasicLit:
		return x.Kind == token.STRING
	case *ast.ParenExpr:
		return isStringConstExpr(x.X)
	case *ast.BinaryExpr:
		return x.Op == token.ADD && isStringConstExpr(x.X) && isStringConstExpr(x.Y)
	}
	return false
}

func exprString(e ast.Expr) string {
	switch x := e.(type) {
	case *ast.Ident:
		return x.Name
	case *ast.BasicLit:
		return x.Value
	case *ast.SelectorExpr:
		return exprString(x.X) + "." + x.Sel.Name
	case *ast.CallExpr:
		return exprString(x.Fun) + "(…)"
	case *ast.StarExpr:
		return "*" + exprString(x.X)
	}
	return fmt.Sprintf("%T", e)
}

// SizeEntry is a package or symbol and its bytes in the executable.
type SizeEntry struct {
	Name string `json:"name"`
	Size int64  `json:"size"`
}

// SizeReport lists what takes the most room in an executable, from `go
// tool nm -size` of the unstripped build.
type SizeReport struct {
	Packages []SizeEntry `json:"packages"`
	Symbols  []SizeEntry `json:"symbols"`
}

// String formats the report for an error message.
func (r *SizeReport) String() string {
	var b strings.Builder
	b.WriteString("biggest packages:")
	for _, e := range r.Packages {
		fmt.Fprintf(&b, "\n  %10s  %s", sizeString(e.Size), e.Name)
	}
	b.WriteString("\nbiggest symbols:")
	for _, e := range r.Symbols {
		fmt.Fprintf(&b, "\n  %10s  %s", sizeString(e.Size), e.Name)
	}
	return b.String()
}

// sizeReport runs `go tool nm -size -sort size` on an unstripped
// executable and aggregates by package.
func (p *pack) sizeReport(ctx context.Context, exe string, top int) (*SizeReport, error) {
	cmd := exec.CommandContext(ctx, p.o.GoCmd, "tool", "nm", "-size", "-sort", "size", exe)
	cmd.Dir = p.o.Dir
	cmd.Env = p.env
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go tool nm: %w", err)
	}
	return parseNM(out, top), nil
}

// parseNM aggregates `go tool nm -size -sort size` output.
func parseNM(out []byte, top int) *SizeReport {
	pkgs := map[string]int64{}
	r := &SizeReport{}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 4 {
			continue
		}
		size, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil || size <= 0 {
			continue
		}
		typ := f[2]
		if typ == "U" {
			continue
		}
		name := strings.Join(f[3:], " ")
		pkgs[packageOf(name)] += size
		if len(r.Symbols) < top {
			r.Symbols = append(r.Symbols, SizeEntry{Name: name, Size: size})
		}
	}
	for name, size := range pkgs {
		r.Packages = append(r.Packages, SizeEntry{Name: name, Size: size})
	}
	sort.Slice(r.Packages, func(a, b int) bool {
		if r.Packages[a].Size != r.Packages[b].Size {
			return r.Packages[a].Size > r.Packages[b].Size
		}
		return r.Packages[a].Name < r.Packages[b].Name
	})
	if len(r.Packages) > top {
		r.Packages = r.Packages[:top]
	}
	return r
}

// packageOf guesses the package of a linker symbol name:
// "github.com/a/b.(*T).M" -> "github.com/a/b", "type:*main.T" -> "main",
// "go:string.*" -> "go:string".
func packageOf(sym string) string {
	s := strings.TrimPrefix(sym, "type:")
	s = strings.TrimLeft(s, "*[]")
	if i := strings.IndexAny(s, "[{("); i >= 0 {
		s = s[:i]
	}
	slash := strings.LastIndex(s, "/")
	if dot := strings.Index(s[slash+1:], "."); dot >= 0 {
		return s[:slash+1+dot]
	}
	if s == "" {
		return sym
	}
	return s
}

func sizeString(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1fMiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1fKiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%dB", n)
}

// pseudoVersion matches the tail of a Go pseudo-version
// (v0.0.0-20200101000000-abcdef123456, v1.2.4-0.2020...).
var pseudoVersion = regexp.MustCompile(`[-.]\d{14}-[0-9a-f]{12}(\+incompatible)?$`)

// ModuleVersion is the version of the module that provides pkg, as go
// list (and later `go version -m` on the binary) reports it, without the
// v: "0.1.5" for a program packed by import path from a module that
// requires it at v0.1.5. It is "" for the main module (go list knows no
// version for it) or a pseudo-version (not a release). dir is where go
// runs; a directory path pkg runs from inside it.
func ModuleVersion(ctx context.Context, goCmd, dir, pkg string) (string, error) {
	if goCmd == "" {
		goCmd = "go"
	}
	if isDirPath(pkg) {
		dir, pkg = pkg, "."
	}
	cmd := exec.CommandContext(ctx, goCmd, "list", "-f", "{{with .Module}}{{.Version}}{{end}}", "--", pkg)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go list %s: %v: %s", pkg, err, strings.TrimSpace(stderr.String()))
	}
	v := strings.TrimSpace(string(out))
	if v == "" || pseudoVersion.MatchString(v) {
		return "", nil
	}
	return NormalizeVersion(v), nil
}
