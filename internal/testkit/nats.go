package testkit

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// NATSServerVersion is the nats-server scripts/test.sh installs into
// .tools/bin (go install github.com/nats-io/nats-server/v2@NATSServerVersion).
const NATSServerVersion = "v2.15.2"

// NATSServerPath is the nats-server executable: $EDGEFLEET_NATS_SERVER,
// then .tools/bin/nats-server under the repository root (where
// scripts/test.sh installs it), then PATH. When there is none it skips t
// loudly, saying what did not run.
func NATSServerPath(t testing.TB, what string) string {
	t.Helper()
	if p := os.Getenv("EDGEFLEET_NATS_SERVER"); p != "" {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	p := filepath.Join(RepoRoot(t), ".tools", "bin", "nats-server")
	if _, err := os.Stat(p); err == nil {
		return p
	}
	if p, err := exec.LookPath("nats-server"); err == nil {
		return p
	}
	t.Skipf("SKIPPED: nats-server is not installed (scripts/test.sh installs it: go install github.com/nats-io/nats-server/v2@%s into .tools/bin); %s did not run", NATSServerVersion, what)
	return ""
}

// NATSClusterOptions configure StartNATSCluster. The zero value is a
// 3-node cluster with JetStream and MQTT, no authorization.
type NATSClusterOptions struct {
	// Nodes is the cluster size (default 3).
	Nodes int
	// Extra is appended to every node's configuration (e.g. an
	// authorization block). It may use %NODE% for the node's name.
	Extra string
	// ReadyUser and ReadyPassword log the readiness probe in (default:
	// anonymous). With an authorization block in Extra, set them: a node
	// creates its MQTT JetStream streams on the first client it accepts,
	// and a probe that is refused proves nothing about them (a test's first
	// real client then timed out persisting its session on a loaded
	// machine: "unable to persist session … timeout after 5s").
	ReadyUser, ReadyPassword string
}

// NATSNode is one nats-server of a NATSCluster. Its ports, configuration
// file and JetStream store stay the same across Kill and Restart.
type NATSNode struct {
	Name                                        string
	ClientPort, ClusterPort, MQTTPort, HTTPPort int
	StoreDir, ConfPath                          string
	// Log collects the node's output across restarts.
	Log *Buffer

	cmd    *exec.Cmd
	exited chan error
}

// MQTTURL is the node's MQTT listener as a broker URL (tcp://127.0.0.1:port).
func (n *NATSNode) MQTTURL() string { return fmt.Sprintf("tcp://127.0.0.1:%d", n.MQTTPort) }

// Running says whether the node's process is up (started and not killed).
func (n *NATSNode) Running() bool { return n.cmd != nil }

// NATSCluster is a cluster of real nats-server processes on loopback
// ports, each with JetStream (its own store directory and server_name) and
// an MQTT listener, routed to each other; the MQTT streams (sessions and
// retained messages) are replicated on every node (mqtt { stream_replicas }).
type NATSCluster struct {
	t     testing.TB
	bin   string
	Nodes []*NATSNode

	readyUser, readyPassword string
}

// StartNATSCluster starts the cluster with nats-server at bin (see
// NATSServerPath) and returns once every node's MQTT port accepts
// connections, every node reports itself healthy (/healthz) and the
// JetStream meta group has a leader that every node knows. Every node is
// killed when the test ends, and the logs are written when it failed.
func StartNATSCluster(t testing.TB, bin string, o NATSClusterOptions) *NATSCluster {
	t.Helper()
	if o.Nodes == 0 {
		o.Nodes = 3
	}
	c := &NATSCluster{t: t, bin: bin, readyUser: o.ReadyUser, readyPassword: o.ReadyPassword}
	root := t.TempDir()
	for i := 0; i < o.Nodes; i++ {
		n := &NATSNode{
			Name:        fmt.Sprintf("n%d", i+1),
			ClientPort:  FreePort(t),
			ClusterPort: FreePort(t),
			MQTTPort:    FreePort(t),
			HTTPPort:    FreePort(t),
			Log:         &Buffer{},
		}
		n.StoreDir = filepath.Join(root, n.Name, "js")
		n.ConfPath = filepath.Join(root, n.Name, "nats.conf")
		if err := os.MkdirAll(n.StoreDir, 0o700); err != nil {
			t.Fatal(err)
		}
		c.Nodes = append(c.Nodes, n)
	}
	for _, n := range c.Nodes {
		var routes []string
		for _, m := range c.Nodes {
			if m != n {
				routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", m.ClusterPort))
			}
		}
		conf := fmt.Sprintf(`server_name: %s
listen: 127.0.0.1:%d
http: 127.0.0.1:%d
jetstream {
  store_dir: %q
}
cluster {
  name: edgefleet-test
  listen: 127.0.0.1:%d
  routes: [%s]
}
mqtt {
  listen: 127.0.0.1:%d
  # Sessions and retained messages on every node: they survive a node.
  stream_replicas: %d
}
`, n.Name, n.ClientPort, n.HTTPPort, n.StoreDir, n.ClusterPort, strings.Join(routes, ", "), n.MQTTPort, o.Nodes)
		conf += strings.ReplaceAll(o.Extra, "%NODE%", n.Name)
		if err := os.WriteFile(n.ConfPath, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for _, n := range c.Nodes {
			c.kill(n)
			if t.Failed() {
				t.Logf("nats-server %s log:\n%s", n.Name, n.Log)
			}
		}
	})
	for _, n := range c.Nodes {
		c.start(n)
	}
	c.WaitReady()
	return c
}

// URLs are the nodes' MQTT URLs, in node order.
func (c *NATSCluster) URLs() []string {
	var u []string
	for _, n := range c.Nodes {
		u = append(u, n.MQTTURL())
	}
	return u
}

func (c *NATSCluster) start(n *NATSNode) {
	c.t.Helper()
	fmt.Fprintf(n.Log, "=== %s: starting %s\n", time.Now().Format(time.RFC3339Nano), n.Name)
	cmd := exec.Command(c.bin, "-c", n.ConfPath)
	cmd.Stdout, cmd.Stderr = n.Log, n.Log
	if err := cmd.Start(); err != nil {
		c.t.Fatalf("start nats-server %s: %v", n.Name, err)
	}
	n.cmd = cmd
	n.exited = make(chan error, 1)
	go func() { n.exited <- cmd.Wait() }()
}

func (c *NATSCluster) kill(n *NATSNode) {
	if n.cmd == nil {
		return
	}
	n.cmd.Process.Signal(syscall.SIGKILL)
	<-n.exited
	fmt.Fprintf(n.Log, "=== %s: %s killed (SIGKILL)\n", time.Now().Format(time.RFC3339Nano), n.Name)
	n.cmd = nil
}

// Kill SIGKILLs node i and waits for the process to be gone: no clean
// shutdown, no last words, as when a machine loses power.
func (c *NATSCluster) Kill(i int) { c.kill(c.Nodes[i]) }

// Restart starts node i again with the same configuration, ports and
// JetStream store. It returns as soon as the node's MQTT port accepts
// connections: that is when devices can reconnect, whether or not the node
// has caught up with the cluster (use WaitReady to wait for that).
func (c *NATSCluster) Restart(i int) {
	c.t.Helper()
	n := c.Nodes[i]
	if n.cmd != nil {
		c.t.Fatalf("restart %s: it is still running", n.Name)
	}
	c.start(n)
	c.waitMQTT(n)
}

// WaitReady waits until every running node accepts MQTT connections, says
// it is healthy (/healthz: JetStream current, its streams caught up) and
// knows the JetStream meta leader.
func (c *NATSCluster) WaitReady() {
	c.t.Helper()
	for _, n := range c.Nodes {
		if n.Running() {
			c.waitMQTT(n)
		}
	}
	for _, n := range c.Nodes {
		if !n.Running() {
			continue
		}
		var last string
		deadline := time.Now().Add(Hang)
		for {
			ok, why := c.healthy(n)
			if ok {
				break
			}
			last = why
			c.checkAlive(n)
			if time.Now().After(deadline) {
				c.t.Fatalf("nats-server %s never became ready: %s\n%s", n.Name, last, n.Log)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	for _, n := range c.Nodes {
		if n.Running() {
			c.waitMQTTSession(n)
		}
	}
}

// waitMQTTSession waits until node n completes a real MQTT CONNECT: a
// healthy node can still close a new MQTT client (EOF) while its MQTT
// layer sets up its JetStream streams, more often on a loaded machine.
func (c *NATSCluster) waitMQTTSession(n *NATSNode) {
	c.t.Helper()
	deadline := time.Now().Add(Hang)
	for try := 0; ; try++ {
		opts := paho.NewClientOptions().AddBroker(n.MQTTURL()).
			SetClientID(fmt.Sprintf("testkit-ready-%d", try)).SetCleanSession(true).
			SetAutoReconnect(false).SetConnectTimeout(5 * time.Second).SetProtocolVersion(4)
		if c.readyUser != "" {
			opts.SetUsername(c.readyUser).SetPassword(c.readyPassword)
		}
		cl := paho.NewClient(opts)
		tok := cl.Connect()
		if tok.WaitTimeout(10*time.Second) && tok.Error() == nil {
			cl.Disconnect(0)
			return
		}
		c.checkAlive(n)
		if time.Now().After(deadline) {
			c.t.Fatalf("nats-server %s never completed an MQTT CONNECT: %v\n%s", n.Name, tok.Error(), n.Log)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (c *NATSCluster) checkAlive(n *NATSNode) {
	c.t.Helper()
	select {
	case err := <-n.exited:
		n.exited <- err // for kill
		c.t.Fatalf("nats-server %s exited (%v):\n%s", n.Name, err, n.Log)
	default:
	}
}

func (c *NATSCluster) waitMQTT(n *NATSNode) {
	c.t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", n.MQTTPort)
	deadline := time.Now().Add(Hang)
	for {
		conn, err := net.Dial("tcp", addr)
		if err == nil {
			conn.Close()
			return
		}
		c.checkAlive(n)
		if time.Now().After(deadline) {
			c.t.Fatalf("nats-server %s did not listen for MQTT on %s: %v\n%s", n.Name, addr, err, n.Log)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// healthy asks node n's monitoring port for /healthz and /jsz.
func (c *NATSCluster) healthy(n *NATSNode) (bool, string) {
	base := fmt.Sprintf("http://127.0.0.1:%d", n.HTTPPort)
	cl := http.Client{Timeout: 2 * time.Second}
	resp, err := cl.Get(base + "/healthz")
	if err != nil {
		return false, err.Error()
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return false, fmt.Sprintf("/healthz: %s %s", resp.Status, b)
	}
	leader, err := c.MetaLeader(n)
	if err != nil {
		return false, err.Error()
	}
	if leader == "" {
		return false, "/jsz: no JetStream meta leader yet"
	}
	return true, ""
}

// MetaLeader is the JetStream meta leader's server name as node n sees it
// ("" while there is none).
func (c *NATSCluster) MetaLeader(n *NATSNode) (string, error) {
	cl := http.Client{Timeout: 2 * time.Second}
	resp, err := cl.Get(fmt.Sprintf("http://127.0.0.1:%d/jsz", n.HTTPPort))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var jsz struct {
		Meta *struct {
			Leader string `json:"leader"`
		} `json:"meta_cluster"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&jsz); err != nil {
		return "", fmt.Errorf("/jsz of %s: %w", n.Name, err)
	}
	if jsz.Meta == nil {
		return "", nil
	}
	return jsz.Meta.Leader, nil
}

// RetainedReport describes, as each running node sees it, the JetStream
// stream holding MQTT retained messages ($MQTT_rmsgs): its leader, its
// message count and its consumers (each node feeds its in-memory retained
// index from one such consumer) with their leaders and delivered sequence.
// For logs when a test fails; errors are part of the text.
func (c *NATSCluster) RetainedReport() string {
	var b strings.Builder
	cl := http.Client{Timeout: 2 * time.Second}
	for _, n := range c.Nodes {
		if !n.Running() {
			fmt.Fprintf(&b, "%s: down\n", n.Name)
			continue
		}
		resp, err := cl.Get(fmt.Sprintf("http://127.0.0.1:%d/jsz?accounts=true&streams=true&consumers=true&config=true", n.HTTPPort))
		if err != nil {
			fmt.Fprintf(&b, "%s: /jsz: %v\n", n.Name, err)
			continue
		}
		var jsz struct {
			Meta *struct {
				Leader string `json:"leader"`
			} `json:"meta_cluster"`
			Accounts []struct {
				Streams []struct {
					Name    string `json:"name"`
					Cluster struct {
						Leader string `json:"leader"`
					} `json:"cluster"`
					State struct {
						Msgs uint64 `json:"messages"`
						Last uint64 `json:"last_seq"`
					} `json:"state"`
					Consumers []struct {
						Name    string `json:"name"`
						Cluster struct {
							Leader string `json:"leader"`
						} `json:"cluster"`
						Delivered struct {
							StreamSeq uint64 `json:"stream_seq"`
						} `json:"delivered"`
						Config struct {
							DeliverSubject string `json:"deliver_subject"`
						} `json:"config"`
					} `json:"consumer_detail"`
				} `json:"stream_detail"`
			} `json:"account_details"`
		}
		err = json.NewDecoder(io.LimitReader(resp.Body, 8<<20)).Decode(&jsz)
		resp.Body.Close()
		if err != nil {
			fmt.Fprintf(&b, "%s: /jsz: %v\n", n.Name, err)
			continue
		}
		leader := ""
		if jsz.Meta != nil {
			leader = jsz.Meta.Leader
		}
		fmt.Fprintf(&b, "%s: meta leader %q\n", n.Name, leader)
		for _, a := range jsz.Accounts {
			for _, s := range a.Streams {
				if s.Name != "$MQTT_rmsgs" {
					continue
				}
				fmt.Fprintf(&b, "  stream %s: leader %q, %d messages, last seq %d\n", s.Name, s.Cluster.Leader, s.State.Msgs, s.State.Last)
				for _, co := range s.Consumers {
					fmt.Fprintf(&b, "    consumer %s: leader %q, delivered up to seq %d, to %s\n", co.Name, co.Cluster.Leader, co.Delivered.StreamSeq, co.Config.DeliverSubject)
				}
			}
		}
	}
	return b.String()
}

// Healthy says whether node i answers /healthz with 200 and knows the
// JetStream meta leader, and if not, why.
func (c *NATSCluster) Healthy(i int) (bool, string) { return c.healthy(c.Nodes[i]) }
