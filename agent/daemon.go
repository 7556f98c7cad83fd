package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// DaemonOptions tune a Daemon. Zero values take the documented defaults.
type DaemonOptions struct {
	// Logf receives one line per event. Default: discard.
	Logf func(format string, args ...any)
	// Version is the running agent's version, shown by status.
	Version string
	// SocketPath is the control socket. Default Config.SocketPath().
	SocketPath string
	// Self is the path of the running executable, used to notice that the
	// agent's own binary (app SelfApp) changed under it. Default
	// /proc/self/exe.
	Self string
	// StopGrace, MinBackoff, MaxBackoff, ResetAfter, OutputLines: see
	// SupervisorOptions (defaults 5s, 200ms, 30s, 10s, 50).
	StopGrace   time.Duration
	MinBackoff  time.Duration
	MaxBackoff  time.Duration
	ResetAfter  time.Duration
	OutputLines int
	// EchoOutput copies every app output line to Logf.
	EchoOutput bool
	// StateError, when the state database could not be opened (corrupt),
	// runs the daemon degraded: Agent is nil, the apps are supervised as
	// they are, status reports this error, installs are refused, and the
	// control socket's "reset" moves the database aside and reopens it.
	StateError error
	// OpenAgent reopens the state after a reset in degraded mode. Default
	// Open(cfg, Options{Logf: Logf}).
	OpenAgent func() (*Agent, error)
	// SelfTrialHook, when set, runs when the daemon starts with its own
	// binary on trial, before the trial window; an error ends Run with it.
	// Tests use it to build an agent that "does not come up" on trial.
	SelfTrialHook func() error
}

// Validate fills the defaults.
func (o *DaemonOptions) Validate(cfg *Config) error {
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	if o.SocketPath == "" {
		o.SocketPath = cfg.SocketPath()
	}
	if o.Self == "" {
		o.Self = "/proc/self/exe"
	}
	if o.OpenAgent == nil {
		logf := o.Logf
		o.OpenAgent = func() (*Agent, error) { return Open(cfg, Options{Logf: logf}) }
	}
	return nil
}

// ReexecError is returned by Daemon.Run when the agent's own binary was
// replaced (self-update) or restored (rollback): the caller closes the
// Agent and execs Path with the same arguments. The apps have already been
// stopped gracefully.
type ReexecError struct {
	Path   string
	Reason string
}

func (e *ReexecError) Error() string {
	return fmt.Sprintf("the agent binary %s changed (%s); re-executing it", e.Path, e.Reason)
}

// Daemon supervises the configured apps, runs trials after installs and at
// start, and serves the control socket. Self-update: after a swap of app
// SelfApp (or a rollback of it) Run stops the apps and returns a
// *ReexecError.
type Daemon struct {
	cfg  *Config
	opts DaemonOptions

	mu       sync.Mutex
	a        *Agent
	stateErr error
	sups     map[string]*Supervisor
	trials   map[string]*trial
	outcomes map[string]string // last trial outcome per app
	reexec   chan *ReexecError
	logs     *logRing // the daemon's last log lines (remote logs)
	started  time.Time

	opMu sync.Mutex // serialises installs, rollbacks, reset

	runCtx context.Context
	wg     sync.WaitGroup
	// ready is set once recovery is done and the apps are started; until
	// then the control socket answers status only (with Starting set).
	ready atomic.Bool
	// notifyFailed is set once a message to systemd failed (sdnotify.go).
	notifyFailed atomic.Bool
	// beforeRecover, when set (tests only), runs before Recover: it holds
	// the daemon in its starting phase.
	beforeRecover func()
}

// trial is an app's running trial.
type trial struct {
	cancel context.CancelFunc
	done   chan struct{}
	// committed and reason are set when done is closed.
	committed bool
	reason    string
	started   time.Time
}

// NewDaemon prepares a daemon for cfg. a may be nil only with
// opts.StateError set (degraded mode).
func NewDaemon(cfg *Config, a *Agent, opts DaemonOptions) (*Daemon, error) {
	if err := opts.Validate(cfg); err != nil {
		return nil, err
	}
	if a == nil && opts.StateError == nil {
		return nil, errors.New("daemon: no agent and no state error; open the agent first")
	}
	return &Daemon{
		cfg:      cfg,
		opts:     opts,
		a:        a,
		stateErr: opts.StateError,
		sups:     map[string]*Supervisor{},
		trials:   map[string]*trial{},
		outcomes: map[string]string{},
		reexec:   make(chan *ReexecError, 1),
		logs:     newLogRing(daemonLogLines),
	}, nil
}

// logf logs, and keeps the line for remote logs (logs.go).
func (d *Daemon) logf(format string, args ...any) {
	line := fmt.Sprintf(format, args...)
	d.logs.add(time.Now().UTC().Format(time.RFC3339) + " " + line)
	d.opts.Logf("%s", line)
}

