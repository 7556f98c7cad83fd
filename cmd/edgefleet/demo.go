package main

// edgefleet demo: the whole story on one machine with nothing to install
// but Go. It starts the embedded broker on loopback (with its rollout
// driver), makes throwaway keys, builds the agent and packs the sample app
// three times (the third release fails its health check on purpose),
// starts real edgefleet-agent processes in temporary device directories,
// publishes the first release to every device, rolls the second out in
// waves, and rolls the third out the same way: it fails on the first wave,
// the rollout halts by itself, and the other devices never see it.
// Everything it starts is stopped and everything it writes is removed at
// the end, also on Ctrl-C; on a failure the device logs are kept and
// named.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/edgefleet/edgefleet/fleet"
	"github.com/edgefleet/edgefleet/hardware"
	"github.com/edgefleet/edgefleet/packer"
	"github.com/edgefleet/edgefleet/protocol"
	"golang.org/x/term"
)

func init() {
	register("demo", command{summary: "run a whole fleet on this machine: broker, agents, a release, a staged rollout, and a bad one that halts itself (nothing to set up)", run: runDemo})
}

// modulePath is the module the demo builds the agent and the sample app from.
const modulePath = "github.com/edgefleet/edgefleet"

// demoApp is the sample app the demo packs, relative to the module root.
const demoApp = "./testdata/apps/hello"

// Device states as the agents report them (agent.StateCommitted, ...);
// spelled out here so the operator CLI does not import the agent.
const (
	stateCommitted  = "committed"
	stateRolledBack = "rolled-back"
	stateTrial      = "trial"
)

// demoRelease is one release the demo packs and publishes.
type demoRelease struct {
	version string
	seq     uint64
	ldflags []string // -X main.healthFail=1 for the broken one
	bundle  string
	payload int64 // encoded payload bytes (what travels)
}

// demoAgent is one device: a real edgefleet-agent process.
type demoAgent struct {
	id, dir, config, log string
	cmd                  *exec.Cmd
	done                 chan struct{} // closed when the process exited
	err                  error         // its exit status, once done
}

// demoPhase is what the summary says about one release.
type demoPhase struct {
	rel       *demoRelease
	took      time.Duration
	sent      int64 // broker bytes sent during the phase
	published int64 // chunk bytes published
}

type demo struct {
	env     *cliEnv
	out     io.Writer
	devices int
	timeout time.Duration
	window  time.Duration
	keep    bool

	root     string
	src      string
	profile  hardware.Profile
	pubPath  string
	pub      protocol.PublicKey
	priv     protocol.PrivateKey
	agentExe string
	releases []*demoRelease

	broker     *fleet.Broker
	stopDriver context.CancelFunc
	driverDone chan struct{}
	op         paho.Client
	view       *fleet.FleetView
	agents     []*demoAgent
	phases     []demoPhase

	live   *liveArea // nil unless stdout is a terminal
	stepNo int
	failed bool // keep the working directory for a look at the logs

	mu   sync.Mutex
	seen map[string]map[string]bool // device → "version/state" ever reported
	// ro is the latest control message of the stable hello rollout.
	ro *protocol.Rollout
}

func runDemo(ctx context.Context, env *cliEnv, args []string) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	devices := fs.Int("devices", 5, "number of devices (real edgefleet-agent processes), 1 to 50")
	timeout := fs.Duration("timeout", 2*time.Minute, "give up when a phase has not converged after this long")
	window := fs.Duration("health-window", 2*time.Second, "how long a new release must stay up on trial on each device")
	keep := fs.Bool("keep", false, "keep the working directory (device directories, logs, bundles, keys) at the end")
	fs.Usage = func() {
		fmt.Fprintln(env.stderr, "usage: edgefleet demo [--devices 5] [--timeout 2m] [--keep]")
		fmt.Fprintln(env.stderr, "\nRuns a broker, a fleet of real agents and three releases on this machine; run it from the edgefleet source tree.")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return 2
	}
	if fs.NArg() != 0 {
		fs.Usage()
		return 2
	}
	if *devices < 1 || *devices > 50 {
		fmt.Fprintf(env.stderr, "edgefleet demo: --devices %d: give 1 to 50\n", *devices)
		return 2
	}
	if *timeout <= 0 || *window <= 0 {
		fmt.Fprintln(env.stderr, "edgefleet demo: --timeout and --health-window must be positive")
		return 2
	}
	d := &demo{env: env, out: env.stdout, devices: *devices, timeout: *timeout, window: *window, keep: *keep,
		seen: map[string]map[string]bool{}}
	if f, ok := env.stdout.(*os.File); ok && term.IsTerminal(int(f.Fd())) && (env.getenv == nil || env.getenv("TERM") != "dumb") {
		d.live = &liveArea{w: env.stdout, fd: int(f.Fd())}
	}
	return d.run(ctx)
}

