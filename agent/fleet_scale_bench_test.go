package agent

import (
	"crypto/rand"
	"fmt"
	"github.com/edgefleet/edgefleet/fleet"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/protocol"
)

// BenchmarkMQTTFleetBrokers (issue 9): N real agents (default 100,
// $EDGEFLEET_BENCH_AGENTS) converge on a ~4 MiB xz release from the
// embedded broker and from Mosquitto, in one run. Reported per broker:
// time from publish to every device committed (includes the 1 s health
// window), the agents' CPU seconds per install (utime+stime of each agent
// process, publish → committed), the largest agent peak RSS over its idle
// RSS, and the floor of the same work done by stock tools on the same
// payload (xz -d, sha256sum, cp, sync), CPU seconds.
// Run: go test ./agent -run XXX -bench MQTTFleetBrokers -benchtime 1x
func BenchmarkMQTTFleetBrokers(b *testing.B) {
	n := 100
	if v, err := strconv.Atoi(os.Getenv("EDGEFLEET_BENCH_AGENTS")); err == nil && v > 0 {
		n = v
	}
	brokers := []string{"embedded", "mosquitto"}
	if v := os.Getenv("EDGEFLEET_BENCH_BROKERS"); v != "" {
		brokers = strings.Fields(v)
	}
	for _, broker := range brokers {
		b.Run(fmt.Sprintf("broker=%s/agents=%d", broker, n), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				benchFleetOn(b, broker, n)
			}
		})
	}
}

func benchFleetOn(b *testing.B, broker string, n int) {
	b.StopTimer()
	k := newKit(b)
	hello, err := os.ReadFile(buildHello(b, native, "1.0.0", ""))
	if err != nil {
		b.Fatal(err)
	}
	pad := make([]byte, 4<<20-len(hello))
	rand.Read(pad) // incompressible: the xz payload stays ~4 MiB
	big := filepath.Join(b.TempDir(), "hello-4m")
	os.WriteFile(big, append(hello, pad...), 0o755)
	rel := k.bundle(spec{Version: "1.0.0", Sequence: 1, Binary: big, Encoding: protocol.EncodingXZ})
	var url string
	if broker == "embedded" {
		url = startTestBroker(b, b.TempDir(), "127.0.0.1:0").URL()
	} else {
		url = startPlainMosquitto(b)
	}
	op := operator(b, url)
	view := fleetView(b, op)
	bin := goBuild(b, "cmd/edgefleet-agent", native.Env(), "-s -w -X main.version=bench")
	var pids []int
	for i := 0; i < n; i++ {
		cmd, _, _ := realAgent(b, bin, k, fmt.Sprintf("bench-%03d", i), url, "")
		pids = append(pids, cmd.Process.Pid)
		b.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); cmd.Wait() })
	}
	eventually(b, "every agent reports online", func() bool { return len(view.Devices()) == n })
	time.Sleep(time.Second) // let startup settle before the idle samples
	cpu0 := make([]float64, n)
	idle := make([]int64, n)
	for i, pid := range pids {
		cpu0[i], idle[i] = procCPU(pid), vmRSS(pid)
	}
	// All in: each agent and the app it supervises (its process group).
	b.ReportMetric(float64(groupRSS(pids))/float64(n)/1024, "device-idle-MiB")
	start := time.Now()
	b.StartTimer()
	publish(b, op, k, rel, "")
	waitFleet(b, view, n, 15*time.Minute)
	b.StopTimer()
	elapsed := time.Since(start)
	var cpu float64
	var over int64
	for i, pid := range pids {
		cpu += procCPU(pid) - cpu0[i]
		over = max(over, vmHWM(pid)-idle[i])
	}
	b.ReportMetric(elapsed.Seconds(), "converge-s")
	b.ReportMetric(cpu/float64(n), "agent-cpu-s/install")
	b.ReportMetric(float64(over), "agent-peak-over-idle-KiB")
	b.ReportMetric(stockFloor(b, k, rel), "floor-cpu-s")
}

// stockFloor is the CPU the same install takes with stock tools: xz -d
// the payload, sha256sum it, cp the result, sync it.
func stockFloor(b *testing.B, k *kit, bundle string) float64 {
	f, err := os.Open(bundle)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	bd, err := protocol.OpenBundle(f, protocol.NewKeyring(k.pub))
	if err != nil {
		b.Fatal(err)
	}
	pr, err := bd.Payload()
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	xzPath := filepath.Join(dir, "payload.xz")
	out, _ := os.Create(xzPath)
	if _, err := io.Copy(out, pr); err != nil {
		b.Fatal(err)
	}
	out.Close()
	var total time.Duration
	for _, c := range [][]string{
		{"sh", "-c", "xz -d -c payload.xz > exe"},
		{"sha256sum", "payload.xz"},
		{"cp", "exe", "exe.new"},
		{"sync", "exe.new"},
	} {
		cmd := exec.Command(c[0], c[1:]...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("%s: %v\n%s", strings.Join(c, " "), err, out)
		}
		total += cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	}
	return total.Seconds()
}

// waitFleet waits until n devices report hello 1.0.0 committed, logging
// the count every 15 s; after limit it fails with the count and the
// states of the others (a large fleet on 2 cores can take minutes, longer
// than testkit.Hang).
func waitFleet(b *testing.B, view *fleet.FleetView, n int, limit time.Duration) {
	start := time.Now()
	last := start
	for {
		committed, states := 0, map[string]int{}
		for _, d := range view.Devices() {
			for _, a := range d.Apps {
				if a.App == "hello" && a.Version == "1.0.0" && a.State == string(StateCommitted) {
					committed++
				} else if a.App == "hello" {
					states[a.Version+" "+a.State]++
				}
			}
		}
		if committed >= n {
			return
		}
		if time.Since(last) >= 15*time.Second {
			last = time.Now()
			b.Logf("%.0fs: %d of %d committed; others %v", time.Since(start).Seconds(), committed, n, states)
		}
		if time.Since(start) > limit {
			b.Fatalf("after %s %d of %d devices committed 1.0.0; others %v", limit, committed, n, states)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// groupRSS sums the resident memory (KiB) of every process whose process
// group is one of pgids.
func groupRSS(pgids []int) int64 {
	want := map[int]bool{}
	for _, p := range pgids {
		want[p] = true
	}
	ents, _ := os.ReadDir("/proc")
	var sum int64
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(raw)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:]) // state ppid pgrp ...
		if len(f) > 2 {
			if g, _ := strconv.Atoi(f[2]); want[g] {
				sum += vmRSS(pid)
			}
		}
	}
	return sum
}

// procCPU is a process's utime+stime in seconds (/proc/PID/stat).
func procCPU(pid int) float64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(raw)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	u, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (u + st) / 100 // USER_HZ is 100 on Linux
}

// vmRSS is a process's resident set in KiB.
func vmRSS(pid int) int64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(raw), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			v, _ := strconv.ParseInt(strings.Fields(l)[1], 10, 64)
			return v
		}
	}
	return 0
}