func (d *Daemon) agent() *Agent {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.a
}

// Run recovers interrupted installs, starts a supervisor for every app
// whose binary exists, resumes trials, serves the control socket and
// blocks until ctx is done (then stops the apps gracefully and returns nil)
// or the agent must re-exec itself (*ReexecError).
func (d *Daemon) Run(ctx context.Context) error {
	d.started = time.Now()
	// The control socket answers from the start: after a power cut a
	// stale agent.sock is on disk and recovery may take a while (it hashes
	// the binaries); until the daemon is ready, status says "starting" and
	// every other op is refused as busy.
	ln, err := d.listen()
	if err != nil {
		return err
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	d.runCtx = runCtx
	go d.serve(runCtx, ln)

	if d.beforeRecover != nil {
		d.beforeRecover()
	}
	if a := d.agent(); a != nil {
		if _, err := a.Recover(ctx); err != nil {
			// Keep going: the apps must keep running whatever the state.
			d.logf("recover: %v", err)
		}
		if re := d.selfChanged(); re != nil {
			ln.Close()
			return re
		}
	} else {
		d.logf("state database unusable, running degraded (apps supervised, no installs): %v", d.stateErr)
	}

	for i := range d.cfg.Apps {
		c := &d.cfg.Apps[i]
		if err := checkAppDir(c); err != nil && !errors.Is(err, fs.ErrNotExist) {
			// The app keeps running; installs and rollbacks of it are
			// refused with this error until the directory is fixed.
			d.logf("app %s: %v", c.Name, err)
		}
		if c.Name == SelfApp {
			continue
		}
		if _, err := os.Stat(c.Path); err != nil {
			d.logf("app %s: not started: %v (it starts after its first install)", c.Name, err)
			continue
		}
		if _, _, err := d.ensureSupervisor(c); err != nil {
			d.logf("app %s: %v", c.Name, err)
		}
	}
	if err := d.resumeTrials(runCtx); err != nil {
		ln.Close()
		d.shutdown()
		return err
	}

	d.ready.Store(true)
	d.startMQTT(runCtx) // MQTT transport (transport_mqtt.go) when cfg.Broker is set
	d.logf("agent %s running: %d apps, control socket %s", d.opts.Version, len(d.cfg.Apps), d.opts.SocketPath)
	// systemd (sdnotify.go): ready now; the watchdog pings go on through
	// the apps' graceful stop below, until Run returns.
	d.notify(fmt.Sprintf("READY=1\nSTATUS=agent %s running %d apps", d.opts.Version, len(d.cfg.Apps)))
	wdCtx, wdStop := context.WithCancel(context.Background())
	wdDone := make(chan struct{})
	go func() { defer close(wdDone); d.watchdog(wdCtx) }()
	defer func() { wdStop(); <-wdDone }()

	var result error
	select {
	case <-ctx.Done():
		d.logf("stopping: %v", context.Cause(ctx))
		d.notify("STOPPING=1\nSTATUS=stopping the apps")
	case re := <-d.reexec:
		d.logf("%v", re)
		d.notify("STATUS=" + re.Error())
		result = re
	}
	cancel()
	ln.Close()
	d.shutdown()
	return result
}

// listen creates the control socket, mode 0600, replacing a stale one (the
// state database lock already proved no other daemon runs).
func (d *Daemon) listen() (net.Listener, error) {
	p := d.opts.SocketPath
	if err := ensureDir(filepath.Dir(p), 0o700, "the control socket's directory "+filepath.Dir(p), ""); err != nil {
		return nil, err
	}
	// unlink(2) never follows a link, and bind(2) fails on any name that
	// exists, so the socket is never created through a link. Its mode is
	// set by name after bind: ensureDir proved that only this user can
	// write the directory, so nobody can swap a link in meanwhile (and
	// nobody else can reach the socket before the chmod). Not through the
	// umask: it is process-wide, and a file another goroutine creates
	// meanwhile (a staged binary) would lose its execute bits.
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove the stale control socket %s: %w", p, err)
	}
	ln, err := net.Listen("unix", p)
	if err != nil {
		return nil, fmt.Errorf("listen on the control socket %s: %w", p, err)
	}
	if err := os.Chmod(p, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("make the control socket %s private: %w", p, err)
	}
	if fi, err := os.Lstat(p); err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm()&0o077 != 0 {
		ln.Close()
		return nil, fmt.Errorf("the control socket %s is not the private socket just created (%v); find out what else writes to %s: %w", p, err, filepath.Dir(p), ErrUnsafeDir)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(true)
	return ln, nil
}

// shutdown cancels trials and stops every app in parallel, gracefully.
func (d *Daemon) shutdown() {
	d.mu.Lock()
	for _, t := range d.trials {
		t.cancel()
	}
	sups := make([]*Supervisor, 0, len(d.sups))
	for _, s := range d.sups {
		sups = append(sups, s)
	}
	d.mu.Unlock()
	var wg sync.WaitGroup
	for _, s := range sups {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// StopGrace bounds each stop; this is only a safety net.
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := s.Stop(ctx); err != nil {
				d.logf("%v", err)
			}
		}()
	}
	wg.Wait()
	d.wg.Wait()
}

