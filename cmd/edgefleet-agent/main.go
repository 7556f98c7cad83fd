// Command edgefleet-agent is the program on every device: the daemon that
// installs signed bundles, supervises the apps, runs trials and commits or
// rolls back — and the field engineer's tool for the same device.
//
//	edgefleet-agent run      --config /etc/edgefleet/agent.yaml
//	edgefleet-agent sideload --config ... bundle.efb
//	edgefleet-agent check    --config ... bundle.efb
//	edgefleet-agent status   --config ... [--json]
//	edgefleet-agent rollback --config ... APP
//	edgefleet-agent facts    [--config ...] [--json]
//	edgefleet-agent reset    --config ... [--force]
//	edgefleet-agent version
//
// The field commands talk to the running daemon over its control socket
// (<data_dir>/agent.sock) when it answers, and work on the state database
// directly when it does not (sideload then leaves the trial to the next
// daemon start).
//
// Exit codes: 0 success, 1 refused or failed (with the reason), 2 usage.
//
// Only the standard library's flag package: the device binary stays small.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/hardware"
	"github.com/edgefleet/edgefleet/internal/buildversion"
	"github.com/edgefleet/edgefleet/internal/cliflag"
)

// version is set at build time: -ldflags "-X main.version=1.2.0".
var version = "dev"

// failOnTrial is a TEST-ONLY build switch (-X main.failOnTrial=1): the
// daemon exits with an error when it starts with its own binary on trial,
// i.e. a self-update that "does not come up". Production builds leave it
// empty.
var failOnTrial = ""

type env struct {
	stdout, stderr io.Writer
}

type command struct {
	summary string
	run     func(ctx context.Context, e *env, args []string) int
}

var commands map[string]command

func init() {
	commands = map[string]command{
		"run":      {"run the daemon: supervise apps, finish interrupted installs, serve the control socket", cmdRun},
		"sideload": {"install a signed bundle (.efb) from a file", cmdSideload},
		"check":    {"dry run: would this bundle install here, and if not, why", cmdCheck},
		"status":   {"per app: version, sequence, state, previous, last error, history", cmdStatus},
		"rollback": {"go back to an app's previous binary", cmdRollback},
		"facts":    {"what this device is: CPU level and features, storage, memory", cmdFacts},
		"reset":    {"move a corrupt state database aside and start afresh (binaries and the anti-rollback floor are kept)", cmdReset},
		"version":  {"print the agent's version, module, VCS revision and Go version", cmdVersion},
		"keyset":   {"accept a key set signed by the root (sideload; keyset.go)", cmdKeySet},
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := runMain(ctx, &env{stdout: os.Stdout, stderr: os.Stderr}, os.Args[1:])
	stop()
	os.Exit(code)
}

func runMain(ctx context.Context, e *env, args []string) int {
	if len(args) == 2 && args[0] == "help" {
		if _, ok := commands[args[1]]; ok {
			args = []string{args[1], "-h"} // `help check` is `check -h`
		}
	}
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		w := e.stdout
		if len(args) == 0 {
			w = e.stderr
		}
		usage(w)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	if args[0] == "--version" || args[0] == "-version" {
		// The version alone: what the default probe of a release of the
		// agent itself expects.
		fmt.Fprintln(e.stdout, buildversion.Read(version).Version)
		return 0
	}
	c, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(e.stderr, "edgefleet-agent: unknown command %q\n\n", args[0])
		usage(e.stderr)
		return 2
	}
	return c.run(ctx, e, args[1:])
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: edgefleet-agent <command> [--config FILE] [flags] [args]")
	fmt.Fprintln(w)
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-9s %s\n", n, commands[n].summary)
	}
	fmt.Fprintf(w, "\nThe config defaults to %s. Flags may follow the arguments. 'edgefleet-agent help <command>' shows a command's flags and an example.\nExit codes: 0 ok, 1 refused or failed, 2 usage.\n", agent.DefaultConfigPath)
}

// flags returns a flag set with --config; parse parses and checks the
// number of positional arguments.
func flags(e *env, name, argsUsage string) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	cfg := fs.String("config", agent.DefaultConfigPath, "agent configuration file")
	fs.Usage = func() {
		fmt.Fprintf(e.stderr, "usage: edgefleet-agent %s [flags] %s\n", name, argsUsage)
		fs.PrintDefaults()
		if ex := examples[name]; ex != "" {
			fmt.Fprintf(e.stderr, "\nExample:\n  %s\n", strings.ReplaceAll(ex, "\n", "\n  "))
		}
	}
	return fs, cfg
}

