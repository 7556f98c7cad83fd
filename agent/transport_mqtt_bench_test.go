package agent

import (
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/protocol"
)

// BenchmarkMQTTFleet measures real edgefleet-agent processes converging on
// a 4 MiB release (unencoded payload, 64 KiB chunks) from the embedded
// broker: time from publish to every device committed (includes the 1s
// health window), broker bytes sent per device, and the largest agent peak
// RSS (VmHWM). Run: go test ./agent -run XXX -bench MQTTFleet -benchtime 1x
func BenchmarkMQTTFleet(b *testing.B) {
	for _, n := range []int{10, 100} {
		b.Run(fmt.Sprintf("agents=%d", n), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				benchFleet(b, n)
			}
		})
	}
}

func benchFleet(b *testing.B, n int) {
	b.StopTimer()
	k := newKit(b)
	hello, err := os.ReadFile(buildHello(b, native, "1.0.0", ""))
	if err != nil {
		b.Fatal(err)
	}
	pad := make([]byte, 4<<20-len(hello))
	rand.Read(pad)
	big := filepath.Join(b.TempDir(), "hello-4m")
	os.WriteFile(big, append(hello, pad...), 0o755)
	rel := k.bundle(spec{Version: "1.0.0", Sequence: 1, Binary: big, Encoding: protocol.EncodingNone})
	br := startTestBroker(b, b.TempDir(), "127.0.0.1:0")
	op := operator(b, br.URL())
	view := fleetView(b, op)
	bin := goBuild(b, "cmd/edgefleet-agent", native.Env(), "-s -w -X main.version=bench")
	var pids []int
	for i := 0; i < n; i++ {
		cmd, _, _ := realAgent(b, bin, k, fmt.Sprintf("bench-%03d", i), br.URL(), "")
		pids = append(pids, cmd.Process.Pid)
		b.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); cmd.Wait() })
	}
	eventually(b, "every agent reports online", func() bool { return len(view.Devices()) == n })
	sent0 := br.BytesSent()
	start := time.Now()
	b.StartTimer()
	publish(b, op, k, rel, "")
	eventually(b, "every agent commits", func() bool { return view.Converged("hello", "1.0.0", n, StateCommitted) })
	b.StopTimer()
	elapsed := time.Since(start)
	var peak int64
	for _, pid := range pids {
		if kb := vmHWM(pid); kb > peak {
			peak = kb
		}
	}
	b.ReportMetric(float64(br.BytesSent()-sent0)/float64(n), "broker-B/device")
	b.ReportMetric(float64(peak), "agent-peak-RSS-KiB")
	b.ReportMetric(elapsed.Seconds(), "converge-s")
}

func vmHWM(pid int) int64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(raw), "\n") {
		if strings.HasPrefix(l, "VmHWM:") {
			f := strings.Fields(l)
			v, _ := strconv.ParseInt(f[1], 10, 64)
			return v
		}
	}
	return 0
}
