package fleet

import (
	"os"
	"strings"
	"testing"

	"github.com/edgefleet/edgefleet/internal/testkit"
)

// TestACLNATS runs the access matrix against a real 3-node nats-server
// cluster (JetStream + MQTT) with docs/nats/authorization.conf: its
// operator block and its device block, copied once per test device.
func TestACLNATS(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: 3-node NATS cluster")
	}
	bin := testkit.NATSServerPath(t, "the NATS ACL test")
	pw := aclPasswords()
	c := testkit.StartNATSCluster(t, bin, testkit.NATSClusterOptions{Extra: natsAuthorization(t, pw),
		ReadyUser: "operator", ReadyPassword: pw["operator"]})
	aclMatrix(t, c.Nodes[0].MQTTURL())
}

// natsAuthorization is docs/nats/authorization.conf with the operator's
// password and one copy of the example device block per device in users
// (name → password; "operator" is the operator).
func natsAuthorization(t testing.TB, users map[string]string) string {
	t.Helper()
	raw, err := os.ReadFile("../docs/nats/authorization.conf")
	if err != nil {
		t.Fatal(err)
	}
	s := string(raw)
	const begin, end = "    # BEGIN device pi-017\n", "    # END device pi-017\n"
	i, j := strings.Index(s, begin), strings.Index(s, end)
	if i < 0 || j < i {
		t.Fatalf("docs/nats/authorization.conf no longer has the %q … %q device block; update the test", strings.TrimSpace(begin), strings.TrimSpace(end))
	}
	block := s[i+len(begin) : j]
	var devices strings.Builder
	for name, pass := range users {
		if name == "operator" {
			continue
		}
		b := strings.ReplaceAll(block, "CHANGE-ME-pi-017", pass)
		devices.WriteString(strings.ReplaceAll(b, "pi-017", name))
	}
	s = s[:i] + devices.String() + s[j+len(end):]
	if !strings.Contains(s, `"CHANGE-ME-operator"`) {
		t.Fatal(`docs/nats/authorization.conf no longer has the operator password placeholder "CHANGE-ME-operator"; update the test`)
	}
	return strings.Replace(s, "CHANGE-ME-operator", users["operator"], 1)
}