// examples is what `edgefleet-agent CMD -h` ends with.
var examples = map[string]string{
	"run":      "edgefleet-agent run --config /etc/edgefleet/agent.yaml",
	"sideload": "edgefleet-agent sideload /media/usb/sensor_1.4.0_*.efb   # picks the bundle for this device",
	"check":    "edgefleet-agent check /media/usb/*.efb --config /etc/edgefleet/agent.yaml",
	"status":   "edgefleet-agent status --json",
	"rollback": "edgefleet-agent rollback sensor --reason 'readings stuck at 0'",
	"facts":    "edgefleet-agent facts --config /etc/edgefleet/agent.yaml",
	"reset":    "edgefleet-agent reset --config /etc/edgefleet/agent.yaml",
	"version":  "edgefleet-agent version",
	"keyset":   "edgefleet-agent keyset /media/usb/keyset.msg   # a key set signed by the root, for a device off the network",
}

// parse is the one way every agent command parses its command line:
// flags may come after the arguments (`check B.efb --config C`), "--" ends
// them. nargs is the number of arguments wanted; -1: at least one.
func parse(e *env, fs *flag.FlagSet, args []string, nargs int) bool {
	if err := cliflag.Parse(fs, args); err != nil {
		return false
	}
	if nargs >= 0 && fs.NArg() != nargs || nargs < 0 && fs.NArg() == 0 {
		want := fmt.Sprint(nargs)
		if nargs < 0 {
			want = "at least 1"
		}
		got := fmt.Sprint(fs.NArg())
		if fs.NArg() > 0 {
			got += ": " + strings.Join(fs.Args(), " ")
		}
		fmt.Fprintf(e.stderr, "edgefleet-agent %s: want %s argument(s), got %s\n\n", fs.Name(), want, got)
		fs.Usage()
		return false
	}
	return true
}

// parseConfig parses the command line (nargs positional arguments) and
// loads the configuration; on failure it returns nil and the exit code (2
// usage, 1 a bad config).
func parseConfig(e *env, fs *flag.FlagSet, cfgPath *string, args []string, nargs int) (*agent.Config, int) {
	if !parse(e, fs, args, nargs) {
		return nil, 2
	}
	cfg, ok := loadConfig(e, *cfgPath)
	if !ok {
		return nil, 1
	}
	return cfg, 0
}

func loadConfig(e *env, path string) (*agent.Config, bool) {
	cfg, err := agent.LoadConfig(path)
	if err != nil {
		fmt.Fprintf(e.stderr, "edgefleet-agent: %v\n", err)
		if errors.Is(err, os.ErrNotExist) && path == agent.DefaultConfigPath {
			fmt.Fprintf(e.stderr, "edgefleet-agent: no configuration at the default %s: pass --config FILE (the format is in docs/agent.md)\n", path)
		}
		return nil, false
	}
	return cfg, true
}

// dial returns a client when the daemon answers, nil when it does not.
func dial(ctx context.Context, cfg *agent.Config) *agent.ControlClient {
	dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	c, err := agent.DialControl(dctx, cfg.SocketPath())
	if err != nil {
		return nil
	}
	return c
}

// openDirect opens the state database when no daemon answers.
func openDirect(e *env, cfg *agent.Config) (*agent.Agent, bool) {
	a, err := agent.Open(cfg, agent.Options{})
	if err != nil {
		if errors.Is(err, agent.ErrLocked) {
			fmt.Fprintf(e.stderr, "edgefleet-agent: %v, but its control socket %s does not answer; the daemon may still be starting (recovering after a power cut): try again in a few seconds, and restart it if this persists\n", err, cfg.SocketPath())
		} else {
			fmt.Fprintf(e.stderr, "edgefleet-agent: %v\n", err)
		}
		return nil, false
	}
	return a, true
}

// startWait bounds how long status waits for a daemon that holds the state
// database but does not serve its socket yet.
const startWait = 20 * time.Second

// runLockWait bounds how long `run` waits for the state database's lock.
const runLockWait = 15 * time.Second

