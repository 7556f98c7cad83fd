package agent

// The control socket.
//
// The daemon listens on <data_dir>/agent.sock (a unix socket, mode 0600:
// root, or whoever runs the agent, only). The protocol is JSON lines: the
// client writes one Request per line; for each request the daemon writes
// zero or more event lines and then exactly one line with "type":"result".
// A client may send several requests, one after the other, on a connection.
//
//	→ {"op":"status"}
//	← {"type":"result","ok":true,"status":{"device_id":"pi-017","agent_version":"1.2.0","apps":[...]}}
//
//	→ {"op":"sideload","bundle":"/media/usb/hello-1.2.0-linux-armv6.efb","wait":true}
//	← {"type":"progress","progress":{"app":"hello","step":"verify"}}
//	← {"type":"progress","progress":{"app":"hello","step":"stage","done":65536,"total":1834000}}
//	← ...
//	← {"type":"event","app":"hello","event":"installed","message":"hello 1.2.0 swapped in, on trial"}
//	← {"type":"event","app":"hello","event":"trial","message":"must stay up 10s and pass its health command"}
//	← {"type":"result","ok":true,"result":{"app":"hello","version":"1.2.0",...},"trial":"committed"}
//
// Ops:
//
//   - "status": every app's recorded state plus, from the daemon, its
//     process (pid, restarts, last exit), last output lines and trial.
//     The socket is served from the daemon's start: while it still
//     recovers, status carries "starting":"recovering" and every other op
//     is refused with code "busy".
//   - "check": dry run of the bundle at Bundle (nothing changes).
//   - "sideload": install the bundle at Bundle (the daemon opens the file
//     itself: give an absolute path), restart the app on the new binary and,
//     when Wait is set, stream the trial until it commits or rolls back.
//     The result is ok only if the release installed (and, with Wait,
//     committed). For the agent itself (app "edgefleet-agent") the result
//     comes right after the swap: the daemon then re-executes itself.
//   - "rollback": roll App back to its previous binary with Reason.
//   - "reset": move a corrupt state database aside and start afresh. A
//     daemon that has its database open refuses (code "refused"): that
//     database is healthy, and `edgefleet-agent reset --force` with the
//     daemon stopped is the way to drop it anyway.
//
// A failed result carries Error (a full sentence) and Code: "refused" (the
// release or request can never succeed as is), "busy" (try again later),
// "error" (anything else), "usage" (bad request).

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/edgefleet/edgefleet/protocol"
)

// Control ops.
const (
	OpStatus   = "status"
	OpCheck    = "check"
	OpSideload = "sideload"
	OpRollback = "rollback"
	OpReset    = "reset"
	OpKeySet   = "keyset" // control_keyset.go
)

// Response types and result codes.
const (
	TypeProgress = "progress"
	TypeEvent    = "event"
	TypeResult   = "result"

	CodeRefused = "refused"
	CodeBusy    = "busy"
	CodeError   = "error"
	CodeUsage   = "usage"
)

// maxRequestLine bounds one request line.
const maxRequestLine = 64 << 10

// maxResponseLine bounds one line from the daemon (a status carries every
// app's history and output lines).
const maxResponseLine = 16 << 20

// Request is one control request.
type Request struct {
	Op string `json:"op"`
	// Bundle is an absolute path to a .efb file (check, sideload) or a
	// key set chain message (keyset).
	Bundle string `json:"bundle,omitempty"`
	// Wait (sideload): stream the trial and answer with its outcome.
	Wait bool `json:"wait,omitempty"`
	// App and Reason (rollback).
	App    string `json:"app,omitempty"`
	Reason string `json:"reason,omitempty"`
}

// Response is one line from the daemon.
type Response struct {
	Type     string             `json:"type"`
	Progress *Progress          `json:"progress,omitempty"`
	App      string             `json:"app,omitempty"`
	Event    string             `json:"event,omitempty"`
	Message  string             `json:"message,omitempty"`
	OK       bool               `json:"ok,omitempty"`
	Code     string             `json:"code,omitempty"`
	Error    string             `json:"error,omitempty"`
	Result   *Result            `json:"result,omitempty"`
	Trial    string             `json:"trial,omitempty"` // "committed", "rolled-back", "pending"
	Manifest *protocol.Manifest `json:"manifest,omitempty"`
	Status   *DaemonStatus      `json:"status,omitempty"`
}