// run is the demo from start to cleanup; it returns the exit code.
func (d *demo) run(ctx context.Context) (code int) {
	start := time.Now()
	defer func() {
		d.cleanup(d.failed)
		if code == 0 {
			fmt.Fprintf(d.out, "\nDone in %s. To do this with your own program and devices: edgefleet keygen, pack, broker, publish or rollout start, status (README.md walks through them).\n", round(time.Since(start)))
		}
	}()
	if runtime.GOOS != "linux" {
		return d.fail("the demo runs edgefleet-agent, which supervises apps on Linux only; this machine runs %s", runtime.GOOS)
	}
	var err error
	if d.src, err = moduleRoot(ctx); err != nil {
		return d.fail("%v", err)
	}
	if d.profile, err = demoProfile(); err != nil {
		return d.fail("%v", err)
	}
	if d.root, err = demoDir(); err != nil {
		return d.fail("%v", err)
	}
	fmt.Fprintf(d.out, "edgefleet demo: %d devices on this machine, profile %s, one broker, three releases of the sample app hello.\n", d.devices, d.profile.Name)
	fmt.Fprintf(d.out, "Working directory: %s (removed at the end)\n", d.root)

	steps := []struct {
		title string
		run   func(context.Context) error
	}{
		{"Setting up: broker, throwaway keys, agent build, three releases", d.setup},
		{fmt.Sprintf("Starting %d devices (real edgefleet-agent processes, one directory each)", d.devices), d.startDevices},
		{"", func(ctx context.Context) error { return d.publish(ctx, d.releases[0]) }},
		{"", func(ctx context.Context) error { return d.stage(ctx, d.releases[1]) }},
		{"", func(ctx context.Context) error { return d.stage(ctx, d.releases[2]) }},
	}
	for i, s := range steps {
		d.stepNo = i + 1
		if s.title != "" {
			d.heading(s.title)
		}
		if err := s.run(ctx); err != nil {
			if ctx.Err() != nil {
				// Interrupted (Ctrl-C): nothing to look at, clean up all.
				d.live.clear()
				fmt.Fprintf(d.env.stderr, "\nedgefleet demo: interrupted; stopping the devices and cleaning up\n")
				return 1
			}
			return d.fail("%v", err)
		}
	}
	d.stepNo = len(steps) + 1
	d.heading("Summary")
	if !d.summary() {
		return d.fail("the fleet did not end where it should: see the table above")
	}
	return 0
}

// stepNo numbers the headings; the total is fixed.
const demoSteps = 6

func (d *demo) heading(title string) {
	fmt.Fprintf(d.out, "\n[%d/%d] %s\n", d.stepNo, demoSteps, title)
}

func (d *demo) fail(format string, a ...any) int {
	d.failed = true
	d.live.clear()
	fmt.Fprintf(d.env.stderr, "\nedgefleet demo: "+format+"\n", a...)
	return 1
}

// moduleRoot finds the edgefleet source tree the demo builds from.
func moduleRoot(ctx context.Context) (string, error) {
	notHere := func(why string) error {
		return fmt.Errorf("the demo builds the agent and the sample app from source, so run it from the edgefleet source tree (cd edgefleet && go run ./cmd/edgefleet demo); %s", why)
	}
	gobin, err := exec.LookPath("go")
	if err != nil {
		return "", notHere("the go command is not on PATH")
	}
	cmd := exec.CommandContext(ctx, gobin, "list", "-m", "-f", "{{.Path}}\t{{.Dir}}")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", notHere(fmt.Sprintf("`go list -m` failed here: %v: %s", err, strings.TrimSpace(stderr.String())))
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		path, dir, ok := strings.Cut(line, "\t")
		if ok && path == modulePath {
			if _, err := os.Stat(filepath.Join(dir, demoApp, "main.go")); err != nil {
				return "", notHere(fmt.Sprintf("%s has no %s", dir, demoApp))
			}
			return dir, nil
		}
	}
	return "", notHere(fmt.Sprintf("the current directory is in module %s, not %s", strings.TrimSpace(string(out)), modulePath))
}

