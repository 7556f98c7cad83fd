package agent

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/edgefleet/edgefleet/fleet"
	"github.com/edgefleet/edgefleet/internal/testkit"
)

// The clustered engine: real edgefleet-agent processes against a real
// 3-node nats-server cluster (JetStream + MQTT, retained messages
// replicated on every node; internal/testkit/nats.go). Each device is
// configured with one node's URL (one broker URL per agent for now), two
// devices per node. The operator and the status view are on node 0, which
// is never killed: the statuses of devices on other nodes reach it through
// the cluster.

// natsFleet is a cluster, its devices (ids by node) and an operator view.
type natsFleet struct {
	c      *testkit.NATSCluster
	k      *kit
	view   *fleet.FleetView
	byNode [][]string
	op     paho.Client
}

func startNATSFleet(t *testing.T, perNode int) *natsFleet {
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
	for i, n := range c.Nodes {
		var ids []string
		for j := 0; j < perNode; j++ {
			id := fmt.Sprintf("nats-n%d-%02d", i+1, j) // MQTT client ids on NATS: no '.'
			cmd, out, _ := realAgent(t, agentBin, f.k, id, n.MQTTURL(), "")
			killAtCleanup(t, cmd, out, id)
			ids = append(ids, id)
		}
		f.byNode = append(f.byNode, ids)
	}
	return f
}

func (f *natsFleet) all() []string {
	var ids []string
	for _, n := range f.byNode {
		ids = append(ids, n...)
	}
	return ids
}

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
	f := startNATSFleet(t, 2)
	for _, v := range []struct {
		seq     uint64
		version string
	}{{1, "1.0.0"}, {2, "2.0.0"}} {
		path := f.k.bundle(spec{Version: v.version, Sequence: v.seq})
		start := time.Now()
		publish(t, f.op, f.k, path, "")
		at, missing := f.waitCommitted(f.all(), v.version, start, 60*time.Second)
		if len(missing) > 0 {
			t.Fatalf("%v never committed %s (others: %s):%s", missing, v.version, spread(at), f.describe(missing))
		}
		t.Logf("steady state: %s committed on 6 devices over 3 nodes: %s", v.version, spread(at))
	}
}

// TestNATSClusterPublishWhileNodeDown: node 2 is SIGKILLed, a release is
// published on node 0; the devices of the two live nodes converge. Node 2
// restarts (same store) while its devices keep reconnecting to it: a
// restarting node admits clients before it has caught up with the retained
// messages published while it was down, so the devices may subscribe to a
// stale retained set; their sync marker and periodic re-reads must bring
// them to the release anyway.
func TestNATSClusterPublishWhileNodeDown(t *testing.T) {
	f := startNATSFleet(t, 2)
	v1 := f.k.bundle(spec{Version: "1.0.0", Sequence: 1})
	start := time.Now()
	publish(t, f.op, f.k, v1, "")
	at, missing := f.waitCommitted(f.all(), "1.0.0", start, 60*time.Second)
	if len(missing) > 0 {
		t.Fatalf("%v never committed 1.0.0 with every node up:%s", missing, f.describe(missing))
	}
	t.Logf("all nodes up: 1.0.0 committed: %s", spread(at))

	f.c.Kill(2)
	v2 := f.k.bundle(spec{Version: "2.0.0", Sequence: 2})
	start = time.Now()
	publish(t, f.op, f.k, v2, "")
	live := append(append([]string{}, f.byNode[0]...), f.byNode[1]...)
	at, missing = f.waitCommitted(live, "2.0.0", start, 60*time.Second)
	if len(missing) > 0 {
		t.Fatalf("with node n3 down, devices of the live nodes %v never committed 2.0.0 (others: %s):%s", missing, spread(at), f.describe(missing))
	}
	t.Logf("node n3 down: 2.0.0 committed on the live nodes' devices: %s after the publish", spread(at))
	for _, id := range f.byNode[2] {
		if f.committed(id, "2.0.0") {
			t.Errorf("%s reports 2.0.0 while its only broker is down: the status view is wrong", id)
		}
	}

	f.c.Restart(2)
	restarted := time.Now()
	healthy := f.healthyAfter(2, restarted)
	at, missing = f.waitCommitted(f.byNode[2], "2.0.0", restarted, 60*time.Second)
	t.Logf("node n3 restarted: it accepted MQTT clients at once and reported itself healthy (/healthz) %s", <-healthy)
	if len(missing) > 0 {
		t.Fatalf("after node n3 restarted, its devices %v had not committed 2.0.0 %.0fs later (others: %s):%s",
			missing, time.Since(restarted).Seconds(), spread(at), f.describe(missing))
	}
	t.Logf("node n3 restarted: its devices committed 2.0.0: %s after the restart", spread(at))
}

// TestNATSClusterNodeKilledMidDelivery: node 1 is SIGKILLed right after a
// release is published, while its devices download: the devices of the
// other nodes converge; node 1's converge once it is back.
func TestNATSClusterNodeKilledMidDelivery(t *testing.T) {
	f := startNATSFleet(t, 2)
	v1 := f.k.bundle(spec{Version: "1.0.0", Sequence: 1})
	start := time.Now()
	publish(t, f.op, f.k, v1, "")
	// Kill as soon as node 1's first device reports anything for the
	// release (it is downloading or installing).
	testkit.Eventually(t, "a device of node n2 sees the release", func() bool {
		a := deviceApp(f.view, f.byNode[1][0])
		return a.Version == "1.0.0" || a.Target == "1.0.0"
	})
	midway := !f.committed(f.byNode[1][0], "1.0.0") || !f.committed(f.byNode[1][1], "1.0.0")
	f.c.Kill(1)
	if !midway {
		t.Logf("both devices of node n2 had already committed when it was killed: this run tested a kill after delivery")
	}
	killed := time.Now()
	live := append(append([]string{}, f.byNode[0]...), f.byNode[2]...)
	at, missing := f.waitCommitted(live, "1.0.0", start, 60*time.Second)
	if len(missing) > 0 {
		t.Fatalf("with node n2 killed mid-delivery, devices of the live nodes %v never committed 1.0.0 (others: %s):%s", missing, spread(at), f.describe(missing))
	}
	t.Logf("node n2 killed %.1fs after the publish: live nodes' devices committed 1.0.0: %s after the publish", killed.Sub(start).Seconds(), spread(at))

	f.c.Restart(1)
	restarted := time.Now()
	healthy := f.healthyAfter(1, restarted)
	at, missing = f.waitCommitted(f.byNode[1], "1.0.0", restarted, 60*time.Second)
	t.Logf("node n2 restarted: it accepted MQTT clients at once and reported itself healthy (/healthz) %s", <-healthy)
	if len(missing) > 0 {
		t.Fatalf("after node n2 restarted, its devices %v had not committed 1.0.0 %.0fs later (others: %s):%s",
			missing, time.Since(restarted).Seconds(), spread(at), f.describe(missing))
	}
	t.Logf("node n2 restarted: its devices committed 1.0.0: %s after the restart", spread(at))
}
