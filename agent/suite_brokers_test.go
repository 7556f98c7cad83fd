package agent

import (
	"testing"

	"github.com/edgefleet/edgefleet/internal/testkit"
)

// TestAgentSuiteOnBrokers is one agent suite on three brokers: each
// scenario (real agents or in-process daemons over MQTT) runs against the
// embedded broker, Mosquitto, and a node of a 3-node NATS cluster
// (JetStream + MQTT), each scenario on a fresh broker. Scenarios that need
// a broker's internals (a restart with the same data, byte counters) stay
// embedded-only elsewhere.
func TestAgentSuiteOnBrokers(t *testing.T) {
	brokers := []struct {
		name  string
		start func(t *testing.T) string
	}{
		{"embedded", func(t *testing.T) string { return startTestBroker(t, t.TempDir(), "127.0.0.1:0").URL() }},
		{"mosquitto", func(t *testing.T) string { return startPlainMosquitto(t) }},
		{"nats", func(t *testing.T) string {
			if testing.Short() {
				t.Skip("SKIPPED in -short: the 3-node NATS cluster")
			}
			c := testkit.StartNATSCluster(t, testkit.NATSServerPath(t, "the agent suite on NATS"), testkit.NATSClusterOptions{})
			return c.Nodes[1].MQTTURL()
		}},
	}
	scenarios := []struct {
		name string
		run  func(t *testing.T, url string)
	}{
		// Two releases, a crashing third rolled back, the anti-rollback floor.
		{"converge", func(t *testing.T, url string) { convergeFleet(t, url, 2) }},
		// A corrupt retained chunk is reported, and re-fetched alone once fixed.
		{"corrupt-chunk", corruptChunkRepublished},
		// A real agent SIGKILLed mid-download resumes where it was.
		{"killed-resumes", realAgentKilledMidDownloadResumes},
		// Rollout membership: cut and selector.
		{"rollout-members", rolloutMembersOnly},
		// A real agent SIGKILLed mid-download from an https mirror resumes
		// there; a device that cannot verify the mirror uses the broker.
		{"mirror-https-resume", mirrorHTTPSResumesAfterKill},
	}
	for _, b := range brokers {
		t.Run(b.name, func(t *testing.T) {
			for _, s := range scenarios {
				t.Run(s.name, func(t *testing.T) { s.run(t, b.start(t)) })
			}
		})
	}
}
