package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// SupervisorOptions configure one supervised app process. Zero values take
// the documented defaults; call Validate (NewSupervisor does).
type SupervisorOptions struct {
	// Name is the app name, used in log lines. Required.
	Name string
	// Path is the executable. Required. It is looked up again on every
	// start, so a swapped binary runs at the next (re)start.
	Path string
	// Args are the arguments after the program name.
	Args []string
	// Env is added to the agent's environment ("KEY=value").
	Env []string
	// Dir is the working directory; empty means the agent's.
	Dir string
	// MinBackoff is the first restart delay after a crash. Default 200ms.
	MinBackoff time.Duration
	// MaxBackoff caps the doubling restart delay. Default 30s.
	MaxBackoff time.Duration
	// ResetAfter: a process that stayed up at least this long restarts with
	// MinBackoff again. Default 10s.
	ResetAfter time.Duration
	// StopGrace is how long a process has to exit after SIGTERM before its
	// process group gets SIGKILL. Default 5s.
	StopGrace time.Duration
	// OutputLines is how many of the last output lines (stdout and stderr
	// interleaved) are kept for status. Default 50.
	OutputLines int
	// MaxLineLength clips longer output lines. Default 512 bytes.
	MaxLineLength int
	// Logf, if set, receives supervisor events and (prefixed) app output.
	Logf func(format string, args ...any)
	// EchoOutput sends every app output line to Logf as well.
	EchoOutput bool
}

// Validate checks the options and fills in defaults.
func (o *SupervisorOptions) Validate() error {
	if o.Name == "" {
		return errors.New("supervisor: the app has no name; set apps[].name in the config")
	}
	if o.Path == "" {
		return fmt.Errorf("supervisor: app %s has no path; set apps[].path in the config", o.Name)
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = 200 * time.Millisecond
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = 30 * time.Second
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = o.MinBackoff
	}
	if o.ResetAfter <= 0 {
		o.ResetAfter = 10 * time.Second
	}
	if o.StopGrace <= 0 {
		o.StopGrace = 5 * time.Second
	}
	if o.OutputLines <= 0 {
		o.OutputLines = 50
	}
	if o.MaxLineLength <= 0 {
		o.MaxLineLength = 512
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	return nil
}

// Exit describes how one run of a supervised process ended.
type Exit struct {
	// Run is the number of the run that ended (1 for the first start).
	Run uint64 `json:"run"`
	// PID of the process; 0 when it could not be started.
	PID int `json:"pid,omitempty"`
	// Time the process ended.
	Time time.Time `json:"time"`
	// Uptime is how long it ran.
	Uptime time.Duration `json:"uptime"`
	// Code is the exit status, or -1 when it was killed by a signal or
	// never started.
	Code int `json:"code"`
	// Signal names the signal that killed it ("SIGSEGV"), if any.
	Signal string `json:"signal,omitempty"`
	// StartError is set when the process could not be started at all.
	StartError string `json:"start_error,omitempty"`
	// Requested is true when the supervisor itself stopped the process
	// (stop, restart): not a crash.
	Requested bool `json:"requested,omitempty"`
}

// String is a short reason: "exit status 2", "killed by SIGSEGV",
// "could not start: ...".
func (e Exit) String() string {
	switch {
	case e.StartError != "":
		return "could not start: " + e.StartError
	case e.Signal != "":
		return "killed by " + e.Signal
	default:
		return fmt.Sprintf("exit status %d", e.Code)
	}
}

// SupervisorState is a snapshot for status.
type SupervisorState struct {
	Running bool      `json:"running"`
	PID     int       `json:"pid,omitempty"`
	Run     uint64    `json:"run"`
	Since   time.Time `json:"since,omitempty"`
	// Restarts counts crashes (not requested stops) since the supervisor
	// started.
	Restarts int   `json:"restarts"`
	LastExit *Exit `json:"last_exit,omitempty"`
}

// Supervisor runs one app: it starts the process in its own process group,
// restarts it with exponential backoff when it exits, forwards SIGTERM (then
// SIGKILL after StopGrace) when stopped, keeps the last output lines and
// reports every exit on Exits.
//
// Memory is bounded: the output ring holds OutputLines lines of at most
// MaxLineLength bytes; Exits is a buffered channel whose oldest entries are
// dropped when nobody reads it.
type Supervisor struct {
	opts SupervisorOptions

	mu       sync.Mutex
	changed  chan struct{} // closed and replaced on every state change
	running  bool
	pid      int
	run      uint64
	since    time.Time
	restarts int
	crashRun []uint64 // runs that crashed, the last maxCrashRuns
	last     *Exit
	ring     []string
	ringNext int
	ringFull bool
	lines    uint64 // output lines since the supervisor started

	exits   chan Exit
	reqs    chan restartReq
	started bool
	cancel  context.CancelFunc
	done    chan struct{}
}

type restartReq struct {
	reply chan uint64
}

// NewSupervisor validates opts and returns a supervisor that is not started.
func NewSupervisor(opts SupervisorOptions) (*Supervisor, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	return &Supervisor{
		opts:    opts,
		changed: make(chan struct{}),
		ring:    make([]string, opts.OutputLines),
		exits:   make(chan Exit, 64),
		reqs:    make(chan restartReq),
		done:    make(chan struct{}),
	}, nil
}

// Name is the app name.
func (s *Supervisor) Name() string { return s.opts.Name }

// Start begins supervising. It returns at once; the first process starts in
// the background. Calling Start twice is a no-op.
func (s *Supervisor) Start() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return
	}
	s.started = true
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go s.loop(ctx)
}