// DaemonStatus is the answer to "status".
type DaemonStatus struct {
	DeviceID string `json:"device_id"`
	// Daemon is true when a running daemon answered (process, output and
	// trial fields are then filled in).
	Daemon       bool      `json:"daemon"`
	AgentVersion string    `json:"agent_version,omitempty"`
	PID          int       `json:"pid"`
	Since        time.Time `json:"since"`
	StateError   string    `json:"state_error,omitempty"`
	// Starting is set while the daemon recovers and starts the apps
	// ("recovering"); it answers status only until then.
	Starting string           `json:"starting,omitempty"`
	Apps     []DaemonAppState `json:"apps"`

	// Trust is the key set held and the time floor (keyset.go).
	Trust *TrustInfo `json:"trust,omitempty"`
}

// DaemonAppState is one app in DaemonStatus: the recorded state plus what
// only the running daemon knows.
type DaemonAppState struct {
	AppStatus
	Process *SupervisorState `json:"process,omitempty"`
	Output  []string         `json:"output,omitempty"`
	// Trial: "running since ..." while on trial, else the last failed
	// trial's reason (empty when none).
	Trial string `json:"trial,omitempty"`
}

// codeOf classifies an error for Response.Code.
func codeOf(err error) string {
	switch {
	case errors.Is(err, ErrBusy):
		return CodeBusy
	case Fatal(err), errors.Is(err, ErrNoSpace), errors.Is(err, ErrNoPrevious), errors.Is(err, ErrCorruptState), errors.Is(err, ErrCorruptFloor),
		errors.Is(err, ErrHealthyState), errors.Is(err, ErrUnsafeDir):
		return CodeRefused
	}
	return CodeError
}

func errResult(err error) Response {
	return Response{Type: TypeResult, Code: codeOf(err), Error: err.Error()}
}

// serve accepts control connections until ctx is done.
func (d *Daemon) serve(ctx context.Context, ln net.Listener) {
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			d.logf("control socket: %v", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			d.handleConn(ctx, conn)
		}()
	}
}

func (d *Daemon) handleConn(ctx context.Context, conn net.Conn) {
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	br := bufio.NewReaderSize(conn, 4096)
	var wmu sync.Mutex
	enc := json.NewEncoder(conn)
	send := func(r Response) {
		wmu.Lock()
		defer wmu.Unlock()
		conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if err := enc.Encode(r); err != nil {
			return // the client went away; the operation goes on
		}
	}
	for {
		line, err := readLine(br, maxRequestLine)
		if err != nil {
			if !errors.Is(err, io.EOF) {
				send(Response{Type: TypeResult, Code: CodeUsage, Error: err.Error()})
			}
			return
		}
		req, err := DecodeRequest(line)
		if err != nil {
			send(Response{Type: TypeResult, Code: CodeUsage, Error: err.Error()})
			return
		}
		r, after := d.handle(ctx, req, send)
		send(r)
		if after != nil {
			after()
		}
	}
}

// DecodeRequest parses one request line strictly: one JSON object, no
// unknown fields, no trailing data, a known op.
func DecodeRequest(line []byte) (Request, error) {
	var req Request
	if len(line) > maxRequestLine {
		return req, fmt.Errorf("control request longer than %d bytes", maxRequestLine)
	}
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return Request{}, fmt.Errorf("control request is not valid JSON (%v); send one JSON object per line", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Request{}, errors.New("control request has data after the JSON object; send one object per line")
	}
	switch req.Op {
	case OpStatus, OpCheck, OpSideload, OpRollback, OpReset, OpKeySet:
	default:
		return Request{}, fmt.Errorf("unknown control op %q; use status, check, sideload, rollback, reset or keyset", clip(req.Op, 40))
	}
	return req, nil
}

func readLine(br *bufio.Reader, limit int) ([]byte, error) {
	var line []byte
	for {
		chunk, isPrefix, err := br.ReadLine()
		if err != nil {
			return nil, err
		}
		line = append(line, chunk...)
		if len(line) > limit {
			return nil, fmt.Errorf("control request longer than %d bytes", limit)
		}
		if !isPrefix {
			return line, nil
		}
	}
}