// dialStarting waits up to startWait for the daemon's socket to answer.
func dialStarting(ctx context.Context, e *env, cfg *agent.Config) *agent.ControlClient {
	fmt.Fprintf(e.stderr, "edgefleet-agent: the daemon holds the state database but its socket does not answer yet (starting, recovering?); waiting up to %s\n", startWait)
	deadline := time.Now().Add(startWait)
	for time.Now().Before(deadline) {
		if c := dial(ctx, cfg); c != nil {
			return c
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(200 * time.Millisecond):
		}
	}
	return nil
}

func cmdVersion(_ context.Context, e *env, args []string) int {
	fs := flag.NewFlagSet("version", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	asJSON := fs.Bool("json", false, "print JSON")
	fs.Usage = func() {
		fmt.Fprintln(e.stderr, "usage: edgefleet-agent version [--json]   (the version, module, VCS revision and Go version of this binary)")
		fs.PrintDefaults()
		fmt.Fprintf(e.stderr, "\nExample:\n  %s\n", examples["version"])
	}
	if !parse(e, fs, args, 0) {
		return 2
	}
	i := buildversion.Read(version)
	if *asJSON {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		enc.Encode(i)
		return 0
	}
	fmt.Fprint(e.stdout, i)
	return 0
}

func cmdRun(ctx context.Context, e *env, args []string) int {
	fs, cfgPath := flags(e, "run", "")
	echo := fs.Bool("echo-output", false, "copy the apps' output lines to the agent's log")
	cfg, code := parseConfig(e, fs, cfgPath, args, 0)
	if cfg == nil {
		return code
	}
	logger := log.New(e.stderr, "edgefleet-agent: ", log.LstdFlags)
	logf := logger.Printf
	var opts agent.DaemonOptions
	// A field command that found no daemon (status, a direct sideload) may
	// hold the state database for a moment, e.g. right after boot: wait
	// for it rather than exit.
	a, err := agent.Open(cfg, agent.Options{Logf: logf, DBTimeout: runLockWait})
	if err != nil {
		if !errors.Is(err, agent.ErrCorruptState) {
			logf("%v", err)
			return 1
		}
		// A corrupt state database must not stop the apps.
		opts.StateError = err
	}
	opts.Logf = logf
	opts.Version = buildversion.Read(version).Version
	opts.EchoOutput = *echo
	if failOnTrial != "" {
		opts.SelfTrialHook = func() error {
			return errors.New("test build: failing on purpose while on trial (-X main.failOnTrial)")
		}
	}
	d, err := agent.NewDaemon(cfg, a, opts)
	if err != nil {
		logf("%v", err)
		return 1
	}
	err = d.Run(ctx)
	if cur := d.Agent(); cur != nil {
		cur.Close()
	}
	var re *agent.ReexecError
	if errors.As(err, &re) {
		argv := append([]string{re.Path}, os.Args[1:]...)
		err = syscall.Exec(re.Path, argv, os.Environ())
		// Only reached when exec failed: exit so the init system restarts
		// whatever is at the path.
		logf("exec %s: %v", re.Path, err)
		return 1
	}
	if err != nil {
		logf("%v", err)
		return 1
	}
	return 0
}

// progressPrinter prints each step once and staging in 25% steps.
func progressPrinter(w io.Writer) func(agent.Progress) {
	last := ""
	lastPct := -1
	return func(p agent.Progress) {
		if p.Step == agent.StepStage && p.Total > 0 {
			pct := 100 // a reply is untrusted: never more than 100%, never an overflow
			if p.Done < p.Total {
				pct = int(float64(max(p.Done, 0)) * 100 / float64(p.Total))
			}
			if last == p.Step && pct/25 == lastPct/25 {
				return
			}
			last, lastPct = p.Step, pct
			fmt.Fprintf(w, "  %-8s %s %3d%%\n", p.Step, p.App, pct)
			return
		}
		if p.Step == last {
			return
		}
		last, lastPct = p.Step, -1
		fmt.Fprintf(w, "  %-8s %s\n", p.Step, p.App)
	}
}

// bundleArg finds the bundle to use among the arguments (pickBundle).
func bundleArg(e *env, fs *flag.FlagSet, cfg *agent.Config) (string, bool) {
	var paths []string
	for _, a := range fs.Args() {
		p, err := filepath.Abs(a)
		if err != nil {
			fmt.Fprintf(e.stderr, "edgefleet-agent: %v\n", err)
			return "", false
		}
		if _, err := os.Stat(p); err != nil {
			fmt.Fprintf(e.stderr, "edgefleet-agent %s: cannot read the bundle: %v\n", fs.Name(), err)
			return "", false
		}
		paths = append(paths, p)
	}
	p, note, err := pickBundle(cfg, paths)
	if err != nil {
		fmt.Fprintf(e.stdout, "refused: %v\n", err)
		return "", false
	}
	if note != "" {
		fmt.Fprintln(e.stdout, note)
	}
	return p, true
}

// bundleCommand is the shape sideload and check share: parse, load the
// config, find the bundle, then ask the running daemon when its socket
// answers (it owns the state database), else open the database directly.
func bundleCommand(ctx context.Context, e *env, name string, args []string, addFlags func(*flag.FlagSet),
	viaDaemon func(c *agent.ControlClient, path string) int,
	direct func(a *agent.Agent, f *os.File) int) int {
	fs, cfgPath := flags(e, name, "BUNDLE.efb [BUNDLE.efb...]   (several: the one for this device is picked)")
	if addFlags != nil {
		addFlags(fs)
	}
	cfg, code := parseConfig(e, fs, cfgPath, args, -1)
	if cfg == nil {
		return code
	}
	path, ok := bundleArg(e, fs, cfg)
	if !ok {
		return 1
	}
	if c := dial(ctx, cfg); c != nil {
		defer c.Close()
		return viaDaemon(c, path)
	}
	a, ok := openDirect(e, cfg)
	if !ok {
		return 1
	}
	defer a.Close()
	f, err := os.Open(path)
	if err != nil {
		fmt.Fprintf(e.stderr, "edgefleet-agent %s: %v\n", name, err)
		return 1
	}
	defer f.Close()
	return direct(a, f)
}

func cmdSideload(ctx context.Context, e *env, args []string) int {
	var noWait *bool
	var sfs *flag.FlagSet
	cfgFile := func() string { return sfs.Lookup("config").Value.String() }
	show := progressPrinter(e.stdout)
	return bundleCommand(ctx, e, "sideload", args,
		func(fs *flag.FlagSet) {
			sfs = fs
			noWait = fs.Bool("no-wait", false, "with a running daemon: return after the swap instead of waiting for the trial")
		},
		func(c *agent.ControlClient, path string) int {
			fmt.Fprintf(e.stdout, "sideloading %s through the running daemon\n", filepath.Base(path))
			r, err := c.Do(ctx, agent.Request{Op: agent.OpSideload, Bundle: path, Wait: !*noWait}, func(r agent.Response) {
				switch r.Type {
				case agent.TypeProgress:
					show(*r.Progress)
				case agent.TypeEvent:
					fmt.Fprintf(e.stdout, "  %-8s %s\n", r.Event, r.Message)
				}
			})
			if !daemonAccepted(e, "sideload", r, err) {
				return 1
			}
			res := r.Result
			printKeySetNote(e.stdout, res.KeySet)
			fmt.Fprintf(e.stdout, "installed %s %s (sequence %d, previous %s); trial: %s\n", res.App, res.Version, res.Sequence, orNone(res.Previous), r.Trial)
			return 0
		},
		func(a *agent.Agent, f *os.File) int {
			fmt.Fprintf(e.stdout, "sideloading %s (no daemon running)\n", filepath.Base(f.Name()))
			res, err := a.Install(ctx, f, show)
			if err != nil {
				fmt.Fprintf(e.stdout, "refused: %v\n", err)
				if trial := onTrial(a); errors.Is(err, agent.ErrBusy) && trial != "" {
					fmt.Fprintf(e.stdout, "No daemon is running to finish that trial. Either start it (systemctl start edgefleet-agent, or `edgefleet-agent run --config %s` in another terminal), wait until `edgefleet-agent status --config %s` shows %s committed, and sideload again; or give the trial up with `edgefleet-agent rollback %s --config %s` (when it had a previous version) and sideload again.\n",
						cfgFile(), cfgFile(), trial, trial, cfgFile())
				}
				return 1
			}
			printKeySetNote(e.stdout, res.KeySet)
			fmt.Fprintf(e.stdout, "installed %s %s (sequence %d, previous %s); on trial until the daemon starts and it passes its health window\n", res.App, res.Version, res.Sequence, orNone(res.Previous))
			return 0
		})
}

// daemonAccepted reports whether the daemon carried out a request: a
// failed exchange goes to stderr, a refusal to stdout ("refused: why").
func daemonAccepted(e *env, cmd string, r agent.Response, err error) bool {
	if err != nil {
		fmt.Fprintf(e.stderr, "edgefleet-agent %s: %v\n", cmd, err)
		return false
	}
	if !r.OK {
		fmt.Fprintf(e.stdout, "refused: %s\n", r.Error)
		return false
	}
	return true
}

// daemonDo sends req to the daemon and prints its answer's message: the
// daemon's side of a command that works with or without one. Exit code.
func daemonDo(ctx context.Context, e *env, c *agent.ControlClient, cmd string, req agent.Request) int {
	r, err := c.Do(ctx, req, nil)
	if !daemonAccepted(e, cmd, r, err) {
		return 1
	}
	fmt.Fprintln(e.stdout, r.Message)
	return 0
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func cmdCheck(ctx context.Context, e *env, args []string) int {
	return bundleCommand(ctx, e, "check", args, nil,
		func(c *agent.ControlClient, path string) int {
			r, err := c.Do(ctx, agent.Request{Op: agent.OpCheck, Bundle: path}, nil)
			if !daemonAccepted(e, "check", r, err) {
				return 1
			}
			printKeySetNote(e.stdout, r.Message)
			fmt.Fprintf(e.stdout, "ok: %s would install here\n", r.Manifest)
			return 0
		},
		func(a *agent.Agent, f *os.File) int {
			m, note, err := a.CheckKeySet(ctx, f)
			if err != nil {
				fmt.Fprintf(e.stdout, "refused: %v\n", err)
				return 1
			}
			printKeySetNote(e.stdout, note)
			fmt.Fprintf(e.stdout, "ok: %s would install here\n", m)
			return 0
		})
}

func cmdStatus(ctx context.Context, e *env, args []string) int {
	fs, cfgPath := flags(e, "status", "")
	asJSON := fs.Bool("json", false, "print JSON")
	cfg, code := parseConfig(e, fs, cfgPath, args, 0)
	if cfg == nil {
		return code
	}
	var st agent.DaemonStatus
	c := dial(ctx, cfg)
	var direct *agent.Agent
	var openErr error
	if c == nil {
		direct, openErr = agent.Open(cfg, agent.Options{})
		if errors.Is(openErr, agent.ErrLocked) {
			// A daemon holds the database but does not serve its socket
			// yet: starting (after a power cut, with a stale agent.sock).
			if c = dialStarting(ctx, e, cfg); c == nil {
				fmt.Fprintf(e.stderr, "edgefleet-agent status: %v, but its control socket %s did not answer within %s; is the daemon hung? restart it and try again\n", openErr, cfg.SocketPath(), startWait)
				return 1
			}
		}
	}
	if c != nil {
		defer c.Close()
		r, err := c.Do(ctx, agent.Request{Op: agent.OpStatus}, nil)
		if err != nil {
			fmt.Fprintf(e.stderr, "edgefleet-agent status: %v\n", err)
			return 1
		}
		if !r.OK {
			fmt.Fprintf(e.stderr, "edgefleet-agent status: the daemon answered: %s\n", r.Error)
			return 1
		}
		st = *r.Status
	} else {
		st.DeviceID = cfg.DeviceID
		if openErr != nil {
			st.StateError = openErr.Error()
		} else {
			ti := direct.Trust()
			if ti != (agent.TrustInfo{}) {
				st.Trust = &ti
			}
			apps, err := direct.Status()
			direct.Close()
			if err != nil {
				st.StateError = err.Error()
			}
			for _, s := range apps {
				st.Apps = append(st.Apps, agent.DaemonAppState{AppStatus: s})
			}
		}
	}
	if *asJSON {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		enc.Encode(st)
	} else {
		printStatus(e.stdout, st)
	}
	if st.StateError != "" {
		return 1
	}
	return 0
}

func printStatus(w io.Writer, st agent.DaemonStatus) {
	if st.Daemon {
		fmt.Fprintf(w, "device %s, agent %s (daemon pid %d, up since %s)\n", st.DeviceID, st.AgentVersion, st.PID, st.Since.Format(time.RFC3339))
	} else {
		fmt.Fprintf(w, "device %s (daemon not running)\n", st.DeviceID)
	}
	if st.Starting != "" {
		fmt.Fprintf(w, "daemon starting: %s interrupted installs and starting the apps; installs and rollbacks are refused (busy) until it is ready\n", st.Starting)
	}
	if st.StateError != "" {
		fmt.Fprintf(w, "state error: %s\n", st.StateError)
	}
	printTrust(w, st.Trust) // keyset.go
	for _, a := range st.Apps {
		fmt.Fprintf(w, "\n%s  %s  sequence %d  %s", a.App, orNone(a.Version), a.Sequence, a.State)
		if a.Previous != "" {
			fmt.Fprintf(w, "  previous %s", a.Previous)
		}
		fmt.Fprintln(w)
		if a.Process != nil {
			p := a.Process
			if p.Running {
				fmt.Fprintf(w, "  process:    running, pid %d since %s, %d restarts\n", p.PID, p.Since.Format(time.RFC3339), p.Restarts)
			} else {
				fmt.Fprintf(w, "  process:    not running, %d restarts\n", p.Restarts)
			}
			if p.LastExit != nil {
				fmt.Fprintf(w, "  last exit:  %s at %s\n", p.LastExit, p.LastExit.Time.Format(time.RFC3339))
			}
		}
		if a.BootsOnTrial > 0 {
			fmt.Fprintf(w, "  boots on trial: %d\n", a.BootsOnTrial)
		}
		if a.Trial != "" {
			fmt.Fprintf(w, "  trial:      %s\n", a.Trial)
		}
		if a.LastError != "" {
			fmt.Fprintf(w, "  last error: %s\n", a.LastError)
		}
		if len(a.History) > 0 {
			fmt.Fprintln(w, "  history:")
			for _, h := range a.History {
				line := fmt.Sprintf("    %s  %-13s %s", h.Time.Format(time.RFC3339), h.Kind, h.Version)
				if h.Detail != "" {
					line += "  " + h.Detail
				}
				fmt.Fprintln(w, strings.TrimRight(line, " "))
			}
		}
		if len(a.Output) > 0 {
			fmt.Fprintln(w, "  output:")
			for _, l := range a.Output {
				fmt.Fprintf(w, "    | %s\n", l)
			}
		}
	}
}

func cmdRollback(ctx context.Context, e *env, args []string) int {
	fs, cfgPath := flags(e, "rollback", "APP")
	reason := fs.String("reason", "", "why (recorded in the history)")
	ifOnTrial := fs.Bool("if-on-trial", false, "only when no daemon answers and APP is on trial: for an init system's rescue unit (docs/systemd) after a new agent failed to start")
	cfg, code := parseConfig(e, fs, cfgPath, args, 1)
	if cfg == nil {
		return code
	}
	app := fs.Arg(0)
	if *reason == "" {
		*reason = "rolled back by hand (edgefleet-agent rollback)"
		if *ifOnTrial {
			*reason = "the new version did not start (rescued by edgefleet-agent rollback --if-on-trial)"
		}
	}
	if c := dial(ctx, cfg); c != nil {
		defer c.Close()
		if *ifOnTrial {
			fmt.Fprintln(e.stdout, "a daemon is running: nothing to rescue")
			return 0
		}
		return daemonDo(ctx, e, c, "rollback", agent.Request{Op: agent.OpRollback, App: app, Reason: *reason})
	}
	a, ok := openDirect(e, cfg)
	if !ok {
		return 1
	}
	defer a.Close()
	if *ifOnTrial {
		sts, err := a.Status()
		if err != nil {
			fmt.Fprintf(e.stderr, "edgefleet-agent rollback: %v\n", err)
			return 1
		}
		for _, st := range sts {
			if st.App == app && st.State != agent.StateTrial {
				fmt.Fprintf(e.stdout, "%s is %s, not on trial: nothing to rescue\n", app, st.State)
				return 0
			}
		}
	}
	if err := a.RollbackByHand(app, *reason); err != nil {
		fmt.Fprintf(e.stdout, "refused: %v\n", err)
		return 1
	}
	v, seq, _ := a.Installed(app)
	fmt.Fprintf(e.stdout, "%s rolled back to %s (sequence %d); it runs at the next daemon start\n", app, orNone(v), seq)
	return 0
}

func cmdFacts(_ context.Context, e *env, args []string) int {
	fs, cfgPath := flags(e, "facts", "")
	fs.Lookup("config").DefValue, *cfgPath = "", ""
	fs.Lookup("config").Usage = "agent configuration file (adds storage facts for data_dir and the apps' directories)"
	asJSON := fs.Bool("json", false, "print JSON")
	if !parse(e, fs, args, 0) {
		return 2
	}
	paths := []string{"/"}
	if *cfgPath != "" {
		cfg, ok := loadConfig(e, *cfgPath)
		if !ok {
			return 1
		}
		paths = []string{cfg.DataDir}
		seen := map[string]bool{cfg.DataDir: true}
		for _, a := range cfg.Apps {
			if d := filepath.Dir(a.Path); !seen[d] {
				seen[d] = true
				if _, err := os.Stat(d); err == nil {
					paths = append(paths, d)
				}
			}
		}
	}
	f, err := hardware.ReadFacts(paths...)
	if err != nil {
		fmt.Fprintf(e.stderr, "edgefleet-agent facts: %v\n", err)
	}
	profiles, boards := runnable(f.CPU)
	if *asJSON {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		enc.Encode(struct {
			hardware.Facts
			Profiles []string `json:"profiles"`
			Boards   []string `json:"boards"`
		}{f, profiles, boards})
	} else {
		fmt.Fprintln(e.stdout, f.Summary())
		if f.Kernel != "" {
			fmt.Fprintf(e.stdout, "kernel %s, machine %s\n", f.Kernel, f.Machine)
		}
		fmt.Fprintf(e.stdout, "runs profiles: %s (the most widely compatible first)\n", orNone(strings.Join(profiles, ", ")))
		fmt.Fprintf(e.stdout, "boards of those profiles: %s\n", orNone(strings.Join(boards, ", ")))
	}
	if err != nil {
		return 1
	}
	return 0
}

func cmdReset(ctx context.Context, e *env, args []string) int {
	fs, cfgPath := flags(e, "reset", "")
	force := fs.Bool("force", false, "with the daemon stopped: move the state database aside even though it reads fine (the anti-rollback floor is kept)")
	cfg, code := parseConfig(e, fs, cfgPath, args, 0)
	if cfg == nil {
		return code
	}
	if c := dial(ctx, cfg); c != nil {
		defer c.Close()
		if *force {
			fmt.Fprintf(e.stdout, "refused: the agent daemon is running and holds the state database %s, so it reads fine and nothing needs resetting; to start over with empty state anyway, stop the daemon (e.g. `systemctl stop edgefleet-agent`), run `edgefleet-agent reset --force` again, then start it\n", cfg.StatePath())
			return 1
		}
		return daemonDo(ctx, e, c, "reset", agent.Request{Op: agent.OpReset})
	}
	reset := agent.ResetState
	if *force {
		reset = agent.ForceResetState
	}
	moved, err := reset(cfg, time.Now())
	if errors.Is(err, agent.ErrHealthyState) {
		fmt.Fprintf(e.stdout, "refused: %v\n", err)
		return 1
	}
	if err != nil {
		fmt.Fprintf(e.stderr, "edgefleet-agent reset: %v\n", err)
		return 1
	}
	if moved == "" {
		fmt.Fprintln(e.stdout, "no state database to reset")
	} else {
		fmt.Fprintf(e.stdout, "state database moved to %s; binaries kept; the anti-rollback floor in %s is kept too, so releases at or below the sequences it records stay refused\n", moved, cfg.FloorPath())
	}
	return 0
}

// runnable names the built-in profiles this CPU runs, the most widely
// compatible first, and the boards built on them.
func runnable(c hardware.CPUFacts) (profiles, boards []string) {
	ok := map[string]bool{}
	for _, p := range c.RunnableProfiles() {
		profiles = append(profiles, p.Name)
		ok[p.Name] = true
	}
	for _, b := range hardware.Boards() {
		if ok[b.Profile] {
			boards = append(boards, b.Name)
		}
	}
	return profiles, boards
}

// onTrial names an app on trial in a's state database, "" when none is.
func onTrial(a *agent.Agent) string {
	sts, err := a.Status()
	if err != nil {
		return ""
	}
	for _, st := range sts {
		if st.State == agent.StateTrial {
			return st.App
		}
	}
	return ""
}