// Stop stops supervising: SIGTERM to the process group, SIGKILL after
// StopGrace, and waits until the process has ended or ctx is done.
func (s *Supervisor) Stop(ctx context.Context) error {
	s.mu.Lock()
	if !s.started {
		s.mu.Unlock()
		return nil
	}
	cancel := s.cancel
	s.mu.Unlock()
	cancel()
	select {
	case <-s.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("app %s did not stop: %w", s.opts.Name, ctx.Err())
	}
}

// Restart stops the running process (SIGTERM, grace, SIGKILL) and starts a
// new one at once, with the backoff reset. It returns the new run number:
// exits with a Run at or above it belong to the new binary.
func (s *Supervisor) Restart(ctx context.Context) (uint64, error) {
	req := restartReq{reply: make(chan uint64, 1)}
	select {
	case s.reqs <- req:
	case <-s.done:
		return 0, fmt.Errorf("app %s: supervisor is stopped", s.opts.Name)
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	select {
	case run := <-req.reply:
		return run, nil
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// Exits reports every process exit, requested or not.
func (s *Supervisor) Exits() <-chan Exit { return s.exits }

// Changed returns a channel closed at the next state change (start, exit).
func (s *Supervisor) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

// State returns a snapshot.
func (s *Supervisor) State() SupervisorState {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := SupervisorState{Running: s.running, PID: s.pid, Run: s.run, Restarts: s.restarts}
	if s.running {
		st.Since = s.since
	}
	if s.last != nil {
		e := *s.last
		st.LastExit = &e
	}
	return st
}

// maxCrashRuns bounds the crash history CrashesSince looks at.
const maxCrashRuns = 64

// CrashesSince counts the crashes (exits not requested by the supervisor,
// and failed starts) of runs numbered run or later.
func (s *Supervisor) CrashesSince(run uint64) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, r := range s.crashRun {
		if r >= run {
			n++
		}
	}
	return n
}

// Output returns the last output lines, oldest first.
func (s *Supervisor) Output() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	if s.ringFull {
		out = append(out, s.ring[s.ringNext:]...)
	}
	out = append(out, s.ring[:s.ringNext]...)
	return out
}

// OutputSince returns at most n of the last output lines numbered above
// after (lines are numbered from 1 since the supervisor started), oldest
// first, and the number of the last line printed: the after of the next
// call.
func (s *Supervisor) OutputSince(after uint64, n int) ([]string, uint64) {
	out := s.Output()
	s.mu.Lock()
	total := s.lines
	s.mu.Unlock()
	// out holds lines total-len(out)+1 .. total (Output and the count are
	// read apart; a line printed in between is only numbered one late).
	first := total - uint64(min(uint64(len(out)), total)) + 1
	if after >= first {
		skip := after - first + 1
		if skip >= uint64(len(out)) {
			out = nil
		} else {
			out = out[skip:]
		}
	}
	if n > 0 && len(out) > n {
		out = out[len(out)-n:]
	}
	return out, total
}

// Done is closed when the supervisor has stopped.
func (s *Supervisor) Done() <-chan struct{} { return s.done }

func (s *Supervisor) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *Supervisor) addLine(line string) {
	if len(line) > s.opts.MaxLineLength {
		line = line[:s.opts.MaxLineLength] + "…"
	}
	s.mu.Lock()
	s.lines++
	s.ring[s.ringNext] = line
	s.ringNext++
	if s.ringNext == len(s.ring) {
		s.ringNext = 0
		s.ringFull = true
	}
	s.mu.Unlock()
	if s.opts.EchoOutput {
		s.opts.Logf("[%s] %s", s.opts.Name, line)
	}
}

