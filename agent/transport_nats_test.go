package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/edgefleet/edgefleet/fleet"
	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/protocol"
)

// The clustered engine: real edgefleet-agent processes against a real
// 3-node nats-server cluster (JetStream + MQTT, retained messages
// replicated on every node; internal/testkit/nats.go). Each device is
// configured with all three nodes (broker.urls; each device dials them
// in its own order, so the fleet spreads over the nodes). The operator
// and the status view are on node 0, which is never killed: the statuses
// of devices on other nodes reach it through the cluster.

// natsFleet is a cluster, its devices (ids by node) and an operator view.
type natsFleet struct {
	c    *testkit.NATSCluster
	k    *kit
	view *fleet.FleetView
	// opNode is the node of the operator connection; down marks killed
	// nodes.
	opNode int
	down   map[int]bool
	ids    []string
	out    []*syncBuffer // each device's agent output, by index in ids
	op     paho.Client
}

func startNATSFleet(t *testing.T, devices int) *natsFleet {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: 3-node NATS cluster with real agents")
	}
	bin := testkit.NATSServerPath(t, "the NATS cluster test")
	c := testkit.StartNATSCluster(t, bin, testkit.NATSClusterOptions{})
	f := &natsFleet{c: c, k: newKit(t)}
	f.op = operator(t, c.Nodes[0].MQTTURL())
	f.view = fleetView(t, f.op)
	agentBin := goBuild(t, "cmd/edgefleet-agent", native.Env(), "-s -w -X main.version=0.0.1-test")
	var urls []string
	for _, n := range c.Nodes {
		urls = append(urls, n.MQTTURL())
	}
	for j := 0; j < devices; j++ {
		id := fmt.Sprintf("nats-%02d", j) // MQTT client ids on NATS: no '.'
		cfg := mqttConfig(t, f.k, id, urls[0])
		cfgPath := filepath.Join(filepath.Dir(cfg.DataDir), "agent.yaml")
		yaml := fmt.Sprintf("device_id: %s\ndata_dir: %s\ntrusted_keys: [%s]\napps:\n  - name: hello\n    path: %s\n    args: [\"--serve\"]\n    health:\n      window: 1s\nbroker:\n  urls: [%s]\n  channel: stable\n",
			cfg.DeviceID, cfg.DataDir, cfg.TrustedKeys[0], cfg.Apps[0].Path, strings.Join(urls, ", "))
		if err := os.WriteFile(cfgPath, []byte(yaml), 0o644); err != nil {
			t.Fatal(err)
		}
		cmd, out := startRealAgent(t, agentBin, cfgPath, "")
		killAtCleanup(t, cmd, out, id)
		f.ids = append(f.ids, id)
		f.out = append(f.out, out)
	}
	return f
}

// on lists the devices whose agent says it is connected to node i now.
func (f *natsFleet) on(i int) []string {
	var ids []string
	for j, id := range f.ids {
		if lastConnected(f.out[j]) == f.c.Nodes[i].MQTTURL() {
			ids = append(ids, id)
		}
	}
	return ids
}

// publish publishes with fleet.PublishFailover, as the operator tools
// do: through the operator's node, and through the next live one when
// that fails (NATS closes a client whose pipelined QoS 1 publish
// JetStream did not acknowledge in time, and a node whose retained index
// went stale after another node died does not hold the chunks it
// acknowledged). The status view moves with the operator.
func (f *natsFleet) publish(t *testing.T, path string) {
	t.Helper()
	var urls []string
	for i := range f.c.Nodes {
		if n := (f.opNode + i) % len(f.c.Nodes); !f.down[n] {
			urls = append(urls, f.c.Nodes[n].MQTTURL())
		}
	}
	moved := false
	_, err := fleet.PublishFailover(context.Background(), &f.op, fleet.ClientOptions{Broker: strings.Join(urls, ",")}, path,
		fleet.PublishOptions{Keyring: protocol.NewKeyring(f.k.pub), Channel: "stable"},
		func(from string, why error) {
			moved = true
			t.Logf("publish through %s failed (%v); the operator moves to the next node", from, why)
		})
	if err != nil {
		t.Fatal(err)
	}
	if moved {
		op := f.op
		t.Cleanup(func() { op.Disconnect(100) })
		for i, n := range f.c.Nodes {
			if n.MQTTURL() == fleet.ConnectedBroker(op) {
				f.opNode = i
			}
		}
		f.view = fleetView(t, f.op)
	}
}

