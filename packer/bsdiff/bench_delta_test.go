package bsdiff

// The delta benchmarks of issue 10 (docs/BENCHMARKS.md, "Deltas"): run by
// scripts/bench-delta.sh (EDGEFLEET_BENCH_DELTA=1). They build the hello
// sample and the agent for linux-armv6 and linux-arm64 (stripped,
// -trimpath) from a copy of this module, as is and with two kinds of
// change, and measure wire bytes, the packer's diff time and memory, and
// the device's apply time and peak RSS in child processes (the streaming
// applier against minio/selfupdate's patcher and against writing the full
// binary), also under qemu-arm -cpu arm1176.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/minio/selfupdate"

	"github.com/edgefleet/edgefleet/internal/testkit"
	applier "github.com/edgefleet/edgefleet/protocol/bsdiff"
)

const childEnv = "EDGEFLEET_DELTA_CHILD"

// TestMain runs a child mode when asked (the parent reads its peak RSS).
func TestMain(m *testing.M) {
	if mode := os.Getenv(childEnv); mode != "" {
		os.Exit(child(mode, os.Getenv("DELTA_OLD"), os.Getenv("DELTA_NEW"), os.Getenv("DELTA_PATCH"), os.Getenv("DELTA_OUT")))
	}
	os.Exit(m.Run())
}

// child: "idle" (the runtime only), "stream" (the device's applier into a
// file + fsync), "selfupdate" (minio/selfupdate's patcher, old read into
// memory as it does, + fsync), "copy" (write the full new binary + fsync),
// "diff" (the packer's differ). It prints the elapsed time.
func child(mode, oldP, newP, patchP, outP string) int {
	start := time.Now()
	var err error
	switch mode {
	case "idle":
	case "stream":
		err = intoSynced(outP, func(out *os.File) error {
			old, oldSize, patch, patchSize, err := openInputs(oldP, patchP)
			if err != nil {
				return err
			}
			defer old.Close()
			defer patch.Close()
			h, err := applier.ReadHeader(patch, patchSize)
			if err != nil {
				return err
			}
			_, err = applier.Apply(context.Background(), old, oldSize, patch, patchSize, out, h.NewSize, applier.Options{})
			return err
		})
	case "selfupdate":
		err = intoSynced(outP, func(out *os.File) error {
			old, _, patch, _, err := openInputs(oldP, patchP)
			if err != nil {
				return err
			}
			defer old.Close()
			defer patch.Close()
			return selfupdate.NewBSDiffPatcher().Patch(old, out, patch)
		})
	case "copy":
		err = intoSynced(outP, func(out *os.File) error {
			in, err := os.Open(newP)
			if err != nil {
				return err
			}
			defer in.Close()
			_, err = io.CopyBuffer(out, in, make([]byte, 64<<10))
			return err
		})
	case "diff":
		err = func() error {
			old, err := os.ReadFile(oldP)
			if err != nil {
				return err
			}
			nw, err := os.ReadFile(newP)
			if err != nil {
				return err
			}
			p, _, err := Diff(old, nw, Options{})
			if err != nil {
				return err
			}
			return os.WriteFile(outP, p, 0o644)
		}()
	default:
		err = fmt.Errorf("unknown mode %q", mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// VmHWM is per address space, so it starts again at exec (ru_maxrss
	// would carry the parent's peak over the fork).
	fmt.Printf("%d %d\n", time.Since(start).Nanoseconds(), vmHWM())
	return 0
}

// vmHWM is this process's peak RSS (bytes) from /proc/self/status.
func vmHWM() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			var kb int64
			fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimPrefix(line, "VmHWM:"), "kB")), &kb)
			return kb << 10
		}
	}
	return 0
}

type childResult struct {
	elapsed time.Duration
	maxRSS  int64 // bytes
}

// runChild runs the test binary bin (under qemu when set) in mode.
func runChild(b *testing.B, bin string, qemu []string, mode, oldP, newP, patchP, outP string) childResult {
	b.Helper()
	args := append(append([]string{}, qemu...), bin)
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), childEnv+"="+mode, "DELTA_OLD="+oldP, "DELTA_NEW="+newP, "DELTA_PATCH="+patchP, "DELTA_OUT="+outP, "GOGC=100")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		b.Fatalf("child %s: %v: %s", mode, err, stderr.String())
	}
	var ns, hwm int64
	fmt.Sscan(string(out), &ns, &hwm)
	return childResult{elapsed: time.Duration(ns), maxRSS: hwm}
}

// copyModule copies the module (without .git) to dir.
func copyModule(b *testing.B, root, dir string) {
	b.Helper()
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if d.IsDir() && (d.Name() == ".git" || d.Name() == ".tools" || d.Name() == "node_modules") {
			return filepath.SkipDir
		}
		target := filepath.Join(dir, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(target, data, 0o644)
	})
	if err != nil {
		b.Fatal(err)
	}
}

