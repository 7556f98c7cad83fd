package fleet

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/internal/testkit"
)

// A device that publishes at QoS 1 where it may not write is disconnected,
// and mochi warns with the whole packet: the line names the packet and its
// payload size, never its bytes as a decimal array.
func TestBrokerWarningSummarisesPacket(t *testing.T) {
	dir := t.TempDir()
	var mu sync.Mutex
	var lines []string
	o := BrokerOptions{Listen: "127.0.0.1:0", DataDir: t.TempDir(),
		Users: writeUsers(t, dir, map[string][2]string{"dev1": {"password-1", RoleDevice}})}
	o.Logf = func(f string, a ...any) {
		mu.Lock()
		defer mu.Unlock()
		lines = append(lines, fmt.Sprintf(f, a...))
	}
	b, err := StartBroker(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	c := connect(t, b.URL(), "dev1", "password-1", "dev1")
	payload := []byte(strings.Repeat("x", 4096))
	c.Publish("edgefleet/v1/device/dev2/status", 1, true, payload).WaitTimeout(2 * time.Second)
	var warn string
	testkit.Eventually(t, "the broker's warning about the refused publish", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, l := range lines {
			if strings.Contains(l, "error processing packet") {
				warn = l
				return true
			}
		}
		return false
	})
	t.Logf("warning: %s", warn)
	if !strings.Contains(warn, "payload=4096B") || !strings.Contains(warn, "edgefleet/v1/device/dev2/status") {
		t.Errorf("warning does not summarise the packet (topic, payload size): %s", warn)
	}
	if len(warn) > 600 || strings.Contains(warn, "120 120 120") {
		t.Errorf("warning is %d bytes or prints the payload: %.300s", len(warn), warn)
	}
}
