package agent

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/internal/testkit"
)

// mirrorHTTPSResumesAfterKill: a real agent fetches a release from an
// https mirror (a real nginx with a certificate from a private CA, trusted
// through mirror_ca); it is SIGKILLed right after recording its first
// chunk, and the restarted agent fetches exactly the other chunks from the
// mirror (none again, none over MQTT), then commits. A device without
// mirror_ca refuses the mirror's certificate, says so in its status, and
// installs from the broker.
func mirrorHTTPSResumesAfterKill(t *testing.T, url string) {
	bin := testkit.NginxPath(t, "the https mirror resume test")
	k := newKit(t)
	v1 := k.bundle(spec{Version: "1.0.0", Sequence: 1})
	n := chunkCount(t, k, v1)
	if n < 3 {
		t.Fatalf("the test bundle has %d chunks; want at least 3", n)
	}
	ca := testkit.NewCA(t, "", "mirror")
	mdir := t.TempDir()
	base, accessLog := testkit.StartNginxTLS(t, bin, mdir, ca.Server("nginx"))
	op := operator(t, url)
	view := fleetView(t, op)
	served := func() int {
		b, _ := os.ReadFile(accessLog)
		return bytes.Count(b, []byte(" 200 "))
	}

	// The device without mirror_ca first: the mirror fails it, the broker
	// serves it.
	plain := startMQTTDevice(t, mqttConfig(t, k, "no-mirror-ca", url))
	defer plain.stop()
	eventually(t, "the device is online", func() bool { return plain.stats() != nil && plain.a != nil })
	publishMirrored(t, op, k, v1, mdir, []string{base + "/"})
	eventually(t, "the device without mirror_ca commits 1.0.0 from the broker", func() bool { return installedIs(plain, "1.0.0", StateCommitted) })
	eventually(t, "its status says why it left the mirror", func() bool {
		for _, d := range view.Devices() {
			for _, a := range d.Apps {
				if d.Device == "no-mirror-ca" && strings.Contains(a.Note, "mirror "+base) && strings.Contains(a.Note, "certificate") && strings.Contains(a.Note, "from the broker") {
					t.Logf("note: %s", a.Note)
					return true
				}
			}
		}
		return false
	})
	if got := plain.stats().MirrorChunks.Load(); got != 0 {
		t.Errorf("the device without mirror_ca took %d chunks from a mirror it cannot verify", got)
	}
	if s := served(); s != 0 {
		t.Errorf("nginx served %d chunks to a client that refused its certificate", s)
	}

	agentBin := goBuild(t, "cmd/edgefleet-agent", native.Env(), "-s -w -X main.version=0.0.1-test")
	cmd, out, cfgPath := realAgentWith(t, agentBin, k, "mirror-resume", url, "mqtt-after-chunk", "mirror_ca: "+ca.File+"\n")
	err := cmd.Wait()
	ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if err == nil || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("the armed agent did not die at the failpoint: %v\n%s", err, out)
	}
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	// nginx logs a request when it ends: the killed agent's requests in
	// flight (up to 4) are logged as nginx notices the closed connections.
	// Wait until the log stands still before counting.
	before := served()
	for still := time.Now(); time.Since(still) < time.Second; time.Sleep(100 * time.Millisecond) {
		if n := served(); n != before {
			before, still = n, time.Now()
		}
	}
	if before < 1 {
		t.Fatalf("the killed agent fetched %d chunks from the mirror, want at least the one it recorded\n%s", before, out)
	}
	cmd, out = startRealAgent(t, agentBin, cfgPath, "")
	killAtCleanup(t, cmd, out, "mirror-resume")
	eventually(t, "the restarted agent resumes its download", func() bool {
		return strings.Contains(out.String(), fmt.Sprintf("%d chunks, 1 already here", n))
	})
	eventually(t, "the restarted agent commits 1.0.0", func() bool {
		for _, d := range view.Devices() {
			if d.Device == "mirror-resume" {
				for _, a := range d.Apps {
					if a.Version == "1.0.0" && a.State == string(StateCommitted) {
						return true
					}
				}
			}
		}
		return false
	})
	if after := served() - before; after != n-1 {
		t.Errorf("after the restart nginx served %d chunks, want exactly the %d not yet recorded\n%s", after, n-1, out)
	}
	if strings.Contains(out.String(), "from the broker") {
		t.Errorf("the agent with mirror_ca fell back to the broker:\n%s", out)
	}
}