// smallChange adds one message and one `if` to a main package's main().
func smallChange(b *testing.B, file string) {
	src, err := os.ReadFile(file)
	if err != nil {
		b.Fatal(err)
	}
	s := strings.Replace(string(src), "func main() {\n", "func main() {\n\tif os.Getenv(\"EDGEFLEET_TRACE_START\") != \"\" {\n\t\tfmt.Fprintln(os.Stderr, \"starting with tracing on\")\n\t}\n", 1)
	if s == string(src) {
		b.Fatalf("no func main in %s", file)
	}
	os.WriteFile(file, []byte(s), 0o644)
}

// largeChange adds a 200-line file of real code to a main package and
// calls it from main(), so the linker keeps it.
func largeChange(b *testing.B, file string) {
	smallChange(b, file)
	src, _ := os.ReadFile(file)
	s := strings.Replace(string(src), "func main() {\n", "func main() {\n\tif os.Getenv(\"EDGEFLEET_BENCH_EXTRA\") != \"\" {\n\t\tbenchExtra(os.Getenv(\"EDGEFLEET_BENCH_EXTRA\"))\n\t}\n", 1)
	os.WriteFile(file, []byte(s), 0o644)
	var g strings.Builder
	g.WriteString("package main\n\nimport (\n\t\"fmt\"\n\t\"os\"\n\t\"strings\"\n)\n\n// benchExtra is generated by the delta benchmark: +200 lines.\nfunc benchExtra(arg string) {\n\ttotal := 0\n\tswitch {\n")
	lines := 12
	for i := 0; lines < 196; i++ {
		fmt.Fprintf(&g, "\tcase strings.HasPrefix(arg, \"opt%d\"):\n\t\ttotal += len(arg) * %d\n\t\tfmt.Fprintf(os.Stderr, \"option %d selected: %%s (%%d)\\n\", arg, total)\n", i, i*7+3, i)
		lines += 3
	}
	g.WriteString("\t}\n\tif total > 1000 {\n\t\tfmt.Println(\"large\")\n\t}\n}\n")
	os.WriteFile(filepath.Join(filepath.Dir(file), "zz_bench_extra.go"), []byte(g.String()), 0o644)
}

func build(b *testing.B, dir, pkg, out string, env []string) int64 {
	b.Helper()
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w -buildid=", "-o", out, "./"+pkg)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), append(env, "CGO_ENABLED=0", "GOFLAGS=-mod=mod")...)
	if o, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("go build %s: %v\n%s", pkg, err, o)
	}
	fi, err := os.Stat(out)
	if err != nil {
		b.Fatal(err)
	}
	return fi.Size()
}

func xzSize(b *testing.B, path string) int64 {
	out, err := exec.Command("xz", "-9e", "-T1", "-c", path).Output()
	if err != nil {
		b.Skipf("SKIP: xz: %v", err)
	}
	return int64(len(out))
}

