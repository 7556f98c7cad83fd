package main

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"
)

// TestMain maps the edgefleet command into the test binary, so the txtar
// scenarios under testdata/script run the real CLI code (testscript
// re-executes this binary as "edgefleet").
func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"edgefleet": func() {
			os.Exit(run(context.Background(), &cliEnv{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv}, os.Args[1:]))
		},
	})
}

// TestScript runs every testdata/script/*.txtar scenario. Extra commands:
//
//	exitcode N edgefleet ARGS...  run a command, require exit code N (0/1/2)
//	corrupt FILE OFFSET           flip the bits of one byte (negative OFFSET counts from the end)
//	truncate FILE SIZE            cut FILE to SIZE bytes (negative: drop that many)
//	expand IN OUT                 copy IN to OUT with $VARS ($WORK...) expanded (agent configs need absolute paths)
//
// Conditions: [exec:qemu-arm], [exec:minisign] and friends are built in.
func TestScript(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("SKIP: the go command is not on PATH; pack scenarios need it")
	}
	goenv := map[string]string{}
	out, err := exec.Command("go", "env", "GOCACHE", "GOMODCACHE", "GOPATH").Output()
	if err != nil {
		t.Fatalf("go env: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	for i, k := range []string{"GOCACHE", "GOMODCACHE", "GOPATH"} {
		if i < len(lines) {
			goenv[k] = lines[i]
		}
	}
	root, _ := filepath.Abs("../..")
	upx := os.Getenv("EDGEFLEET_UPX")
	if upx == "" {
		if p, err := exec.LookPath("upx"); err == nil {
			upx = p
		} else if p := filepath.Join(root, ".tools", "bin", "upx"); fileExists(p) {
			upx = p
		}
	}
	packCache := t.TempDir() // shared by the scenarios; never the user's cache
	// The device agent, for the field engineer's scenarios (exec
	// edgefleet-agent ...).
	binDir := t.TempDir()
	build := exec.Command("go", "build", "-o", filepath.Join(binDir, "edgefleet-agent"), "./cmd/edgefleet-agent")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building edgefleet-agent: %v\n%s", err, out)
	}
	testscript.Run(t, testscript.Params{
		Dir: "testdata/script",
		Setup: func(e *testscript.Env) error {
			e.Setenv("EDGEFLEET_CACHE", packCache)
			for k, v := range goenv {
				e.Setenv(k, v)
			}
			e.Setenv("GOFLAGS", os.Getenv("GOFLAGS"))
			e.Setenv("GOPROXY", "off")
			e.Setenv("GOTOOLCHAIN", "local")
			e.Setenv("EDGEFLEET_UPX", upx)
			e.Setenv("REPO", root)
			e.Setenv("PATH", binDir+string(os.PathListSeparator)+e.Getenv("PATH"))
			return nil
		},
		Condition: func(cond string) (bool, error) {
			if cond == "upx" {
				return upx != "", nil
			}
			return false, errors.New("unknown condition " + cond)
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"exitcode": cmdExitCode,
			"corrupt":  cmdCorrupt,
			"truncate": cmdTruncate,
			"expand":   cmdExpand,
		},
	})
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func cmdExitCode(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 {
		ts.Fatalf("usage: exitcode N command args...")
	}
	want, err := strconv.Atoi(args[0])
	ts.Check(err)
	err = ts.Exec(args[1], args[2:]...)
	got := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		got = ee.ExitCode()
	} else if err != nil {
		ts.Fatalf("%s: %v", args[1], err)
	}
	if got != want {
		ts.Fatalf("%s exited %d, want %d", strings.Join(args[1:], " "), got, want)
	}
}

func cmdCorrupt(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: corrupt FILE OFFSET")
	}
	path := ts.MkAbs(args[0])
	b, err := os.ReadFile(path)
	ts.Check(err)
	off, err := strconv.Atoi(args[1])
	ts.Check(err)
	if off < 0 {
		off += len(b)
	}
	if off < 0 || off >= len(b) {
		ts.Fatalf("offset %s outside %s (%d bytes)", args[1], args[0], len(b))
	}
	b[off] ^= 0xff
	ts.Check(os.WriteFile(path, b, 0o644))
}

func cmdTruncate(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: truncate FILE SIZE")
	}
	path := ts.MkAbs(args[0])
	fi, err := os.Stat(path)
	ts.Check(err)
	n, err := strconv.ParseInt(args[1], 10, 64)
	ts.Check(err)
	if n < 0 {
		n += fi.Size()
	}
	ts.Check(os.Truncate(path, n))
}

func cmdExpand(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: expand IN OUT")
	}
	b, err := os.ReadFile(ts.MkAbs(args[0]))
	ts.Check(err)
	ts.Check(os.WriteFile(ts.MkAbs(args[1]), []byte(os.Expand(string(b), ts.Getenv)), 0o644))
}
