package fleet

import (
	"strings"
	"testing"
)

// NATS refuses MQTT client ids containing '.', and a device's name is its
// client id: a users file naming a device "pi.17" is refused when the
// broker loads it, with the id to use instead. An operator's name is not
// a client id and keeps its dots.
func TestUsersFileRefusesDottedDeviceNames(t *testing.T) {
	dir := t.TempDir()
	_, err := LoadUsers(writeUsers(t, dir, map[string][2]string{"pi.17": {"device-password", "device"}}))
	if err == nil {
		t.Fatal("a device named pi.17 was accepted")
	}
	for _, want := range []string{`"pi.17"`, "NATS", `use "pi-17" instead`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("refusal does not say %s: %v", want, err)
		}
	}
	if b, err := StartBroker(BrokerOptions{Listen: "127.0.0.1:0", DataDir: t.TempDir(), Logf: t.Logf,
		Users: writeUsers(t, t.TempDir(), map[string][2]string{"pi.17": {"device-password", "device"}})}); err == nil {
		b.Close()
		t.Fatal("the embedded broker started with a device named pi.17")
	}
	users, err := LoadUsers(writeUsers(t, t.TempDir(), map[string][2]string{"ops.alice": {"operator-password", "operator"}, "pi-17": {"device-password", "device"}}))
	if err != nil || len(users) != 2 {
		t.Fatalf("operator ops.alice and device pi-17: %v", err)
	}
}