func BenchmarkDelta(b *testing.B) {
	if os.Getenv("EDGEFLEET_BENCH_DELTA") == "" {
		b.Skip("SKIP: heavy (12 builds, child processes, qemu); run scripts/bench-delta.sh")
	}
	root := testkit.RepoRoot(b)
	work := b.TempDir()
	variants := map[string]func(*testing.B, string){"base": nil, "small": smallChange, "large": largeChange}
	apps := map[string]string{"hello": "testdata/apps/hello", "agent": "cmd/edgefleet-agent"}
	arches := map[string][]string{"armv6": {"GOOS=linux", "GOARCH=arm", "GOARM=6"}, "arm64": {"GOOS=linux", "GOARCH=arm64"}}
	bins := map[string]string{}
	for v, change := range variants {
		dir := filepath.Join(work, "src-"+v)
		copyModule(b, root, dir)
		if change != nil {
			for _, pkg := range apps {
				change(b, filepath.Join(dir, pkg, "main.go"))
			}
		}
		for app, pkg := range apps {
			for arch, env := range arches {
				out := filepath.Join(work, fmt.Sprintf("%s-%s-%s", app, arch, v))
				build(b, dir, pkg, out, env)
				bins[app+"/"+arch+"/"+v] = out
			}
		}
	}
	// A real change from this repository's history: commit 637c2e4
	// (agent: HTTP(S) mirrors, +176/-8 lines of agent code), built from
	// its parent and from itself.
	realCommit := ""
	if out, err := exec.Command("git", "-C", root, "rev-parse", "--verify", "637c2e4^{commit}").Output(); err == nil {
		realCommit = strings.TrimSpace(string(out))
		for i, rev := range []string{realCommit + "^", realCommit} {
			dir := filepath.Join(work, fmt.Sprintf("commit-%d", i))
			os.MkdirAll(dir, 0o755)
			arch := exec.Command("sh", "-c", fmt.Sprintf("git -C %q archive %s | tar -x -C %q", root, rev, dir))
			if o, err := arch.CombinedOutput(); err != nil {
				b.Fatalf("git archive %s: %v\n%s", rev, err, o)
			}
			for arch, env := range arches {
				out := filepath.Join(work, fmt.Sprintf("agent-%s-commit%d", arch, i))
				build(b, dir, "cmd/edgefleet-agent", out, env)
				v := "commit-base"
				if i == 1 {
					v = "commit"
				}
				bins["agent/"+arch+"/"+v] = out
			}
		}
	}
	// Wire bytes and the packer's cost.
	self, _ := os.Executable()
	var rows []string
	keys := []string{}
	for app := range apps {
		for arch := range arches {
			keys = append(keys, app+"/"+arch)
		}
	}
	sort.Strings(keys)
	for _, key := range keys {
		for _, v := range []string{"small", "large", "commit"} {
			oldP, newP := bins[key+"/base"], bins[key+"/"+v]
			if v == "commit" {
				if bins[key+"/commit"] == "" {
					continue
				}
				oldP, newP = bins[key+"/commit-base"], bins[key+"/commit"]
				v = "637c2e4 (+176/-8 lines, real)"
			}
			patchP := newP + ".bsdiff"
			d := runChild(b, self, nil, "diff", oldP, newP, "", patchP)
			pi, _ := os.Stat(patchP)
			ni, _ := os.Stat(newP)
			xz := xzSize(b, newP)
			rows = append(rows, fmt.Sprintf("| %s, %s change | %d | %d B (%.2f %%) | %d B | %.1f %% | %.1f s, %d MiB |",
				strings.Replace(key, "/", " ", 1), v, ni.Size(), pi.Size(), 100*float64(pi.Size())/float64(ni.Size()), xz, 100*float64(pi.Size())/float64(xz),
				d.elapsed.Seconds(), d.maxRSS>>20))
		}
	}
	fmt.Println("| pair | new binary | delta (of binary) | xz -9e of new | delta / xz | packer diff time, peak RSS |")
	fmt.Println("|---|---:|---:|---:|---:|---:|")
	for _, r := range rows {
		fmt.Println(r)
	}

	// Device side: the agent's own +200-line delta, armv6 and arm64.
	fmt.Println()
	fmt.Println("| apply (agent, large change) | time | peak RSS |")
	fmt.Println("|---|---:|---:|")
	for _, arch := range []string{"arm64", "armv6"} {
		key := "agent/" + arch
		oldP, newP := bins[key+"/base"], bins[key+"/large"]
		patchP := newP + ".bsdiff"
		out := filepath.Join(work, "out")
		for _, mode := range []string{"idle", "stream", "selfupdate", "copy"} {
			var best childResult
			for i := 0; i < 3; i++ {
				r := runChild(b, self, nil, mode, oldP, newP, patchP, out)
				if i == 0 || r.elapsed < best.elapsed {
					best.elapsed = r.elapsed
				}
				best.maxRSS = max(best.maxRSS, r.maxRSS)
			}
			fmt.Printf("| %s %s (host %s) | %.1f ms | %.1f MiB |\n", arch, mode, runtime.GOARCH, float64(best.elapsed.Microseconds())/1000, float64(best.maxRSS)/(1<<20))
		}
	}
	// Under qemu-arm -cpu arm1176: the armv6 test binary applies the armv6 agent delta.
	if _, err := exec.LookPath("qemu-arm"); err != nil {
		fmt.Println("qemu-arm not found: no emulated figures")
		return
	}
	armBin := filepath.Join(work, "bsdiff-armv6.test")
	cmd := exec.Command("go", "test", "-c", "-o", armBin, ".")
	cmd.Env = append(os.Environ(), "GOOS=linux", "GOARCH=arm", "GOARM=6", "CGO_ENABLED=0")
	if o, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("cross-build the test binary: %v\n%s", err, o)
	}
	key := "agent/armv6"
	oldP, newP := bins[key+"/base"], bins[key+"/large"]
	for _, mode := range []string{"stream", "selfupdate", "copy"} {
		r := runChild(b, armBin, []string{"qemu-arm", "-cpu", "arm1176"}, mode, oldP, newP, newP+".bsdiff", filepath.Join(work, "out"))
		fmt.Printf("| armv6 %s under qemu-arm -cpu arm1176 | %.1f ms | %.1f MiB (qemu's own, emulator included) |\n", mode, float64(r.elapsed.Microseconds())/1000, float64(r.maxRSS)/(1<<20))
	}
}

// intoSynced creates path, lets write fill it and fsyncs it: every mode
// that writes a binary pays for the same durability the device does.
func intoSynced(path string, write func(*os.File) error) error {
	out, err := os.Create(path)
	if err != nil {
		return err
	}
	defer out.Close()
	if err := write(out); err != nil {
		return err
	}
	return out.Sync()
}

// openInputs opens the old binary and the patch with their sizes; the
// caller closes both when err is nil.
func openInputs(oldP, patchP string) (old *os.File, oldSize int64, patch *os.File, patchSize int64, err error) {
	if old, err = os.Open(oldP); err != nil {
		return nil, 0, nil, 0, err
	}
	oi, err := old.Stat()
	if err == nil {
		patch, err = os.Open(patchP)
	}
	if err != nil {
		old.Close()
		return nil, 0, nil, 0, err
	}
	pi, err := patch.Stat()
	if err != nil {
		old.Close()
		patch.Close()
		return nil, 0, nil, 0, err
	}
	return old, oi.Size(), patch, pi.Size(), nil
}