func (s *Supervisor) report(e Exit) {
	s.mu.Lock()
	s.running = false
	s.pid = 0
	s.last = &e
	if !e.Requested {
		s.restarts++
		s.crashRun = append(s.crashRun, e.Run)
		if len(s.crashRun) > maxCrashRuns {
			s.crashRun = s.crashRun[1:]
		}
	}
	s.notifyLocked()
	s.mu.Unlock()
	for {
		select {
		case s.exits <- e:
			return
		default:
		}
		select { // full: drop the oldest
		case <-s.exits:
		default:
		}
	}
}

// proc is one started process.
type proc struct {
	cmd     *exec.Cmd
	started time.Time
	waited  chan struct{} // closed after Wait and output drained
	err     error         // Wait's error
}

func (s *Supervisor) start(run uint64) (*proc, error) {
	cmd := exec.Command(s.opts.Path, s.opts.Args...)
	cmd.Env = childEnv(s.opts.Env) // not the agent's systemd variables (sdnotify.go)
	cmd.Dir = s.opts.Dir
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid: true,
		// If the agent dies without stopping its apps (kill -9), the
		// next agent start must not find a second copy running.
		Pdeathsig: syscall.SIGTERM,
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	cmd.Stdin = nil
	cmd.Stdout = w
	cmd.Stderr = w
	if err := cmd.Start(); err != nil {
		r.Close()
		w.Close()
		return nil, err
	}
	w.Close()
	p := &proc{cmd: cmd, started: time.Now(), waited: make(chan struct{})}
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		s.readLines(r)
	}()
	go func() {
		p.err = cmd.Wait()
		// A grandchild may hold the pipe open: do not wait for it long.
		select {
		case <-drained:
		case <-time.After(100 * time.Millisecond):
		}
		r.Close()
		close(p.waited)
	}()
	s.mu.Lock()
	s.running = true
	s.pid = cmd.Process.Pid
	s.run = run
	s.since = p.started
	s.notifyLocked()
	s.mu.Unlock()
	s.opts.Logf("app %s: started pid %d (%s)", s.opts.Name, cmd.Process.Pid, s.opts.Path)
	return p, nil
}

func (s *Supervisor) readLines(r io.Reader) {
	br := bufio.NewReaderSize(r, 4096)
	var partial []byte
	for {
		chunk, isPrefix, err := br.ReadLine()
		if len(chunk) > 0 || (err == nil && !isPrefix) {
			if len(partial) < s.opts.MaxLineLength+1 {
				partial = append(partial, chunk...)
			}
			if !isPrefix {
				s.addLine(strings.TrimRight(string(partial), "\r"))
				partial = partial[:0]
			}
		}
		if err != nil {
			if len(partial) > 0 {
				s.addLine(string(partial))
			}
			return
		}
	}
}

