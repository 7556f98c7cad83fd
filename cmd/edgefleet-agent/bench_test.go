package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/agent"
)

// procKiB reads a "VmRSS:"-style field of /proc/<pid>/status in KiB.
func procKiB(tb testing.TB, pid int, field string) float64 {
	tb.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		tb.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, field+":") {
			f := strings.Fields(l)
			v, err := strconv.ParseFloat(f[1], 64)
			if err != nil {
				tb.Fatal(err)
			}
			return v
		}
	}
	tb.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// BenchmarkDaemonIdleRSS measures the resident memory of a running daemon
// supervising one app (hello), idle, and its peak after one sideload through
// the socket. Run: go test -run XXX -bench DaemonIdleRSS ./cmd/edgefleet-agent
func BenchmarkDaemonIdleRSS(b *testing.B) {
	for i := 0; i < b.N; i++ {
		d := newDevice(b, deviceOpts{})
		d.mustRun(0, "sideload", "--config", d.cfgPath, d.bundle("hello", "1.0.0", 1, helloBin(b, "1.0.0", "")))
		dm := d.startDaemon(d.cli)
		d.waitStatus("hello committed", func(st agent.DaemonStatus) bool {
			return app(st, "hello").State == agent.StateCommitted && runningVersion(st, "hello", "1.0.0")
		})
		time.Sleep(2 * time.Second) // let the runtime settle (measurement, not an assertion)
		pid := dm.cmd.Process.Pid
		idle := procKiB(b, pid, "VmRSS")
		d.mustRun(0, "sideload", "--config", d.cfgPath, d.bundle("hello", "2.0.0", 2, helloBin(b, "2.0.0", "")))
		hwm := procKiB(b, pid, "VmHWM")
		after := procKiB(b, pid, "VmRSS")
		b.ReportMetric(idle, "KiB-idle-RSS")
		b.ReportMetric(hwm, "KiB-peak-RSS")
		b.ReportMetric(after, "KiB-RSS-after-install")
	}
}
