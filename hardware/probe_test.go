package hardware

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

// probeDir holds the cross-built cpuprobe binaries, built at most once per
// test binary (lazily: fuzzing and unit tests do not pay for them).
var probeDir string

func TestMain(m *testing.M) {
	d, err := os.MkdirTemp("", "hardware-probes-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	probeDir = d
	code := m.Run()
	os.RemoveAll(d)
	os.Exit(code)
}

// probeBuild is one cross-build of hardware/internal/cpuprobe.
type probeBuild struct {
	name string // file name: "arm-5", "amd64-v3"
	env  []string
	once sync.Once
	path string
	err  error
}

var probes = map[string]*probeBuild{}
var probesMu sync.Mutex

// probe returns the path of cpuprobe built for goarch with its level
// variable ("5"/"6"/"7" for arm, "v1".."v4" for amd64, "softfloat" (the
// default) or "hardfloat" for mips and mipsle, "" otherwise).
func probe(t testing.TB, goarch, level string) string {
	t.Helper()
	name := goarch
	env := []string{"CGO_ENABLED=0", "GOOS=linux", "GOARCH=" + goarch}
	switch goarch {
	case "arm":
		env = append(env, "GOARM="+level)
		name += "-" + level
	case "amd64":
		env = append(env, "GOAMD64="+level)
		name += "-" + level
	case "mips", "mipsle":
		if level == "" {
			level = "softfloat"
		}
		env = append(env, "GOMIPS="+level)
		name += "-" + level
	}
	probesMu.Lock()
	b := probes[name]
	if b == nil {
		b = &probeBuild{name: name, env: env}
		probes[name] = b
	}
	probesMu.Unlock()
	b.once.Do(func() {
		goTool, err := exec.LookPath("go")
		if err != nil {
			goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
		}
		out := filepath.Join(probeDir, "cpuprobe-"+name)
		cmd := exec.Command(goTool, "build", "-trimpath", "-ldflags=-s -w", "-o", out, "./internal/cpuprobe")
		cmd.Env = append(os.Environ(), env...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil {
			b.err = fmt.Errorf("cross-build cpuprobe for %s: %v\n%s", name, err, stderr.Bytes())
			return
		}
		b.path = out
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

// needQEMU skips loudly when a qemu-user binary is missing.
func needQEMU(t testing.TB, bin string) string {
	t.Helper()
	p, err := exec.LookPath(bin)
	if err != nil {
		t.Skipf("SKIP: %s not found, so this CPU cannot be emulated; scripts/test.sh installs qemu-user (apt-get install qemu-user)", bin)
	}
	return p
}

// runProbe runs a probe binary under qemu-user with CPU model cpu ("" =
// natively) and returns stdout, stderr and the run error.
func runProbe(t testing.TB, qemu, cpu, bin string, args ...string) (stdout, stderr []byte, err error) {
	t.Helper()
	var cmd *exec.Cmd
	if qemu == "" {
		cmd = exec.Command(bin, args...)
	} else {
		cmd = exec.Command(needQEMU(t, qemu), append([]string{"-cpu", cpu, bin}, args...)...)
	}
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.Bytes(), e.Bytes(), err
}

// emulatedCPU runs the baseline probe for goarch under qemu with cpu and
// returns the CPU facts it read from its (emulated) auxiliary vector.
func emulatedCPU(t testing.TB, qemu, cpu, goarch string) CPUFacts {
	t.Helper()
	level := map[string]string{"arm": "5", "amd64": "v1"}[goarch]
	needQEMU(t, qemu)
	out, errOut, err := runProbe(t, qemu, cpu, probe(t, goarch, level))
	if err != nil {
		t.Fatalf("cpuprobe (%s) under %s -cpu %s: %v\n%s", goarch, qemu, cpu, err, errOut)
	}
	var c CPUFacts
	if err := json.Unmarshal(out, &c); err != nil {
		t.Fatalf("cpuprobe output: %v\n%s", err, out)
	}
	return c
}