// handle runs one request; send streams events; the returned response is
// the result line, and after (if not nil) runs once it was sent (the
// agent re-executing itself must answer first).
func (d *Daemon) handle(ctx context.Context, req Request, send func(Response)) (r Response, after func()) {
	if req.Op != OpStatus && !d.ready.Load() {
		return Response{Type: TypeResult, Code: CodeBusy, Error: "the daemon is starting: it is recovering interrupted installs and starting the apps (after a restart or a power cut); try again in a few seconds"}, nil
	}
	switch req.Op {
	case OpStatus:
		st := d.Status()
		return Response{Type: TypeResult, OK: true, Status: &st}, nil
	case OpCheck:
		return d.opCheck(ctx, req, send), nil
	case OpSideload:
		return d.opSideload(ctx, req, send)
	case OpRollback:
		return d.opRollback(ctx, req)
	case OpReset:
		return d.opReset(ctx), nil
	case OpKeySet:
		return d.opKeySet(req), nil
	}
	return Response{Type: TypeResult, Code: CodeUsage, Error: fmt.Sprintf("unknown control op %q; use status, check, sideload, rollback or reset", req.Op)}, nil
}

// selfAfter is the after-hook for a change of the agent's own binary.
func (d *Daemon) selfAfter(app string) func() {
	if app != SelfApp {
		return nil
	}
	return func() {
		if re := d.selfChanged(); re != nil {
			d.requestReexec(re)
		}
	}
}