// demoSocketTail is what follows the working directory in the longest
// path the demo creates: a device's control socket.
const demoSocketTail = "/devices/demo-50/data/agent.sock"

// demoDir makes the working directory in $TMPDIR, or in /tmp when $TMPDIR
// is too long for the agents' control sockets (a Unix socket path has at
// most 107 bytes).
func demoDir() (string, error) {
	base := os.TempDir()
	if len(base)+len("/edgefleet-demo-0123456789")+len(demoSocketTail) > 107 {
		base = "/tmp"
	}
	dir, err := os.MkdirTemp(base, "edgefleet-demo-")
	if err != nil {
		return "", fmt.Errorf("cannot create a working directory in %s: %w", base, err)
	}
	if len(dir)+len(demoSocketTail) > 107 {
		os.Remove(dir)
		return "", fmt.Errorf("the working directory %s is too long for the agents' control sockets (at most 107 bytes); set TMPDIR to a short directory such as /tmp", dir)
	}
	return dir, nil
}

// demoProfile is the first built-in profile for this machine's
// architecture that its CPU runs (linux-amd64 on any x86-64), without UPX.
func demoProfile() (hardware.Profile, error) {
	cpu, err := hardware.ReadCPU()
	if err != nil {
		return hardware.Profile{}, fmt.Errorf("cannot read this machine's CPU facts: %w", err)
	}
	for _, p := range hardware.Profiles() {
		if p.GOOS != runtime.GOOS || p.GOARCH != runtime.GOARCH {
			continue
		}
		if cpu.CanRun(hardware.TargetFor(p)) != nil {
			continue
		}
		p.UPX = false // the demo must not need upx
		return p, nil
	}
	return hardware.Profile{}, fmt.Errorf("no built-in profile for %s/%s (%s); the demo runs on x86-64, arm64 and 32-bit ARM Linux", runtime.GOOS, runtime.GOARCH, cpu)
}