func (f *natsFleet) all() []string { return f.ids }

func (f *natsFleet) committed(id, version string) bool {
	a := deviceApp(f.view, id)
	return a.Version == version && a.State == StateCommitted
}

// waitCommitted polls the status view until every device in ids reports
// version committed, or until limit has passed since start; it returns
// when each device got there (measured from start) and the ones that did
// not. limit bounds the test; it is not an assertion about speed unless
// the caller makes it one and says why.
func (f *natsFleet) waitCommitted(ids []string, version string, start time.Time, limit time.Duration) (map[string]time.Duration, []string) {
	at := map[string]time.Duration{}
	for {
		for _, id := range ids {
			if _, ok := at[id]; !ok && f.committed(id, version) {
				at[id] = time.Since(start)
			}
		}
		if len(at) == len(ids) || time.Since(start) > limit {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	var missing []string
	for _, id := range ids {
		if _, ok := at[id]; !ok {
			missing = append(missing, id)
		}
	}
	return at, missing
}

func spread(at map[string]time.Duration) string {
	var ds []time.Duration
	for _, d := range at {
		ds = append(ds, d)
	}
	if len(ds) == 0 {
		return "none"
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return fmt.Sprintf("first %.1fs, last %.1fs (%d devices)", ds[0].Seconds(), ds[len(ds)-1].Seconds(), len(ds))
}

func (f *natsFleet) describe(ids []string) string {
	var b strings.Builder
	for _, id := range ids {
		a := deviceApp(f.view, id)
		fmt.Fprintf(&b, "\n  %s: version %q state %q note %q last_error %q", id, a.Version, a.State, a.Note, a.LastError)
	}
	fmt.Fprintf(&b, "\nretained messages stream, as each node sees it:\n%s", f.c.RetainedReport())
	return b.String()
}

// healthyAfter reports, once, how long after start node i first said it
// was healthy (or that it did not within a minute).
func (f *natsFleet) healthyAfter(i int, start time.Time) <-chan string {
	ch := make(chan string, 1)
	go func() {
		for time.Since(start) < time.Minute {
			if ok, _ := f.c.Healthy(i); ok {
				ch <- fmt.Sprintf("%.1fs later", time.Since(start).Seconds())
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		ch <- "not within a minute"
	}()
	return ch
}

// TestNATSClusterSteadyState: devices spread over the three nodes converge
// on a release and then on the next one, published on node 0.
func TestNATSClusterSteadyState(t *testing.T) {
	f := startNATSFleet(t, 6)
	for _, v := range []struct {
		seq     uint64
		version string
	}{{1, "1.0.0"}, {2, "2.0.0"}} {
		path := f.k.bundle(spec{Version: v.version, Sequence: v.seq})
		start := time.Now()
		f.publish(t, path)
		at, missing := f.waitCommitted(f.all(), v.version, start, 60*time.Second)
		if len(missing) > 0 {
			t.Fatalf("%v never committed %s (others: %s):%s", missing, v.version, spread(at), f.describe(missing))
		}
		t.Logf("steady state: %s committed on 6 devices over 3 nodes: %s", v.version, spread(at))
	}
}

// nodeFailureTests gates the node-failure tests: NATS v2.15.2's MQTT
// layer is not deterministic after a node dies (a surviving node's
// retained index can lag the stream for longer than the test waits; a
// publish can be dropped mid-way), so they fail now and then for reasons
// in the broker, and CI must not depend on them.
func nodeFailureTests(t *testing.T) {
	t.Helper()
	if os.Getenv("EDGEFLEET_NATS_FAILURE_TESTS") != "1" {
		t.Skip("SKIPPED: NATS node-failure test; set EDGEFLEET_NATS_FAILURE_TESTS=1 to run it. NATS v2.15.2 serves a stale retained set from a surviving node after a node dies in some runs (see docs/brokers.md for the pass rates measured), so it is not part of the default run")
	}
}

// killNode SIGKILLs node i and returns the devices that were on it (by
// their own logs) and when.
func (f *natsFleet) killNode(t *testing.T, i int) ([]string, time.Time) {
	t.Helper()
	was := f.on(i)
	f.c.Kill(i)
	if f.down == nil {
		f.down = map[int]bool{}
	}
	f.down[i] = true
	return was, time.Now()
}

// TestNATSClusterPublishWhileNodeDown: node n3 is killed; its devices move
// to the other nodes (broker.urls), and a release published meanwhile
// reaches every device, including through a node that may serve a stale
// retained set (a download that stalls there moves to another node).
// Then n3 comes back and the fleet takes the next release.
func TestNATSClusterPublishWhileNodeDown(t *testing.T) {
	nodeFailureTests(t)
	f := startNATSFleet(t, 6)
	v1 := f.k.bundle(spec{Version: "1.0.0", Sequence: 1})
	start := time.Now()
	f.publish(t, v1)
	at, missing := f.waitCommitted(f.all(), "1.0.0", start, 60*time.Second)
	if len(missing) > 0 {
		t.Fatalf("%v never committed 1.0.0 with every node up:%s", missing, f.describe(missing))
	}
	t.Logf("all nodes up: 1.0.0 committed: %s", spread(at))

	was, killed := f.killNode(t, 2)
	t.Logf("node n3 killed; devices that were on it: %v", was)
	v2 := f.k.bundle(spec{Version: "2.0.0", Sequence: 2})
	start = time.Now()
	f.publish(t, v2)
	at, missing = f.waitCommitted(f.all(), "2.0.0", start, 90*time.Second)
	if len(missing) > 0 {
		t.Fatalf("with node n3 down, devices %v never committed 2.0.0 (others: %s):%s", missing, spread(at), f.describe(missing))
	}
	t.Logf("node n3 down: every device committed 2.0.0 through the other nodes: %s after the publish (%.1fs after the kill)", spread(at), time.Since(killed).Seconds())

	f.c.Restart(2)
	f.down[2] = false
	restarted := time.Now()
	healthy := f.healthyAfter(2, restarted)
	v3 := f.k.bundle(spec{Version: "3.0.0", Sequence: 3})
	f.publish(t, v3)
	at, missing = f.waitCommitted(f.all(), "3.0.0", restarted, 90*time.Second)
	t.Logf("node n3 restarted: it reported itself healthy (/healthz) %s", <-healthy)
	if len(missing) > 0 {
		t.Fatalf("after node n3 restarted, devices %v had not committed 3.0.0 %.0fs later (others: %s):%s",
			missing, time.Since(restarted).Seconds(), spread(at), f.describe(missing))
	}
	t.Logf("node n3 back: 3.0.0 committed: %s after its restart", spread(at))
}

// TestNATSClusterNodeKilledMidDelivery: node n2 is SIGKILLed right after a
// release is published, while devices download: every device converges,
// those of n2 through the other nodes (broker.urls).
func TestNATSClusterNodeKilledMidDelivery(t *testing.T) {
	nodeFailureTests(t)
	f := startNATSFleet(t, 6)
	v0 := f.k.bundle(spec{Version: "0.9.0", Sequence: 1})
	f.publish(t, v0)
	if at, missing := f.waitCommitted(f.all(), "0.9.0", time.Now(), 60*time.Second); len(missing) > 0 {
		t.Fatalf("%v never committed 0.9.0 with every node up (others: %s):%s", missing, spread(at), f.describe(missing))
	}
	victim := 1
	if len(f.on(1)) == 0 {
		victim = 2 // no device chose n2 first: kill the other non-operator node
	}
	v1 := f.k.bundle(spec{Version: "1.0.0", Sequence: 2})
	start := time.Now()
	f.publish(t, v1)
	on := f.on(victim)
	testkit.Eventually(t, "a device sees the release", func() bool {
		for _, id := range f.ids {
			if a := deviceApp(f.view, id); a.Version == "1.0.0" || a.Target == "1.0.0" {
				return true
			}
		}
		return false
	})
	_, killed := f.killNode(t, victim)
	t.Logf("node n%d killed %.1fs after the publish; its devices: %v", victim+1, killed.Sub(start).Seconds(), on)
	at, missing := f.waitCommitted(f.all(), "1.0.0", start, 90*time.Second)
	if len(missing) > 0 {
		t.Fatalf("with node n%d killed mid-delivery, devices %v never committed 1.0.0 (others: %s):%s", victim+1, missing, spread(at), f.describe(missing))
	}
	var last time.Duration
	for _, id := range on {
		last = max(last, at[id]-killed.Sub(start))
	}
	t.Logf("node n%d killed mid-delivery: every device committed 1.0.0: %s after the publish; the killed node's devices %.1fs after the kill at the latest", victim+1, spread(at), last.Seconds())
}
