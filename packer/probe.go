package packer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/edgefleet/edgefleet/internal/stayup"
	"github.com/edgefleet/edgefleet/protocol"
)

// The probe step runs the final executable under qemu-user with the
// profile's CPU model: the same check the device runs before its swap
// (protocol.Probe), so a binary that cannot start on that CPU (SIGILL, a
// UPX stub that dies) is caught here.
//
// With Options.Probe nil the probe is chosen per profile (auto): run
// `--version`; if it exits 0 printing exactly the version, that is the probe
// (expect, which every agent reads); printing the version among other text
// ("hey 0.1.5"), a match of the version; printing something else, `--version`
// exiting 0. If `--version` fails (a program without that flag), `-h` exiting
// 0 (Go's flag package exits 0 for -h). If neither passes, the pack fails and
// says how to choose a probe.

// probeRun is how one run under emulation went.
type probeRun struct {
	stdout, stderr string
	exit           int            // exit status; -1 when killed by a signal or not started
	signal         syscall.Signal // non-zero when killed by a signal
	timedOut       bool
	stayedUp       bool // with stayUp: still running after it
	err            error
}

// failure describes a run that did not exit 0 (or did not stay up), empty
// when it did.
func (r probeRun) failure(stayUp time.Duration) string {
	stderr := strings.TrimSpace(r.stderr)
	if len(stderr) > 300 {
		stderr = stderr[:300] + "…"
	}
	switch {
	case r.timedOut:
		return "no answer within the emulated probe timeout"
	case r.signal != 0:
		return fmt.Sprintf("killed by signal %s; stderr: %s", r.signal, stderr)
	case r.err != nil:
		return r.err.Error()
	case r.exit != 0:
		return fmt.Sprintf("exit status %d; stderr: %s", r.exit, stderr)
	case stayUp > 0 && !r.stayedUp:
		return fmt.Sprintf("exited with status 0 within %s; it must stay up that long", stayUp)
	}
	return ""
}

// emulate runs the final executable of j under qemu with args.
func (p *pack) emulate(ctx context.Context, j *job, qemu string, args []string, stayUp time.Duration) probeRun {
	ctx, cancel := context.WithTimeout(ctx, p.o.ProbeTimeout)
	defer cancel()
	argv := []string{}
	if j.prof.QEMUCPU != "" {
		argv = append(argv, "-cpu", j.prof.QEMUCPU)
	}
	argv = append(append(argv, j.final), args...)
	cmd := exec.CommandContext(ctx, qemu, argv...)
	cmd.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin"}
	cmd.Dir = j.dir
	cmd.WaitDelay = time.Second
	stdout := &limitedBuffer{limit: maxProbeOutput}
	stderr := &limitedBuffer{limit: 4 << 10}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	var r probeRun
	var err error
	if stayUp > 0 {
		r.stayedUp, err = stayup.Run(cmd, stayUp)
	} else {
		err = cmd.Run()
	}
	r.stdout, r.stderr = stdout.String(), stderr.String()
	if ctx.Err() == context.DeadlineExceeded {
		r.timedOut, r.exit = true, -1
		return r
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.exit = ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			r.signal, r.exit = ws.Signal(), -1
		}
	default:
		r.err, r.exit = err, -1
	}
	return r
}

// DescribeProbe is pr in words, naming a VersionMatch pattern for what it
// is: "--version must print 1.4.0 among other text".
func DescribeProbe(pr *protocol.Probe, version string) string {
	if pr.Match != "" && pr.Match == VersionMatch(version) && pr.Expect == "" && pr.StayUp == 0 {
		return strings.TrimSpace(strings.Join(pr.Args, " ")+" must exit 0 printing "+version) + " among other text"
	}
	return pr.Describe()
}

// VersionMatch is the probe pattern for output that contains version as a
// word ("hey 0.1.5" for 0.1.5), not as part of a longer version.
func VersionMatch(version string) string {
	return `(^|[^0-9A-Za-z.+-])` + regexp.QuoteMeta(version) + `($|[^0-9A-Za-z.+-])`
}