func exitOf(p *proc, run uint64, requested bool) Exit {
	e := Exit{Run: run, PID: p.cmd.Process.Pid, Time: time.Now(), Uptime: time.Since(p.started), Code: -1, Requested: requested}
	if ps := p.cmd.ProcessState; ps != nil {
		if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			e.Signal = signalName(ws.Signal())
		} else {
			e.Code = ps.ExitCode()
		}
	}
	return e
}

// terminate sends SIGTERM to the process group, then SIGKILL after grace,
// and waits for the process.
func (s *Supervisor) terminate(p *proc) {
	pgid := p.cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	t := time.NewTimer(s.opts.StopGrace)
	defer t.Stop()
	select {
	case <-p.waited:
	case <-t.C:
		s.opts.Logf("app %s: still running %s after SIGTERM, sending SIGKILL", s.opts.Name, s.opts.StopGrace)
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-p.waited
	}
	// Whatever else is left in the group goes too.
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
}

func (s *Supervisor) loop(ctx context.Context) {
	defer close(s.done)
	backoff := s.opts.MinBackoff
	var run uint64
	var pending []restartReq
	reply := func() {
		for _, r := range pending {
			r.reply <- run
		}
		pending = nil
	}
	for {
		run++
		p, err := s.start(run)
		if err != nil {
			s.opts.Logf("app %s: could not start %s: %v", s.opts.Name, s.opts.Path, err)
			s.report(Exit{Run: run, Time: time.Now(), Code: -1, StartError: err.Error()})
		}
		reply()
		if p != nil {
			var requested bool
		wait:
			for {
				select {
				case <-p.waited:
					break wait
				case <-ctx.Done():
					s.terminate(p)
					s.report(exitOf(p, run, true))
					return
				case r := <-s.reqs:
					pending = append(pending, r)
					requested = true
					s.terminate(p)
					break wait
				}
			}
			e := exitOf(p, run, requested)
			s.report(e)
			if requested {
				backoff = s.opts.MinBackoff
				continue
			}
			s.opts.Logf("app %s: %s after %s", s.opts.Name, e, e.Uptime.Round(time.Millisecond))
			if e.Uptime >= s.opts.ResetAfter {
				backoff = s.opts.MinBackoff
			}
		}
		s.opts.Logf("app %s: restarting in %s", s.opts.Name, backoff)
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return
		case r := <-s.reqs:
			t.Stop()
			pending = append(pending, r)
			backoff = s.opts.MinBackoff
			continue
		}
		backoff = nextBackoff(backoff, s.opts.MaxBackoff)
	}
}

// nextBackoff doubles d up to max.
func nextBackoff(d, max time.Duration) time.Duration {
	if d *= 2; d > max {
		return max
	}
	return d
}

// signalName returns "SIGSEGV" style names for the common signals.
func signalName(sig syscall.Signal) string {
	switch sig {
	case syscall.SIGHUP:
		return "SIGHUP"
	case syscall.SIGINT:
		return "SIGINT"
	case syscall.SIGQUIT:
		return "SIGQUIT"
	case syscall.SIGILL:
		return "SIGILL"
	case syscall.SIGTRAP:
		return "SIGTRAP"
	case syscall.SIGABRT:
		return "SIGABRT"
	case syscall.SIGBUS:
		return "SIGBUS"
	case syscall.SIGFPE:
		return "SIGFPE"
	case syscall.SIGKILL:
		return "SIGKILL"
	case syscall.SIGSEGV:
		return "SIGSEGV"
	case syscall.SIGPIPE:
		return "SIGPIPE"
	case syscall.SIGALRM:
		return "SIGALRM"
	case syscall.SIGTERM:
		return "SIGTERM"
	case syscall.SIGUSR1:
		return "SIGUSR1"
	case syscall.SIGUSR2:
		return "SIGUSR2"
	}
	return fmt.Sprintf("signal %d (%s)", int(sig), sig.String())
}