// setup starts the broker, makes keys, builds the agent and packs the
// releases (the builds run concurrently).
func (d *demo) setup(ctx context.Context) error {
	var err error
	d.broker, err = fleet.StartBroker(fleet.BrokerOptions{Listen: "127.0.0.1:0", DataDir: filepath.Join(d.root, "broker")})
	if err != nil {
		return err
	}
	fmt.Fprintf(d.out, "  broker    embedded MQTT broker on %s (retained releases in %s), driving staged rollouts\n", d.broker.URL(), filepath.Join(d.root, "broker"))
	dctx, stop := context.WithCancel(context.Background())
	d.stopDriver, d.driverDone = stop, make(chan struct{})
	go func() {
		defer close(d.driverDone)
		fleet.RunDriver(dctx, fleet.DriverOptions{Client: d.broker.InternalClient(), StaleBefore: d.broker.Started()})
	}()
	d.op, err = fleet.Connect(ctx, fleet.ClientOptions{Broker: d.broker.URL(), ClientID: "edgefleet-demo-operator"})
	if err != nil {
		return err
	}
	d.view = fleet.NewFleetView()
	if err := fleet.Subscribe(ctx, d.op, protocol.DeviceFilters, d.observe); err != nil {
		return err
	}
	ctrl, _ := protocol.RolloutTopic("stable", "hello")
	if err := fleet.Subscribe(ctx, d.op, []string{ctrl}, d.observeRollout); err != nil {
		return err
	}

	d.pub, d.priv, err = protocol.GenerateKey()
	if err != nil {
		return fmt.Errorf("generate a key: %w", err)
	}
	keys := filepath.Join(d.root, "keys")
	if err := os.MkdirAll(keys, 0o700); err != nil {
		return err
	}
	secret, err := protocol.MarshalPrivateKey(d.priv, "")
	if err != nil {
		return err
	}
	pubText, _ := d.pub.MarshalText()
	d.pubPath = filepath.Join(keys, "demo.pub")
	if err := os.WriteFile(filepath.Join(keys, "demo.key"), append(secret, '\n'), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(d.pubPath, append(pubText, '\n'), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(d.out, "  keys      throwaway release key %s (unencrypted, in %s; devices trust only it)\n", protocol.KeyID(d.pub.ID()), keys)

	d.releases = []*demoRelease{
		{version: "1.0.0", seq: 1},
		{version: "2.0.0", seq: 2},
		{version: "3.0.0", seq: 3, ldflags: []string{"-X main.healthFail=1"}},
	}
	fmt.Fprintf(d.out, "  building  edgefleet-agent, and hello 1.0.0, 2.0.0 and 3.0.0 for %s (3.0.0 is built with -X main.healthFail=1) ...\n", d.profile.Name)
	t0 := time.Now()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, 1+len(d.releases))
	var probe string
	wg.Add(1)
	go func() {
		defer wg.Done()
		if errs[0] = d.buildAgent(ctx); errs[0] != nil {
			cancel()
		}
	}()
	for i, r := range d.releases {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := d.pack(ctx, r)
			if err != nil {
				errs[i+1] = err
				cancel()
				return
			}
			if i == 0 {
				probe = res.Probe
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	fi, _ := os.Stat(d.agentExe)
	var size int64
	if fi != nil {
		size = fi.Size()
	}
	if strings.HasPrefix(probe, "skipped") {
		probe += " (each device still runs the probe before it swaps)"
	}
	fmt.Fprintf(d.out, "  built     edgefleet-agent (%s) and three signed bundles in %s; packer probe: %s\n", humanBytes(size), round(time.Since(t0)), probe)
	for _, r := range d.releases {
		fmt.Fprintf(d.out, "            %s (%s payload)\n", filepath.Base(r.bundle), humanBytes(r.payload))
	}
	return nil
}

// observe feeds the fleet view and remembers every version/state a device
// reported, so the rollback phase can say that v3 really was installed.
func (d *demo) observe(topic string, payload []byte) {
	if err := d.view.Update(topic, payload); err != nil {
		return
	}
	if tp, err := protocol.ParseTopic(topic); err != nil || tp.Kind != protocol.KindStatus {
		return
	}
	s, err := protocol.ParseStatus(payload)
	if err != nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.seen[s.Device] == nil {
		d.seen[s.Device] = map[string]bool{}
	}
	for _, a := range s.Apps {
		d.seen[s.Device][a.Version+"/"+a.State] = true
		if a.Target != "" {
			d.seen[s.Device][a.Target+"/download"] = true
		}
	}
}

// observeRollout keeps the latest control message of the rollout.
func (d *demo) observeRollout(_ string, payload []byte) {
	r, err := protocol.ParseRollout(payload)
	if err != nil {
		return
	}
	d.mu.Lock()
	d.ro = r
	d.mu.Unlock()
}

func (d *demo) rolloutNow() *protocol.Rollout {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.ro
}

// sawVersion reports whether device ever reported version (installed, on
// trial or rolled back).
func (d *demo) sawVersion(device, version string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for k := range d.seen[device] {
		if strings.HasPrefix(k, version+"/") {
			return true
		}
	}
	return false
}

func (d *demo) wasSeen(device, version, state string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.seen[device][version+"/"+state]
}

func (d *demo) buildAgent(ctx context.Context) error {
	d.agentExe = filepath.Join(d.root, "bin", "edgefleet-agent")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-s -w -X main.version=demo", "-o", d.agentExe, "./cmd/edgefleet-agent")
	cmd.Dir = d.src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/edgefleet-agent failed: %v\n%s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

func (d *demo) pack(ctx context.Context, r *demoRelease) (*packer.Result, error) {
	res, err := packer.Pack(ctx, packer.Options{
		Package:  demoApp,
		Dir:      d.src,
		App:      "hello",
		Version:  r.version,
		Sequence: r.seq,
		Key:      d.priv,
		Profiles: []hardware.Profile{d.profile},
		OutDir:   filepath.Join(d.root, "releases"),
		LDFlags:  r.ldflags,
		Created:  time.Now(),
		Jobs:     1,
	})
	if err != nil {
		return nil, fmt.Errorf("pack hello %s: %w", r.version, err)
	}
	r.bundle = res[0].Bundle
	r.payload = res[0].PayloadSize
	return &res[0], nil
}

// startDevices writes each device's configuration and starts its agent,
// then waits until every device reports online.
func (d *demo) startDevices(ctx context.Context) error {
	for i := 1; i <= d.devices; i++ {
		a := &demoAgent{id: fmt.Sprintf("demo-%02d", i), done: make(chan struct{})}
		a.dir = filepath.Join(d.root, "devices", a.id)
		a.config = filepath.Join(a.dir, "agent.yaml")
		a.log = filepath.Join(a.dir, "agent.log")
		app := filepath.Join(a.dir, "opt", "hello", "bin", "hello")
		if err := os.MkdirAll(filepath.Dir(app), 0o755); err != nil {
			return err
		}
		cfg := fmt.Sprintf(`# edgefleet demo device %s
device_id: %s
data_dir: %s
trusted_keys: [%q]
apps:
  - name: hello
    path: %q
    args: ["--serve"]
    health:
      window: %s
      command: [%q, "--health"]
broker:
  url: %s
  channel: stable
`, a.id, a.id, filepath.Join(a.dir, "data"), d.pubPath, app, d.window, app, d.broker.URL())
		if err := os.WriteFile(a.config, []byte(cfg), 0o644); err != nil {
			return err
		}
		logf, err := os.OpenFile(a.log, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			return err
		}
		a.cmd = exec.Command(d.agentExe, "run", "--config", a.config)
		a.cmd.Dir = a.dir
		a.cmd.Stdout, a.cmd.Stderr = logf, logf
		// Its own process group: a Ctrl-C in the terminal reaches only the
		// demo, which then stops every agent in order. Should the demo be
		// killed outright, the kernel sends the agents SIGTERM.
		a.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
		err = a.cmd.Start()
		logf.Close()
		if err != nil {
			return fmt.Errorf("start the agent of %s: %w", a.id, err)
		}
		d.agents = append(d.agents, a)
		go func() {
			a.err = a.cmd.Wait()
			close(a.done)
		}()
	}
	t0 := time.Now()
	_, err := d.wait(ctx, t0, "online", func(a *demoAgent, s *protocol.DeviceStatus) (bool, string) {
		if !s.Online {
			return false, ""
		}
		return true, fmt.Sprintf("online, agent pid %d, CPU %s", a.cmd.Process.Pid, dash(s.CPU))
	})
	return err
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// publish publishes r to the whole channel at once and waits for every
// device to commit it.
func (d *demo) publish(ctx context.Context, r *demoRelease) error {
	d.heading(fmt.Sprintf("Publishing hello %s (sequence %d) to every device on channel stable", r.version, r.seq))
	sent0 := d.broker.BytesSent()
	t0 := time.Now()
	kr := protocol.NewKeyring(d.pub)
	res, err := fleet.PublishBundle(ctx, d.op, r.bundle, fleet.PublishOptions{Keyring: kr, Channel: "stable"})
	if err != nil {
		return err
	}
	fmt.Fprintf(d.out, "  published %d chunks, %s, retained on the broker; the devices fetch, verify, probe, swap and try it:\n", res.Chunks, humanBytes(res.Bytes))
	took, err := d.wait(ctx, t0, "hello "+r.version+" committed", d.committed(r))
	if err != nil {
		return err
	}
	d.phases = append(d.phases, demoPhase{rel: r, took: took, sent: d.broker.BytesSent() - sent0, published: res.Bytes})
	d.table()
	return nil
}

// committed is the goal "runs r, committed".
func (d *demo) committed(r *demoRelease) func(*demoAgent, *protocol.DeviceStatus) (bool, string) {
	return func(a *demoAgent, s *protocol.DeviceStatus) (bool, string) {
		app := helloReport(s)
		if app == nil || app.Version != r.version || app.State != stateCommitted {
			return false, ""
		}
		return true, fmt.Sprintf("hello %s committed (passed its %s trial)%s", r.version, d.window, d.waveOf(a.id))
	}
}

// demoWaves are the demo's rollout waves: one canary, half, everyone.
const demoWaves = "1,50%,100%"

// stage rolls r out in waves with `edgefleet rollout start` (the broker
// drives it). A good release reaches every device wave by wave; the broken
// one fails on the canary and the rollout halts: the other devices never
// download it.
func (d *demo) stage(ctx context.Context, r *demoRelease) error {
	broken := len(r.ldflags) > 0
	bake := d.window
	if broken {
		d.heading(fmt.Sprintf("Rolling out hello %s (sequence %d) in waves %s, built so that its health check fails", r.version, r.seq, demoWaves))
	} else {
		d.heading(fmt.Sprintf("Rolling out hello %s (sequence %d) to channel stable in waves %s", r.version, r.seq, demoWaves))
	}
	sent0 := d.broker.BytesSent()
	t0 := time.Now()
	var out bytes.Buffer
	args := []string{"rollout", "start", "--broker", d.broker.URL(), "--pub", d.pubPath, "--channel", "stable", "--quiet",
		"--waves", demoWaves, "--max-failures", "10%", "--min-executed", "3", "--bake", bake.String(), "--device-timeout", d.timeout.String(), r.bundle}
	fmt.Fprintf(d.out, "  $ edgefleet rollout start --waves %s --max-failures 10%% --min-executed 3 --bake %s %s\n", demoWaves, bake, filepath.Base(r.bundle))
	if code := run(ctx, &cliEnv{stdin: strings.NewReader(""), stdout: &out, stderr: &out, getenv: d.env.getenv}, args); code != 0 {
		return fmt.Errorf("edgefleet rollout start failed (exit %d):\n%s", code, out.String())
	}
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		fmt.Fprintf(d.out, "    %s\n", line)
	}
	var took time.Duration
	var err error
	if !broken {
		took, err = d.wait(ctx, t0, "hello "+r.version+" committed", d.committed(r))
		if err == nil {
			_, err = d.waitRollout(ctx, protocol.RolloutDone)
		}
	} else {
		prev := d.releases[1].version
		took, err = d.wait(ctx, t0, "the rollout of hello "+r.version+" halted, every device on "+prev, func(a *demoAgent, s *protocol.DeviceStatus) (bool, string) {
			ro := d.rolloutNow()
			app := helloReport(s)
			if ro == nil || ro.Sequence != r.seq || app == nil || app.Version != prev {
				return false, ""
			}
			if ro.Member(a.id, s.Labels) {
				if app.State != stateRolledBack || app.LastError == "" {
					return false, ""
				}
				return true, fmt.Sprintf("installed hello %s, its health check failed → rolled back to %s%s", r.version, prev, d.waveOf(a.id))
			}
			if ro.State != protocol.RolloutHalted {
				return false, ""
			}
			return true, fmt.Sprintf("never saw hello %s: not in wave 1, and the rollout halted", r.version)
		})
	}
	if err != nil {
		return err
	}
	d.phases = append(d.phases, demoPhase{rel: r, took: took, sent: d.broker.BytesSent() - sent0, published: r.payload})
	if ro := d.rolloutNow(); ro != nil {
		fmt.Fprintf(d.out, "  rollout %s: %s\n", ro.State, d.shortReason(ro.Reason))
	}
	d.table()
	return nil
}

// shortReason drops what a rollout's reason quotes of the app's output and
// the demo's device directories (they stand in for each device's root).
func (d *demo) shortReason(r string) string {
	r, _, _ = strings.Cut(r, "; last output:")
	for _, a := range d.agents {
		r = strings.ReplaceAll(r, a.dir, "")
	}
	return r
}

// waveOf says in which wave of the current rollout device was (empty
// when no rollout has started).
func (d *demo) waveOf(device string) string {
	ro := d.rolloutNow()
	if ro == nil {
		return ""
	}
	h := protocol.MemberHash(ro.ID, device)
	for i, c := range ro.Cuts {
		if h < c {
			return fmt.Sprintf(", wave %d", i+1)
		}
	}
	return ""
}

// waitRollout waits until the rollout reaches state.
func (d *demo) waitRollout(ctx context.Context, state string) (*protocol.Rollout, error) {
	deadline := time.Now().Add(d.timeout)
	for {
		if ro := d.rolloutNow(); ro != nil && ro.State == state {
			return ro, nil
		}
		if time.Now().After(deadline) {
			ro := d.rolloutNow()
			if ro == nil {
				return nil, fmt.Errorf("no rollout message on the broker after %s", d.timeout)
			}
			return nil, fmt.Errorf("the rollout %s is %s, not %s, after %s: %s", ro.ID, ro.State, state, d.timeout, ro.Reason)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func helloReport(s *protocol.DeviceStatus) *protocol.AppReport {
	for i := range s.Apps {
		if s.Apps[i].App == "hello" {
			return &s.Apps[i]
		}
	}
	return nil
}

// wait polls the fleet view until goal holds for every device, printing a
// line per device as it gets there (and, on a terminal, a live table). It
// fails when an agent exits, on timeout, or when ctx is done.
func (d *demo) wait(ctx context.Context, t0 time.Time, what string, goal func(*demoAgent, *protocol.DeviceStatus) (bool, string)) (time.Duration, error) {
	done := map[string]bool{}
	deadline := time.NewTimer(d.timeout)
	defer deadline.Stop()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	gen := -1
	for {
		byID := map[string]*protocol.DeviceStatus{}
		devs := d.view.Devices()
		for i := range devs {
			byID[devs[i].Device] = &devs[i]
		}
		for _, a := range d.agents {
			if done[a.id] {
				continue
			}
			s := byID[a.id]
			if s == nil {
				continue
			}
			ok, line := goal(a, s)
			if !ok {
				continue
			}
			done[a.id] = true
			d.live.clear()
			gen = -1
			fmt.Fprintf(d.out, "  %-8s %-6s %s\n", a.id, round(time.Since(t0)), line)
		}
		if len(done) == len(d.agents) {
			d.live.clear()
			took := time.Since(t0)
			fmt.Fprintf(d.out, "  all %d devices: %s in %s\n", len(d.agents), what, round(took))
			return took, nil
		}
		if g := d.view.Generation(); d.live != nil && g != gen {
			gen = g
			d.live.draw(d.tableText())
		}
		for _, a := range d.agents {
			select {
			case <-a.done:
				return 0, fmt.Errorf("the agent of %s exited (%v) while waiting for %s; its log is %s:\n%s",
					a.id, a.err, what, a.log, tail(a.log, 15))
			default:
			}
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-deadline.C:
			d.live.clear()
			var b strings.Builder
			fmt.Fprintf(&b, "the fleet did not reach %q within %s (raise --timeout on a slow or busy machine). Where each device stands:\n", what, d.timeout)
			d.view.WriteTable(&b, time.Now())
			for _, a := range d.agents {
				if done[a.id] {
					continue
				}
				s := byID[a.id]
				switch {
				case s == nil:
					fmt.Fprintf(&b, "\n%s: never reported a status (is its agent connected to %s?)", a.id, d.broker.URL())
				default:
					fmt.Fprintf(&b, "\n%s: online=%v", a.id, s.Online)
					if app := helloReport(s); app != nil {
						fmt.Fprintf(&b, ", hello %s %s", dash(app.Version), dash(app.State))
						if app.LastError != "" {
							fmt.Fprintf(&b, ", last error: %s", app.LastError)
						}
					}
				}
				fmt.Fprintf(&b, "\n  log %s, last lines:\n%s", a.log, tail(a.log, 8))
			}
			return 0, errors.New(b.String())
		case <-tick.C:
		}
	}
}

// table prints the fleet as `edgefleet status` shows it.
func (d *demo) table() {
	fmt.Fprintln(d.out, "  what `edgefleet status` shows now:")
	fmt.Fprint(d.out, d.tableText())
}

// tableText is the fleet table, indented under the phase.
func (d *demo) tableText() string {
	var b, out bytes.Buffer
	d.view.WriteTable(&b, time.Now())
	sc := bufio.NewScanner(&b)
	for sc.Scan() {
		fmt.Fprintf(&out, "    %s\n", sc.Text())
	}
	return out.String()
}

// summary prints the phases and checks the end state: every device on
// 2.0.0, and the broken 3.0.0 seen only by the devices of its first wave.
func (d *demo) summary() bool {
	for i, p := range d.phases {
		verb := "committed on every device"
		switch {
		case len(p.rel.ldflags) > 0:
			verb = "halted after wave 1"
		case i > 0:
			verb = "rolled out wave by wave"
		}
		fmt.Fprintf(d.out, "  %d. hello %s  %-27s in %-6s payload %s, broker sent %s in all\n",
			i+1, p.rel.version, verb, round(p.took), humanBytes(p.published), humanBytes(p.sent))
	}
	final, bad := d.releases[1].version, d.releases[2].version
	ok := true
	var touched []string
	count := map[string]int{}
	var reasons []string
	for _, a := range d.agents {
		var app *protocol.AppReport
		for _, dev := range d.view.Devices() {
			if dev.Device == a.id {
				app = helloReport(&dev)
			}
		}
		if app == nil || app.Version != final {
			ok = false
			continue
		}
		if d.sawVersion(a.id, bad) {
			touched = append(touched, a.id)
		}
		if r := app.LastError; r != "" {
			// The device directory stands in for a device's root, and the
			// app's recent output is in the status for the curious.
			r = strings.ReplaceAll(r, a.dir, "")
			r, _, _ = strings.Cut(r, "; last output:")
			if count[r] == 0 {
				reasons = append(reasons, r)
			}
			count[r]++
		}
	}
	ro := d.rolloutNow()
	if ro == nil || ro.State != protocol.RolloutHalted || len(touched) == 0 || len(touched) > ro.Counts.Members {
		ok = false
	}
	if ok {
		fmt.Fprintf(d.out, "  Every device runs hello %s. hello %s reached %d of %d devices (%s): the rollout halted itself after its first wave, and %d devices never downloaded a byte of it.\n",
			final, bad, len(touched), len(d.agents), strings.Join(touched, ", "), len(d.agents)-len(touched))
		fmt.Fprintf(d.out, "  The rollout says: %s\n", d.shortReason(ro.Reason))
	}
	for _, r := range reasons {
		fmt.Fprintf(d.out, "  Reason reported by %d of %d devices: %s\n", count[r], len(d.agents), r)
	}
	fmt.Fprintf(d.out, "  Each device kept its previous binary as hello.prev, recorded every step in its state database, and reported over MQTT.\n")
	return ok
}

// cleanup stops the agents (SIGTERM, then SIGKILL after a grace period),
// the operator connection and the broker, then removes the working
// directory unless the demo failed or --keep was given.
func (d *demo) cleanup(failed bool) {
	d.live.clear()
	stopped := 0
	for _, a := range d.agents {
		select {
		case <-a.done:
			continue
		default:
		}
		_ = a.cmd.Process.Signal(syscall.SIGTERM)
		stopped++
	}
	grace := time.NewTimer(15 * time.Second)
	defer grace.Stop()
	for _, a := range d.agents {
		select {
		case <-a.done:
		case <-grace.C:
			_ = syscall.Kill(-a.cmd.Process.Pid, syscall.SIGKILL)
			<-a.done
		}
	}
	if d.op != nil {
		d.op.Disconnect(100)
	}
	if d.stopDriver != nil {
		d.stopDriver()
		<-d.driverDone
	}
	if d.broker != nil {
		d.broker.Close()
	}
	if d.root == "" {
		return
	}
	switch {
	case failed:
		fmt.Fprintf(d.env.stderr, "Stopped %s. Kept %s for you to look at (devices/*/agent.log are the agents' logs); remove it when done.\n", agentsWord(stopped), d.root)
	case d.keep:
		fmt.Fprintf(d.out, "\nStopped %s. Kept %s (--keep): devices/*/agent.yaml and agent.log, releases/*.efb, keys/.\n", agentsWord(stopped), d.root)
	default:
		if err := os.RemoveAll(d.root); err != nil {
			fmt.Fprintf(d.env.stderr, "edgefleet demo: could not remove %s: %v\n", d.root, err)
			return
		}
		fmt.Fprintf(d.out, "\nStopped %s and the broker, removed %s.\n", agentsWord(stopped), d.root)
	}
}

func agentsWord(n int) string {
	if n == 1 {
		return "1 agent"
	}
	return fmt.Sprintf("%d agents", n)
}

// tail returns the last n lines of a file, indented.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "    (" + err.Error() + ")"
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return "    (empty)"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "    " + strings.Join(lines, "\n    ")
}

func round(d time.Duration) time.Duration {
	if d > 10*time.Second {
		return d.Round(time.Second)
	}
	return d.Round(100 * time.Millisecond)
}

// liveArea is a block at the bottom of a terminal that is redrawn in place.
// Its methods do nothing on a nil receiver (output is not a terminal).
type liveArea struct {
	w     io.Writer
	fd    int
	lines int // terminal rows the current block takes
}

func (l *liveArea) draw(text string) {
	if l == nil {
		return
	}
	l.clear()
	width := 0
	if w, _, err := term.GetSize(l.fd); err == nil && w > 0 {
		width = w
	}
	rows := 0
	for _, line := range strings.Split(strings.TrimRight(text, "\n"), "\n") {
		rows++
		if n := len([]rune(line)); width > 0 && n > width {
			rows += (n - 1) / width
		}
	}
	fmt.Fprint(l.w, text)
	if !strings.HasSuffix(text, "\n") {
		fmt.Fprintln(l.w)
	}
	l.lines = rows
}

func (l *liveArea) clear() {
	if l == nil || l.lines == 0 {
		return
	}
	fmt.Fprintf(l.w, "\x1b[%dA\x1b[J", l.lines)
	l.lines = 0
}
