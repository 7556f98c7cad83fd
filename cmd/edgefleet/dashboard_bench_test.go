package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/edgefleet/edgefleet/fleet"
	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/protocol"
)

// BenchmarkDashboardRSS10k: the resident memory of a real `edgefleet
// dashboard` process, empty (the baseline) and then holding 10,000
// devices whose statuses are retained on the embedded broker, after a
// page's first load of the whole fleet. Run with -benchtime 1x.
func BenchmarkDashboardRSS10k(b *testing.B) {
	const n = 10_000
	port := testkit.FreePort(b)
	runInBackground(b, "broker", "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--data", b.TempDir(), "--rollout-driver=false")
	url := fmt.Sprintf("tcp://127.0.0.1:%d", port)
	bin := testkit.GoBuild(b, testkit.Build{Pkg: "cmd/edgefleet"})
	var op paho.Client
	var err error
	testkit.Eventually(b, "the broker accepts the operator", func() bool {
		op, err = fleet.Connect(context.Background(), fleet.ClientOptions{Broker: url})
		return err == nil
	})
	defer op.Disconnect(100)
	for i := 0; i < b.N; i++ {
		dport := testkit.FreePort(b)
		page := fmt.Sprintf("http://127.0.0.1:%d/", dport)
		cmd := exec.Command(bin, "dashboard", "--broker", url, "--listen", fmt.Sprintf("127.0.0.1:%d", dport))
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		devices := func() int {
			res, err := http.Get(page + "api/state")
			if err != nil {
				return -1
			}
			defer res.Body.Close()
			var s struct{ Devices []json.RawMessage }
			if json.NewDecoder(res.Body).Decode(&s) != nil {
				return -1
			}
			return len(s.Devices)
		}
		testkit.Eventually(b, "the dashboard serves", func() bool { return devices() >= 0 })
		empty := vmRSS(b, cmd.Process.Pid, "VmRSS")
		// Publish the fleet (QoS 1, acknowledged), retained.
		var toks []paho.Token
		for d := 0; d < n; d++ {
			id := fmt.Sprintf("sim-%05d", d)
			s := &protocol.DeviceStatus{Schema: protocol.MQTTSchemaVersion, Device: id, Profile: "rpi3",
				CPU: "arm64 cortex-a53 (fp, asimd, evtstrm, crc32, cpuid)", AgentVersion: "0.9.0", Channel: "stable",
				Labels: protocol.Labels{"site": []string{"berlin", "paris", "oslo"}[d%3], "hw": "rev2"}, Time: time.Now().UTC(), Online: true,
				Apps: []protocol.AppReport{{App: "hello", Version: "1.0.0", Sequence: 3, State: "committed"}}}
			msg, err := s.Marshal()
			if err != nil {
				b.Fatal(err)
			}
			topic, _ := protocol.StatusTopic(id)
			toks = append(toks, op.Publish(topic, 1, true, msg))
		}
		for _, t := range toks {
			if !t.WaitTimeout(time.Minute) || t.Error() != nil {
				b.Fatalf("publish: %v", t.Error())
			}
		}
		testkit.Eventually(b, "the dashboard holds 10,000 devices", func() bool { return devices() == n })
		time.Sleep(time.Second)
		full := vmRSS(b, cmd.Process.Pid, "VmRSS")
		peak := vmRSS(b, cmd.Process.Pid, "VmHWM")
		cmd.Process.Kill()
		cmd.Wait()
		b.ReportMetric(float64(empty)/(1<<20), "empty-RSS-MiB")
		b.ReportMetric(float64(full)/(1<<20), "10k-RSS-MiB")
		b.ReportMetric(float64(peak)/(1<<20), "10k-peak-RSS-MiB")
		b.ReportMetric(float64(full-empty)/n, "B/device")
		// Clear the fleet for the next round.
		for d := 0; d < n; d++ {
			topic, _ := protocol.StatusTopic(fmt.Sprintf("sim-%05d", d))
			op.Publish(topic, 1, true, []byte{})
		}
	}
}

// vmRSS reads a memory line (VmRSS, VmHWM) of /proc/pid/status in bytes.
func vmRSS(b *testing.B, pid int, field string) int64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Skipf("SKIPPED: no /proc here (%v): the RSS benchmark reads /proc/PID/status", err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				b.Fatal(err)
			}
			return kb << 10
		}
	}
	b.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}