func stepProbe(ctx context.Context, p *pack, j *job) (string, error) {
	if p.o.NoProbe {
		j.res.Probe = "skipped: no probe"
		return "no probe for this pack", nil
	}
	qemu := j.prof.QEMUBinary()
	path, err := exec.LookPath(qemu)
	if err != nil {
		j.res.Probe = "skipped: no " + qemu
		if p.o.autoProbe {
			if p.stamped {
				j.probe = DefaultProbe(p.o.Version)
			} else {
				j.note("probe", "no probe in the manifest: the version is not stamped and there is no emulator to find one; pass --probe-args")
			}
		}
		return fmt.Sprintf("%s not found: install qemu-user (scripts/test.sh does) to probe under emulation", qemu), nil
	}
	where := fmt.Sprintf("%s -cpu %s", qemu, j.prof.QEMUCPU)

	// Only passes are cached: a failure runs again every time. The entry
	// holds the probe that passed (auto mode picks one).
	key := ""
	var want string
	if p.o.autoProbe {
		want = "auto\x00" + p.o.Version
	} else {
		b, _ := json.Marshal(p.o.Probe)
		want = string(b)
	}
	if p.cache != nil {
		if id, err := identifyTool(ctx, p.cache, path, false); err != nil {
			j.note("probe", fmt.Sprintf("not cached: %v", err))
		} else {
			key = cacheKey(cacheProbe, j.finalSum, qemu, id.version, j.prof.QEMUCPU, want)
			var pass bytes.Buffer
			hit, err := p.cache.get(cacheProbe, key, &pass)
			if errors.Is(err, errCacheCorrupt) {
				j.note("probe", "cache entry was corrupt, probed again")
			}
			var pr protocol.Probe
			if hit && json.Unmarshal(pass.Bytes(), &pr) == nil && pr.Validate() == nil {
				j.note("probe", "cached")
				j.probe = &pr
				j.res.Probe, j.res.ProbeOK = "ok ("+where+"): "+DescribeProbe(&pr, p.o.Version), true
				return "", nil
			}
		}
	}

	var pr *protocol.Probe
	var note string
	if p.o.autoProbe {
		pr, note, err = p.autoProbe(ctx, j, path, where)
		if err != nil {
			j.res.Probe = "FAILED: no probe passed"
			return "", err
		}
	} else {
		pr = p.o.Probe
		r := p.emulate(ctx, j, path, pr.Args, time.Duration(pr.StayUp))
		msg := r.failure(time.Duration(pr.StayUp))
		if msg == "" {
			if err := pr.CheckOutput(r.stdout); err != nil {
				msg = err.Error()
			}
		}
		if msg != "" {
			if r.signal == syscall.SIGILL {
				msg += p.sigillHint(j)
			}
			j.res.Probe = "FAILED: " + msg
			return "", fmt.Errorf("probe `%s` under %s: %s: %w", strings.Join(pr.Args, " "), where, msg, ErrProbe)
		}
	}
	j.probe = pr
	j.res.Probe, j.res.ProbeOK = "ok ("+where+"): "+DescribeProbe(pr, p.o.Version), true
	if note != "" {
		j.note("probe", note)
	}
	if key != "" {
		b, _ := json.Marshal(pr)
		if err := p.cache.put(cacheProbe, key, bytes.NewReader(b)); err != nil {
			j.note("probe", fmt.Sprintf("not cached: %v", err))
		}
	}
	return "", nil
}

func (p *pack) sigillHint(j *job) string {
	if j.res.UPXSize > 0 {
		return fmt.Sprintf(" (illegal instruction: the UPX decompression stub or the program does not run on %s; try other upx_args such as [--best] without --lzma, another upx version, or upx: false for profile %s)", j.prof.QEMUCPU, j.prof.Name)
	}
	return fmt.Sprintf(" (illegal instruction: the binary needs a newer CPU than %s; check goarm/goamd64/gomips of profile %s)", j.prof.QEMUCPU, j.prof.Name)
}

// autoProbe picks the probe for j (see the comment at the top of this
// file) and says in note what it chose when that is not the default.
func (p *pack) autoProbe(ctx context.Context, j *job, qemu, where string) (*protocol.Probe, string, error) {
	v := p.o.Version
	timeout := protocol.Duration(DefaultProbeTimeout)
	r := p.emulate(ctx, j, qemu, []string{"--version"}, 0)
	if r.signal != 0 || r.timedOut || r.err != nil {
		// The binary does not run at all here: no other probe would.
		msg := r.failure(0)
		if r.signal == syscall.SIGILL {
			msg += p.sigillHint(j)
		}
		return nil, "", fmt.Errorf("probe `--version` under %s: %s: %w", where, msg, ErrProbe)
	}
	if r.exit == 0 {
		out := strings.TrimSpace(r.stdout)
		switch {
		case out == v:
			return DefaultProbe(v), "", nil
		case regexp.MustCompile("(?m)" + VersionMatch(v)).MatchString(out):
			return &protocol.Probe{Args: []string{"--version"}, Match: VersionMatch(v), Timeout: timeout},
				fmt.Sprintf("--version prints %q: the probe checks it contains %s", clip(out, 60), v), nil
		}
		why := fmt.Sprintf("--version prints %q, not the version %s", clip(out, 60), v)
		if !p.stamped {
			why += " (nothing was stamped)"
		}
		return &protocol.Probe{Args: []string{"--version"}, Timeout: timeout},
			why + ": the probe checks it exits 0", nil
	}
	first := r.failure(0)
	if i := strings.IndexByte(first, '\n'); i >= 0 {
		first = first[:i] // the program's usage text, once, is enough
	}
	h := p.emulate(ctx, j, qemu, []string{"-h"}, 0)
	if h.failure(0) == "" {
		return &protocol.Probe{Args: []string{"-h"}, Timeout: timeout},
			fmt.Sprintf("the program has no working --version (%s): the probe is `-h` exiting 0; choose another with --probe-args/--probe-expect/--probe-stay-up", clip(first, 120)), nil
	}
	second := h.failure(0)
	if i := strings.IndexByte(second, '\n'); i >= 0 {
		second = second[:i]
	}
	return nil, "", fmt.Errorf("no probe passed under %s: `--version`: %s; `-h`: %s. Say how this program shows it starts: --probe-args ARGS (exits 0), with --probe-expect REGEXP for its output, or --probe-stay-up 500ms for a server (or probe: in edgefleet.yaml); --no-probe skips the check: %w",
		where, clip(first, 160), clip(second, 160), ErrProbe)
}
