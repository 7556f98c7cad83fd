package agent

// Benchmarks for docs/BENCHMARKS.md (## Agent). Run:
//
//	go test -run XXX -bench . -benchtime 5x ./agent

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/edgefleet/edgefleet/hardware"
)

// bigHello is hello with extra bytes appended to reach size: still a valid
// static ELF that runs (the kernel ignores the tail), so the probe and the
// ELF checks run for real.
func bigHello(tb testing.TB, version string, size int64) string {
	src, err := os.ReadFile(buildHello(tb, native, version, ""))
	if err != nil {
		tb.Fatal(err)
	}
	tail := make([]byte, size-int64(len(src)))
	rand.Read(tail)
	p := filepath.Join(tb.TempDir(), "hello-big")
	if err := os.WriteFile(p, append(src, tail...), 0o755); err != nil {
		tb.Fatal(err)
	}
	return p
}

func benchSideload(b *testing.B, s spec) {
	k := newKit(b)
	a := k.open(Options{})
	bun := k.bundleBytes(s)
	b.SetBytes(int64(len(bun)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		if err := a.Reset(); err != nil {
			b.Fatal(err)
		}
		os.RemoveAll(filepath.Dir(k.appPath))
		os.Remove(k.cfg.StatePath() + ".corrupt-*")
		b.StartTimer()
		if _, err := a.Install(context.Background(), bytes.NewReader(bun), nil); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSideload: bundle in memory → new binary swapped in (verify,
// compat, storage, stage with decode and hashes, fsync, probe, swap).
func BenchmarkSideload(b *testing.B) {
	b.Run("hello-xz", func(b *testing.B) { benchSideload(b, spec{Version: "1.0.0", Sequence: 1}) })
	b.Run("32MiB-none", func(b *testing.B) {
		benchSideload(b, spec{Version: "1.0.0", Sequence: 1, Binary: bigHello(b, "1.0.0", 32<<20), Encoding: "none"})
	})
}

// BenchmarkCopyFsync is the floor: copy the same executable bytes into a
// file next to the target and fsync it.
func BenchmarkCopyFsync(b *testing.B) {
	for _, c := range []struct {
		name string
		src  func() string
	}{
		{"hello", func() string { return buildHello(b, native, "1.0.0", "") }},
		{"32MiB", func() string { return bigHello(b, "1.0.0", 32<<20) }},
	} {
		b.Run(c.name, func(b *testing.B) {
			data, _ := os.ReadFile(c.src())
			dst := filepath.Join(b.TempDir(), "copy")
			b.SetBytes(int64(len(data)))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				f, err := os.Create(dst)
				if err != nil {
					b.Fatal(err)
				}
				f.Write(data)
				f.Sync()
				f.Close()
			}
		})
	}
}

// maxRSSKiB runs the test agent and returns its peak RSS (VmHWM, as the
// process itself reads it at exit; the parent's rusage would also count
// the pre-exec image of the fork).
func maxRSSKiB(tb testing.TB, k *kit, args ...string) int64 {
	cmd := exec.Command(buildTestAgent(tb, native), append([]string{"-config", k.cfgPath}, args...)...)
	cmd.Env = append(os.Environ(), "TESTAGENT_REPORT_HWM=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		tb.Fatalf("testagent %v: %v\n%s", args, err, out)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "VmHWM:" {
			n, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				tb.Fatal(err)
			}
			return n
		}
	}
	tb.Fatalf("no VmHWM in %q", out)
	return 0
}

// TestInstallMemoryBounded: peak RSS of a real agent process installing a
// 32 MiB payload stays within 8 MiB of the same process doing nothing but
// open its state (DESIGN decision 9), with an xz payload (1 MiB dictionary)
// and an unencoded one.
func TestInstallMemoryBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("SKIP: builds and installs 32 MiB; not in -short")
	}
	big := bigHello(t, "1.0.0", 32<<20)
	for _, enc := range []string{"none", "xz"} {
		t.Run(enc, func(t *testing.T) {
			if enc == "xz" {
				// Mostly compressible 32 MiB (xz of random data in pure Go is slow to make).
				src, _ := os.ReadFile(buildHello(t, native, "1.0.0", ""))
				data := append(src, make([]byte, 32<<20-len(src))...)
				copy(data[len(src):], bytes.Repeat([]byte("edgefleet "), (32<<20-len(src))/10))
				big = filepath.Join(t.TempDir(), "hello-big-xz")
				os.WriteFile(big, data, 0o755)
			}
			k := newKit(t)
			bun := k.bundle(spec{Version: "1.0.0", Sequence: 1, Binary: big, Encoding: enc})
			idle := maxRSSKiB(t, k, "status")
			peak := maxRSSKiB(t, k, "install", bun)
			t.Logf("%s: idle %d KiB, peak while installing 32 MiB %d KiB (+%d KiB)", enc, idle, peak, peak-idle)
			if peak > idle+8<<10 {
				t.Fatalf("peak RSS %d KiB exceeds idle %d KiB + 8 MiB while installing a 32 MiB payload", peak, idle)
			}
		})
	}
}

// BenchmarkAgentBinarySize reports the stripped size of cmd/edgefleet-agent
// per built-in profile (CGO_ENABLED=0, -ldflags "-s -w").
func BenchmarkAgentBinarySize(b *testing.B) {
	for _, p := range hardware.Profiles() {
		b.Run(p.Name, func(b *testing.B) {
			bin := goBuild(b, "cmd/edgefleet-agent", p.Env(), "-s -w")
			fi, err := os.Stat(bin)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(fi.Size())/(1<<20), "MiB")
			for i := 0; i < b.N; i++ {
			}
		})
	}
}

// BenchmarkRecoverCommitted is a daemon start's recovery of one committed
// app whose binary is 8 MiB (about an agent's size): since issue 14 it
// hashes the binary at the app path against the record. Its floor is
// BenchmarkRecoverHashFloor, the sha256 of the same file alone.
func BenchmarkRecoverCommitted(b *testing.B) {
	k := newKit(b)
	a := k.open(Options{})
	tg := native
	if tg.GOARCH == "arm" { // under qemu-arm -cpu arm1176, a Pi Zero
		tg.GOARM = "6"
	}
	k.installCommitted(a, spec{Version: "1.0.0", Sequence: 1, Target: tg, Binary: bigHello(b, "1.0.0", 8<<20), Encoding: "none"})
	b.SetBytes(8 << 20)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		acts, err := a.Recover(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		for _, act := range acts {
			if act.Action != "boot-on-trial" {
				b.Fatalf("recovery of a settled app did something: %+v", act)
			}
		}
	}
}

// BenchmarkRecoverHashFloor: the sha256 of the same 8 MiB file, read the
// way recovery reads it.
func BenchmarkRecoverHashFloor(b *testing.B) {
	p := bigHello(b, "1.0.0", 8<<20)
	b.SetBytes(8 << 20)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := fileSHA256(p); err != nil {
			b.Fatal(err)
		}
	}
}