// Status reports the recorded state and the daemon's view of every app.
func (d *Daemon) Status() DaemonStatus {
	out := DaemonStatus{DeviceID: d.cfg.DeviceID, Daemon: true, AgentVersion: d.opts.Version, PID: os.Getpid(), Since: d.started}
	if !d.ready.Load() {
		out.Starting = "recovering"
	}
	var recs []AppStatus
	d.mu.Lock()
	a, stateErr := d.a, d.stateErr
	d.mu.Unlock()
	if a != nil {
		out.Trust = a.trustInfo() // keyset.go
		var err error
		if recs, err = a.Status(); err != nil {
			out.StateError = err.Error()
		}
	} else if stateErr != nil {
		out.StateError = stateErr.Error() + "; the apps keep running; run `edgefleet-agent reset` to move the state database aside"
	}
	if recs == nil {
		for _, c := range d.cfg.Apps {
			recs = append(recs, AppStatus{App: c.Name, Path: c.Path, State: "unknown"})
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, r := range recs {
		as := DaemonAppState{AppStatus: r}
		if s := d.sups[r.App]; s != nil {
			st := s.State()
			as.Process = &st
			as.Output = s.Output()
		}
		if t := d.trials[r.App]; t != nil {
			as.Trial = "running since " + t.started.UTC().Format(time.RFC3339)
		} else {
			as.Trial = d.outcomes[r.App]
		}
		out.Apps = append(out.Apps, as)
	}
	return out
}

func (d *Daemon) openBundle(path string) (*os.File, error) {
	if path == "" || !filepath.IsAbs(path) {
		return nil, fmt.Errorf("the bundle path %q must be absolute (the daemon opens it itself)", path)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open the bundle: %w", err)
	}
	return f, nil
}

func (d *Daemon) opCheck(ctx context.Context, req Request, send func(Response)) Response {
	a := d.agent()
	if a == nil {
		return errResult(d.degradedErr())
	}
	f, err := d.openBundle(req.Bundle)
	if err != nil {
		return Response{Type: TypeResult, Code: CodeUsage, Error: err.Error()}
	}
	defer f.Close()
	m, note, err := a.CheckKeySet(ctx, f)
	if err != nil {
		return errResult(err)
	}
	return Response{Type: TypeResult, OK: true, Manifest: m, Message: note}
}

func (d *Daemon) degradedErr() error {
	d.mu.Lock()
	stateErr := d.stateErr
	d.mu.Unlock()
	if stateErr == nil {
		return fmt.Errorf("the state database was just reset; try again: %w", ErrBusy)
	}
	return fmt.Errorf("the agent runs without its state database (%v); run `edgefleet-agent reset` first: %w", stateErr, ErrCorruptState)
}

func (d *Daemon) opSideload(ctx context.Context, req Request, send func(Response)) (Response, func()) {
	f, err := d.openBundle(req.Bundle)
	if err != nil {
		return Response{Type: TypeResult, Code: CodeUsage, Error: err.Error()}, nil
	}
	defer f.Close()
	res, tr, err := d.Sideload(ctx, f, func(p Progress) {
		send(Response{Type: TypeProgress, Progress: &p})
	})
	if err != nil {
		return errResult(err), nil
	}
	return d.sideloadTrial(ctx, req, res, tr, send), d.selfAfter(res.App)
}

func (d *Daemon) sideloadTrial(ctx context.Context, req Request, res *Result, tr *trial, send func(Response)) Response {
	send(Response{Type: TypeEvent, App: res.App, Event: "installed", Message: fmt.Sprintf("%s %s swapped in (previous %s), on trial", res.App, res.Version, versionOr(res.Previous))})
	if res.App == SelfApp {
		return Response{Type: TypeResult, OK: true, Result: res, Trial: "pending",
			Message: "the agent re-executes itself on the new binary; it commits after its health window"}
	}
	if tr == nil || !req.Wait {
		return Response{Type: TypeResult, OK: true, Result: res, Trial: "pending"}
	}
	c, _ := d.cfg.App(res.App)
	msg := fmt.Sprintf("must stay up %s", c.Health.Window.D())
	if len(c.Health.Command) > 0 {
		msg += " and pass its health command"
	}
	send(Response{Type: TypeEvent, App: res.App, Event: "trial", Message: msg})
	select {
	case <-tr.done:
	case <-ctx.Done():
		return Response{Type: TypeResult, Code: CodeError, Error: "the daemon is stopping; the trial resumes at its next start", Result: res, Trial: "pending"}
	}
	if tr.committed {
		send(Response{Type: TypeEvent, App: res.App, Event: "committed", Message: fmt.Sprintf("%s %s passed its trial", res.App, res.Version)})
		return Response{Type: TypeResult, OK: true, Result: res, Trial: "committed"}
	}
	if tr.reason == "" {
		return Response{Type: TypeResult, Code: CodeError, Error: "the trial was interrupted; it resumes at the next daemon start", Result: res, Trial: "pending"}
	}
	send(Response{Type: TypeEvent, App: res.App, Event: "rolled-back", Message: tr.reason})
	return Response{Type: TypeResult, Code: CodeRefused, Error: "rolled back: " + tr.reason, Result: res, Trial: "rolled-back"}
}

// Sideload installs a bundle through the daemon: Install, then restart the
// app on the new binary and start its trial (returned), or, for the agent
// itself, ask Run to re-exec.
func (d *Daemon) Sideload(ctx context.Context, bundle io.Reader, progress func(Progress)) (*Result, *trial, error) {
	a := d.agent()
	if a == nil {
		return nil, nil, d.degradedErr()
	}
	d.opMu.Lock()
	defer d.opMu.Unlock()
	res, err := a.Install(ctx, bundle, progress)
	if err != nil {
		return nil, nil, err
	}
	c, _ := d.cfg.App(res.App)
	if c.Name == SelfApp {
		// The caller re-executes after answering (selfAfter).
		return res, nil, nil
	}
	s, created, err := d.ensureSupervisor(c)
	if err != nil {
		return res, nil, err
	}
	run := uint64(1) // a new supervisor's first run is the new binary
	if !created {
		if run, err = s.Restart(ctx); err != nil {
			return res, nil, fmt.Errorf("restart %s on the new binary: %w", c.Name, err)
		}
	}
	// The trial belongs to the daemon, not to this request: it goes on if
	// the client goes away.
	return res, d.startTrial(d.runCtx, c, run), nil
}

func (d *Daemon) opRollback(ctx context.Context, req Request) (Response, func()) {
	a := d.agent()
	if a == nil {
		return errResult(d.degradedErr()), nil
	}
	c, ok := d.cfg.App(req.App)
	if !ok {
		return errResult(fmt.Errorf("app %q: %w", req.App, ErrUnknownApp)), nil
	}
	reason := req.Reason
	if reason == "" {
		reason = "rolled back by hand (edgefleet-agent rollback)"
	}
	// A refusal changes nothing: not even the running trial.
	if err := a.CanRollback(c.Name); err != nil {
		return errResult(err), nil
	}
	d.mu.Lock()
	if t := d.trials[c.Name]; t != nil {
		t.cancel()
	}
	d.mu.Unlock()
	d.opMu.Lock()
	defer d.opMu.Unlock()
	if err := a.RollbackByHand(c.Name, reason); err != nil {
		return errResult(err), nil
	}
	d.mu.Lock()
	d.outcomes[c.Name] = reason
	d.mu.Unlock()
	if c.Name != SelfApp {
		d.afterBinaryChange(d.runCtx, c)
	}
	v, seq, _ := a.Installed(c.Name)
	return Response{Type: TypeResult, OK: true, App: c.Name, Message: fmt.Sprintf("%s rolled back to %s (sequence %d)", c.Name, v, seq)}, d.selfAfter(c.Name)
}

func (d *Daemon) opReset(ctx context.Context) Response {
	d.opMu.Lock()
	defer d.opMu.Unlock()
	if a := d.agent(); a != nil {
		// The daemon has the database open, so it reads fine: moving it
		// aside would only make the device forget what it runs (issue 7).
		return errResult(fmt.Errorf("the state database %s is healthy and in use by this running daemon; nothing needs resetting — a reset is for a database the agent cannot read; if you really want to start over with empty state, stop the daemon and run `edgefleet-agent reset --force` (the anti-rollback floor in %s is kept either way): %w",
			d.cfg.StatePath(), d.cfg.FloorPath(), ErrHealthyState))
	}
	moved, err := ResetState(d.cfg, time.Now())
	if errors.Is(err, ErrHealthyState) {
		// Repaired (or replaced) since the daemon started: reopen it as is.
		moved, err = "", nil
	}
	if err != nil {
		return errResult(err)
	}
	a, err := d.opts.OpenAgent()
	if err != nil {
		return errResult(err)
	}
	d.mu.Lock()
	d.a, d.stateErr = a, nil
	d.mu.Unlock()
	msg := "state database reopened"
	if moved != "" {
		msg = "corrupt state database moved to " + moved + "; starting with an empty one"
	}
	msg += " (binaries kept; the anti-rollback floor in " + d.cfg.FloorPath() + " is kept too)"
	d.logf("%s", msg)
	return Response{Type: TypeResult, OK: true, Message: msg}
}

// Agent returns the daemon's agent (nil while degraded). After a reset in
// degraded mode it is a new Agent that the caller must close.
func (d *Daemon) Agent() *Agent { return d.agent() }

// errReply wraps what is wrong with a line from the control socket.
func errReply(format string, args ...any) error {
	return fmt.Errorf("the agent daemon's reply is malformed: "+format+"; whatever listens on the control socket is not a matching edgefleet-agent (check that the daemon and this command are the same version, and what else could have created the socket)", args...)
}

// DecodeResponse parses one line from the control socket strictly: it may
// come from anything that listens there, so it is untrusted input. One
// JSON object, no unknown fields, no trailing data, a known type, and the
// fields that type needs (a progress line has its progress, a failed
// result its error and code). Which fields a successful result needs
// depends on the request; Do checks that too.
func DecodeResponse(line []byte) (Response, error) {
	if len(line) > maxResponseLine {
		return Response{}, errReply("a line is longer than %d bytes", maxResponseLine)
	}
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	var r Response
	if err := dec.Decode(&r); err != nil {
		return Response{}, errReply("%q is not the JSON object expected (%v)", clip(string(line), 80), err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Response{}, errReply("data after the JSON object in %q", clip(string(line), 80))
	}
	resultOnly := r.OK || r.Code != "" || r.Error != "" || r.Result != nil || r.Trial != "" || r.Manifest != nil || r.Status != nil
	switch r.Type {
	case TypeProgress:
		p := r.Progress
		switch {
		case p == nil:
			return Response{}, errReply(`a "progress" line without its progress`)
		case resultOnly || r.Event != "":
			return Response{}, errReply(`a "progress" line with the fields of a result or event`)
		case !protocol.ValidApp(p.App):
			return Response{}, errReply("progress for app %q, which is not a valid app name", clip(p.App, 40))
		case p.Done < 0 || p.Total < 0:
			return Response{}, errReply("progress %d of %d bytes", p.Done, p.Total)
		}
		switch p.Step {
		case StepVerify, StepCompat, StepStorage, StepStage, StepProbe, StepSwap:
		default:
			return Response{}, errReply("unknown install step %q", clip(p.Step, 40))
		}
	case TypeEvent:
		switch {
		case resultOnly || r.Progress != nil:
			return Response{}, errReply(`an "event" line with the fields of a result or progress`)
		case r.Event == "":
			return Response{}, errReply(`an "event" line without its event`)
		case r.App != "" && !protocol.ValidApp(r.App):
			return Response{}, errReply("an event for app %q, which is not a valid app name", clip(r.App, 40))
		}
	case TypeResult:
		if r.Progress != nil || r.Event != "" {
			return Response{}, errReply("a result with the fields of a progress or event line")
		}
		if r.OK {
			if r.Code != "" || r.Error != "" {
				return Response{}, errReply("a result that is both ok and an error (%q)", clip(r.Error, 80))
			}
			break
		}
		switch r.Code {
		case CodeRefused, CodeBusy, CodeError, CodeUsage:
		default:
			return Response{}, errReply("a failed result with code %q (want refused, busy, error or usage)", clip(r.Code, 40))
		}
		if r.Error == "" {
			return Response{}, errReply("a failed result that does not say why")
		}
	default:
		return Response{}, errReply("a line of type %q (want progress, event or result)", clip(r.Type, 40))
	}
	if r.Trial != "" {
		switch r.Trial {
		case "committed", "rolled-back", "pending":
		default:
			return Response{}, errReply("trial outcome %q (want committed, rolled-back or pending)", clip(r.Trial, 40))
		}
	}
	if res := r.Result; res != nil && (!protocol.ValidApp(res.App) || res.Version == "" || res.Sequence == 0) {
		return Response{}, errReply("an install result without a valid app, version and sequence")
	}
	if st := r.Status; st != nil {
		for _, a := range st.Apps {
			if !protocol.ValidApp(a.App) {
				return Response{}, errReply("a status for app %q, which is not a valid app name", clip(a.App, 40))
			}
		}
	}
	return r, nil
}

// answers checks that a successful result carries what op needs.
func (r *Response) answers(op string) error {
	if !r.OK {
		return nil
	}
	switch op {
	case OpStatus:
		if r.Status == nil || r.Status.DeviceID == "" {
			return errReply("the answer to status has no status")
		}
	case OpCheck:
		if r.Manifest == nil || !protocol.ValidApp(r.Manifest.App) || r.Manifest.Version == "" {
			return errReply("the answer to check has no manifest")
		}
	case OpSideload:
		if r.Result == nil || r.Trial == "" {
			return errReply("the answer to sideload has no install result or trial outcome")
		}
		if r.Trial == "rolled-back" {
			return errReply("the answer to sideload is ok but says the release was rolled back")
		}
	case OpRollback, OpReset, OpKeySet:
		if r.Message == "" {
			return errReply("the answer to %s has no message", op)
		}
	}
	return nil
}

// ControlClient talks to a running daemon over its control socket.
type ControlClient struct {
	conn net.Conn
	br   *bufio.Reader
}

// DialControl connects to the daemon's socket. An error wrapping
// ErrNoDaemon means nobody answers (no socket, or a stale one).
func DialControl(ctx context.Context, path string) (*ControlClient, error) {
	var dl net.Dialer
	conn, err := dl.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("connect to the agent daemon at %s: %v: %w", path, err, ErrNoDaemon)
	}
	return &ControlClient{conn: conn, br: bufio.NewReaderSize(conn, 64<<10)}, nil
}

// ErrNoDaemon: no daemon answers on the control socket.
var ErrNoDaemon = errors.New("the agent daemon is not running")

// Close closes the connection.
func (c *ControlClient) Close() error { return c.conn.Close() }

// Do sends req and calls onEvent for every progress/event line; it returns
// the result line. ctx cancels the wait (the daemon's operation goes on).
func (c *ControlClient) Do(ctx context.Context, req Request, onEvent func(Response)) (Response, error) {
	stop := context.AfterFunc(ctx, func() { c.conn.SetDeadline(time.Now()) })
	defer stop()
	b, err := json.Marshal(req)
	if err != nil {
		return Response{}, err
	}
	if _, err := c.conn.Write(append(b, '\n')); err != nil {
		return Response{}, fmt.Errorf("send to the agent daemon: %w", err)
	}
	for {
		line, err := readLine(c.br, maxResponseLine)
		if err != nil {
			if ctx.Err() != nil {
				return Response{}, ctx.Err()
			}
			if errors.Is(err, io.EOF) {
				return Response{}, errors.New("the agent daemon closed the connection before answering (did it restart?)")
			}
			return Response{}, fmt.Errorf("read from the agent daemon: %w", err)
		}
		r, err := DecodeResponse(line)
		if err != nil {
			return Response{}, err
		}
		if r.Type == TypeResult {
			if err := r.answers(req.Op); err != nil {
				return Response{}, err
			}
			return r, nil
		}
		if onEvent != nil {
			onEvent(r)
		}
	}
}