// ensureSupervisor returns the app's supervisor, starting one if needed
// (created reports that: its first run already is the current binary, so
// the caller need not restart it).
func (d *Daemon) ensureSupervisor(c *AppConfig) (s *Supervisor, created bool, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if s := d.sups[c.Name]; s != nil {
		return s, false, nil
	}
	s, err = NewSupervisor(SupervisorOptions{
		Name: c.Name, Path: c.Path, Args: c.Args, Env: c.Env,
		MinBackoff: d.opts.MinBackoff, MaxBackoff: d.opts.MaxBackoff, ResetAfter: d.opts.ResetAfter,
		StopGrace: d.opts.StopGrace, OutputLines: d.opts.OutputLines,
		Logf: d.opts.Logf, EchoOutput: d.opts.EchoOutput,
	})
	if err != nil {
		return nil, false, err
	}
	d.sups[c.Name] = s
	s.Start()
	return s, true, nil
}

func (d *Daemon) supervisor(app string) *Supervisor {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.sups[app]
}

// selfChanged returns a ReexecError when the agent's configured binary is
// no longer the running one (swapped in, or restored by a rollback).
func (d *Daemon) selfChanged() *ReexecError {
	c, ok := d.cfg.App(SelfApp)
	if !ok {
		return nil
	}
	want, err := os.Stat(c.Path)
	if err != nil {
		return nil // nothing to exec
	}
	self, err := os.Stat(d.opts.Self)
	if err != nil || os.SameFile(self, want) {
		return nil
	}
	return &ReexecError{Path: c.Path, Reason: "the binary at the configured path is not the running one"}
}

// requestReexec asks Run to stop everything and re-exec.
func (d *Daemon) requestReexec(re *ReexecError) {
	select {
	case d.reexec <- re:
	default:
	}
}

// resumeTrials starts a trial for every app the state says is on trial
// (an install before this start, or a boot in the middle of a trial).
func (d *Daemon) resumeTrials(ctx context.Context) error {
	a := d.agent()
	if a == nil {
		return nil
	}
	sts, err := a.Status()
	if err != nil {
		d.logf("status: %v", err)
		return nil
	}
	for _, st := range sts {
		if st.State != StateTrial {
			continue
		}
		c, ok := d.cfg.App(st.App)
		if !ok {
			continue
		}
		if c.Name == SelfApp {
			if d.opts.SelfTrialHook != nil {
				if err := d.opts.SelfTrialHook(); err != nil {
					return err
				}
			}
			d.startTrial(ctx, c, 0)
			continue
		}
		s := d.supervisor(c.Name)
		if s == nil {
			var err error
			if s, _, err = d.ensureSupervisor(c); err != nil {
				d.logf("app %s: %v", c.Name, err)
				continue
			}
		}
		d.startTrial(ctx, c, 1)
	}
	return nil
}

// startTrial watches app c from run fromRun on; it commits or rolls back
// on its own. The returned trial's done is closed with the outcome.
func (d *Daemon) startTrial(ctx context.Context, c *AppConfig, fromRun uint64) *trial {
	tctx, cancel := context.WithCancel(ctx)
	t := &trial{cancel: cancel, done: make(chan struct{}), started: time.Now()}
	d.mu.Lock()
	if old := d.trials[c.Name]; old != nil {
		old.cancel()
	}
	d.trials[c.Name] = t
	d.outcomes[c.Name] = ""
	d.mu.Unlock()
	d.logf("app %s: on trial for %s", c.Name, c.Health.Window.D())
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		defer cancel()
		defer close(t.done)
		t.committed, t.reason = d.runTrial(tctx, c, fromRun)
		d.mu.Lock()
		if d.trials[c.Name] == t {
			delete(d.trials, c.Name)
		}
		if t.reason != "" {
			d.outcomes[c.Name] = t.reason
		}
		d.mu.Unlock()
	}()
	return t
}

// runTrial is the trial rule (DESIGN decision 7): the app's process must
// stay up continuously for health.window — every crash restarts the window,
// more than health.max_restarts crashes is a crash loop — and then pass
// health.command. A failure rolls back to .prev and restarts the app. A
// cancelled ctx (daemon stopping) leaves the app on trial: the next start
// counts a boot on trial and tries again.
func (d *Daemon) runTrial(ctx context.Context, c *AppConfig, fromRun uint64) (committed bool, reason string) {
	window := c.Health.Window.D()
	if c.Name == SelfApp {
		return d.selfTrial(ctx, c, window)
	}
	s := d.supervisor(c.Name)
	if s == nil {
		return false, ""
	}
	for {
		changed := s.Changed()
		st := s.State()
		crashes := s.CrashesSince(fromRun)
		if crashes > c.Health.MaxRestarts {
			why := fmt.Sprintf("%s crash loop on trial: %d crashes within the %s health window (more than max_restarts %d); last: %s%s",
				d.nameVersion(c), crashes, window, c.Health.MaxRestarts, lastExitString(st), outputTail(s))
			return false, d.failTrial(ctx, c, why)
		}
		var wait <-chan time.Time
		var timer *time.Timer
		if st.Running && st.Run >= fromRun {
			up := time.Since(st.Since)
			if up >= window {
				break
			}
			timer = time.NewTimer(window - up)
			wait = timer.C
		}
		select {
		case <-ctx.Done():
			return false, ""
		case <-changed:
		case <-wait:
		}
		if timer != nil {
			timer.Stop()
		}
	}
	if len(c.Health.Command) > 0 {
		if err := RunHealth(ctx, c.Health.Command, c.Health.Timeout.D(), c.Env); err != nil {
			if ctx.Err() != nil {
				return false, ""
			}
			why := fmt.Sprintf("%s failed its health check on trial: %v%s", d.nameVersion(c), err, outputTail(s))
			return false, d.failTrial(ctx, c, why)
		}
	}
	return d.commitTrial(ctx, c)
}

func (d *Daemon) selfTrial(ctx context.Context, c *AppConfig, window time.Duration) (bool, string) {
	t := time.NewTimer(window)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false, ""
	case <-t.C:
	}
	if len(c.Health.Command) > 0 {
		if err := RunHealth(ctx, c.Health.Command, c.Health.Timeout.D(), c.Env); err != nil {
			if ctx.Err() != nil {
				return false, ""
			}
			why := fmt.Sprintf("the new agent failed its health check on trial: %v", err)
			return false, d.failTrial(ctx, c, why)
		}
	}
	return d.commitTrial(ctx, c)
}

func (d *Daemon) commitTrial(ctx context.Context, c *AppConfig) (bool, string) {
	d.opMu.Lock()
	defer d.opMu.Unlock()
	if ctx.Err() != nil {
		return false, ""
	}
	a := d.agent()
	if a == nil {
		return false, ""
	}
	if err := a.Commit(c.Name); err != nil {
		d.logf("app %s: commit: %v", c.Name, err)
		return false, fmt.Sprintf("commit failed: %v", err)
	}
	d.logf("app %s: passed its trial, committed", c.Name)
	return true, ""
}

// failTrial rolls back, restarts the previous binary and returns the
// recorded reason.
// nameVersion is "hello 0.3.0": the app and the version on trial, so a
// rollback's reason says which version failed (the status then shows the
// version it went back to).
func (d *Daemon) nameVersion(c *AppConfig) string {
	if a := d.agent(); a != nil {
		if v, _, err := a.Installed(c.Name); err == nil && v != "" {
			return c.Name + " " + v
		}
	}
	return c.Name
}

func (d *Daemon) failTrial(ctx context.Context, c *AppConfig, why string) string {
	d.opMu.Lock()
	defer d.opMu.Unlock()
	if ctx.Err() != nil {
		return ""
	}
	a := d.agent()
	if a == nil {
		return why
	}
	d.logf("app %s: trial failed: %s", c.Name, why)
	if err := a.Rollback(c.Name, why); err != nil {
		d.logf("app %s: rollback: %v", c.Name, err)
		return why + "; rollback failed: " + err.Error()
	}
	d.afterBinaryChange(ctx, c)
	return why
}

// afterBinaryChange makes the new file at c.Path run: restart the app, or
// re-exec the agent. The caller holds opMu.
func (d *Daemon) afterBinaryChange(ctx context.Context, c *AppConfig) {
	if c.Name == SelfApp {
		if re := d.selfChanged(); re != nil {
			d.requestReexec(re)
		}
		return
	}
	s, created, err := d.ensureSupervisor(c)
	if err != nil {
		d.logf("app %s: %v", c.Name, err)
		return
	}
	if created {
		return
	}
	if _, err := s.Restart(ctx); err != nil {
		d.logf("app %s: restart: %v", c.Name, err)
	}
}

func lastExitString(st SupervisorState) string {
	if st.LastExit == nil {
		return "no exit"
	}
	return st.LastExit.String()
}

func outputTail(s *Supervisor) string {
	out := s.Output()
	if n := len(out) - 5; n > 0 {
		out = out[n:]
	}
	if len(out) == 0 {
		return ""
	}
	return "; last output: " + strings.Join(out, " | ")
}
