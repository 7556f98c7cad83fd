package packer

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgefleet/edgefleet/hardware"
	"github.com/edgefleet/edgefleet/protocol"
)

// State is where a step stands in an Event.
type State string

// Step states.
const (
	StepStart State = "start"
	StepDone  State = "done"
	StepSkip  State = "skip"
	StepFail  State = "fail"
)

// Event is a progress report: a step started, finished, was skipped or
// failed. Profile is empty for the steps that run once per pack.
type Event struct {
	Profile string
	Step    string
	State   State
	// Detail is the skip reason, the failure, or a short result ("1.4MiB").
	Detail  string
	Elapsed time.Duration
}

// StepReport is what one step did for one profile.
type StepReport struct {
	Step    string        `json:"step"`
	State   State         `json:"state"`
	Detail  string        `json:"detail,omitempty"`
	Elapsed time.Duration `json:"elapsed_ns"`
}

// Result is the outcome of one profile.
type Result struct {
	Profile hardware.Profile `json:"profile"`
	// Bundle is the written .efb path (empty if none was written).
	Bundle   string             `json:"bundle,omitempty"`
	Manifest *protocol.Manifest `json:"manifest,omitempty"`
	// BinarySize is the stripped executable (-s -w), before UPX.
	BinarySize int64 `json:"binary_size"`
	// UnstrippedSize is the same program linked without -s -w; 0 when not
	// measured (Options.MeasureUnstripped).
	UnstrippedSize int64 `json:"unstripped_size,omitempty"`
	// UPXSize is the executable after UPX; 0 without UPX.
	UPXSize int64 `json:"upx_size,omitempty"`
	// PayloadWithoutUPX is what the payload would be without UPX (the
	// stripped executable, same encoding), measured when UPX ran, so the
	// table shows UPX's gain on the wire: often none after xz.
	PayloadWithoutUPX int64 `json:"payload_without_upx,omitempty"`
	// ExecutableSize is the final executable, what the budget applies to.
	ExecutableSize int64 `json:"executable_size"`
	// PayloadSize is the encoded payload: the bytes on the wire.
	PayloadSize int64 `json:"payload_size"`
	// Budget is the profile's max_binary_size.
	Budget int64 `json:"budget"`
	Static bool  `json:"static"`
	UPX    bool  `json:"upx"`
	// Probe says how the emulated probe went: "ok (...)", "skipped: ...",
	// or the failure.
	Probe   string `json:"probe"`
	ProbeOK bool   `json:"probe_ok"`
	// Biggest lists the biggest packages and symbols of an over-budget
	// executable.
	Biggest *SizeReport  `json:"biggest,omitempty"`
	Steps   []StepReport `json:"steps"`
	// Deltas are the delta bundles made (or not) from Options.DeltaFrom.
	Deltas []DeltaResult `json:"deltas,omitempty"`
	// Err is the failure of this profile, nil when it packed.
	Err error `json:"-"`
}

// step is one named stage of the pipeline. run returns a non-empty skip
// reason when the step does not apply.
type step struct {
	name string
	doc  string
	once bool // runs once per pack, not per profile
	// early per-profile steps may run before the once-steps finished: they
	// must not read what those set (p.app, p.main, p.deps).
	early bool
	// final steps run after every profile passed the checks.
	final bool
	// soft steps let the profile go on after they fail, so one pack
	// reports every problem; afterFailure steps still run then.
	soft, afterFailure bool
	run                func(ctx context.Context, p *pack, j *job) (skip string, err error)
}

// StepInfo describes a pipeline step.
type StepInfo struct {
	Name string
	Doc  string
	// Once is true for steps that run once per pack rather than per
	// profile.
	Once bool
}

// Steps lists the pipeline in order.
func Steps() []StepInfo {
	out := make([]StepInfo, len(pipeline))
	for i, s := range pipeline {
		out[i] = StepInfo{Name: s.name, Doc: s.doc, Once: s.once}
	}
	return out
}

// pack is the state of one Pack call.
type pack struct {
	o    *Options
	work string
	env  []string // os.Environ + Options.Env
	main goPackage
	deps map[string]goPackage
	app  string
	// stamped: the version variable was checked and -X sets it.
	stamped bool

	cache     *cache // nil: no cache (Options.NoCache, or it could not be opened)
	cacheNote string // where the cache is, or why there is none

	// aborted is set when a once-per-pack step failed and the builds were
	// cancelled.
	aborted atomic.Bool

	mu sync.Mutex // serializes Progress

	basesOnce sync.Once
	bases     []deltaBase // full bundles found in Options.DeltaFrom
	basesErr  error
}

// job is one profile's way through the pipeline.
type job struct {
	prof hardware.Profile
	dir  string // work directory of this profile
	res  *Result

	stripped   string // path of the -s -w executable
	unstripped string // path of the unstripped executable, if linked
	final      string // path of the executable that ships
	payload    string // path of the encoded payload
	finalSum   string // hex sha256 of final
	finalSize  int64  // size of final
	encoding   string
	elf        protocol.ELF
	build      protocol.Build
	exe        protocol.Executable
	pl         protocol.Payload
	rawM, sig  []byte
	probe      *protocol.Probe // the probe for the manifest; nil: none

	// notes are added to a step's detail: "(cached)", or what went wrong
	// with the cache (never a failure of the pack).
	notes map[string]string
}

// note records a remark for the detail of step.
func (j *job) note(step, s string) {
	if j.notes == nil {
		j.notes = map[string]string{}
	}
	if old := j.notes[step]; old != "" {
		s = old + "; " + s
	}
	j.notes[step] = s
}

func (p *pack) event(e Event) {
	if p.o.Progress == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.o.Progress(e)
}

// Pack runs the pipeline for every profile in o and writes one bundle per
// profile into o.OutDir. It returns one Result per profile, in o.Profiles
// order, and an error joining every profile's failure. If any profile
// fails, no bundle is written.
func Pack(ctx context.Context, o Options) ([]Result, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(o.OutDir, 0o755); err != nil {
		return nil, fmt.Errorf("output directory: %w", err)
	}
	work, err := os.MkdirTemp("", "edgefleet-pack-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	p := &pack{o: &o, work: work, env: append(os.Environ(), o.Env...)}
	switch {
	case o.NoCache:
		p.cacheNote = "cache off (no-cache)"
	case o.CacheDir == "":
		p.cacheNote = "cache off: no cache directory (set EDGEFLEET_CACHE or HOME)"
	default:
		c, err := openCache(o.CacheDir, o.CacheMaxBytes)
		if err != nil {
			p.cacheNote = fmt.Sprintf("cache off: %v", err)
			break
		}
		p.cache, p.cacheNote = c, "cache "+c.dir
		// Best effort, at most once per pack (and once an hour).
		defer c.trimIfDue(time.Now())
	}

	results := make([]Result, len(o.Profiles))
	jobs := make([]*job, len(o.Profiles))
	for i, prof := range o.Profiles {
		results[i] = Result{Profile: prof, Budget: int64(prof.MaxBinarySize), UPX: prof.UPX}
		jobs[i] = &job{prof: prof, dir: fmt.Sprintf("%s/%02d-%s", work, i, prof.Name), res: &results[i]}
		if err := os.Mkdir(jobs[i].dir, 0o755); err != nil {
			return nil, err
		}
	}

	// The once-per-pack steps (go list, version variable) run while the
	// profiles build: builds do not need them, and a warm pack is mostly
	// builds. A failure of a once-step applies to every profile and cancels
	// the builds.
	buildCtx, cancelBuilds := context.WithCancel(ctx)
	defer cancelBuilds()
	onceDone := make(chan struct{})
	var onceErr, varErr error
	go func() {
		defer close(onceDone)
		for _, s := range pipeline {
			if !s.once {
				continue
			}
			if err := p.runStep(ctx, s, nil); err != nil {
				if s.name == "version-var" {
					// The builds and their checks go on, so this pack
					// reports their problems too.
					varErr = err
					continue
				}
				onceErr = err
				p.aborted.Store(true)
				cancelBuilds()
				return
			}
		}
	}()

	// Per-profile checks, concurrently, bounded by Jobs.
	sem := make(chan struct{}, o.Jobs)
	var wg sync.WaitGroup
	for _, j := range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
			case <-buildCtx.Done():
				j.res.Err = buildCtx.Err()
				return
			}
			defer func() { <-sem }()
			resolved := false
			var failed []error
			defer func() { j.res.Err = errors.Join(failed...) }()
			for _, s := range pipeline {
				if s.once || s.final {
					continue
				}
				if len(failed) > 0 && !s.afterFailure {
					continue
				}
				if !s.early && !resolved {
					<-onceDone
					if onceErr != nil {
						return
					}
					if err := j.nameExecutable(p.app); err != nil {
						failed = append(failed, err)
						return
					}
					resolved = true
				}
				if err := p.runStep(buildCtx, s, j); err != nil {
					failed = append(failed, err)
					if !s.soft {
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	<-onceDone
	if onceErr != nil {
		for i := range results {
			results[i].Err = onceErr
		}
		return results, onceErr
	}

	var errs []error
	if varErr != nil {
		errs = append(errs, varErr)
	}
	for _, j := range jobs {
		if j.res.Err != nil {
			errs = append(errs, j.res.Err)
		}
	}
	if len(errs) > 0 {
		for _, j := range jobs {
			if j.res.Err == nil {
				j.res.Err = fmt.Errorf("%s: %w", j.prof.Name, ErrSkippedWrite)
			}
		}
		return results, errors.Join(errs...)
	}

	// Sign and write, only when everything passed; bundles are written
	// concurrently (each is fsynced).
	for _, j := range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, s := range pipeline {
				if !s.final {
					continue
				}
				if err := p.runStep(ctx, s, j); err != nil {
					j.res.Err = err
					return
				}
			}
		}()
	}
	wg.Wait()
	for _, j := range jobs {
		if j.res.Err != nil {
			errs = append(errs, j.res.Err)
		}
	}
	return results, errors.Join(errs...)
}

// runStep runs s for j (nil for once-per-pack steps), reports progress
// and records the step in the result.
func (p *pack) runStep(ctx context.Context, s step, j *job) error {
	name := ""
	if j != nil {
		name = j.prof.Name
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s: %s: %w", orPack(name), s.name, err)
	}
	start := time.Now()
	p.event(Event{Profile: name, Step: s.name, State: StepStart})
	skip, err := s.run(ctx, p, j)
	if err != nil && j != nil && p.aborted.Load() {
		// Cancelled because a once-per-pack step failed: that failure is
		// the one to report, not this step's.
		return err
	}
	rep := StepReport{Step: s.name, Elapsed: time.Since(start)}
	switch {
	case err != nil:
		err = fmt.Errorf("%s: %s: %w", orPack(name), s.name, err)
		rep.State, rep.Detail = StepFail, err.Error()
	case skip != "":
		rep.State, rep.Detail = StepSkip, skip
	default:
		rep.State = StepDone
		if j != nil {
			rep.Detail = j.detailWithNotes(s.name)
		} else if s.name == "resolve" {
			rep.Detail = p.app + ", " + p.cacheNote
		}
	}
	if j != nil {
		j.res.Steps = append(j.res.Steps, rep)
	}
	p.event(Event{Profile: name, Step: s.name, State: rep.State, Detail: rep.Detail, Elapsed: rep.Elapsed})
	return err
}

func orPack(profile string) string {
	if profile == "" {
		return "pack"
	}
	return profile
}

// detail is the short result a finished step reports.
func (j *job) detail(step string) string {
	r := j.res
	switch step {
	case "build":
		return hardware.Size(r.BinarySize).String()
	case "static":
		return fmt.Sprintf("ELF%d %s %s-endian, no interpreter, no shared libraries", j.elf.Class, j.elf.Machine, j.elf.Endian)
	case "upx":
		return fmt.Sprintf("%s -> %s", hardware.Size(r.BinarySize), hardware.Size(r.UPXSize))
	case "budget":
		return fmt.Sprintf("%s of %s", hardware.Size(r.ExecutableSize), hardware.Size(r.Budget))
	case "probe":
		return r.Probe
	case "compress":
		return fmt.Sprintf("%s %s", j.encoding, hardware.Size(r.PayloadSize))
	case "hash":
		return fmt.Sprintf("%d chunks of %s", len(j.pl.Chunks), hardware.Size(j.pl.ChunkSize))
	case "write":
		return r.Bundle
	case "delta":
		return deltaSummary(r.Deltas)
	}
	return ""
}

// detailWithNotes is detail plus the step's notes, e.g. "xz 512KiB (cached)".
func (j *job) detailWithNotes(step string) string {
	d, n := j.detail(step), j.notes[step]
	switch {
	case n == "":
		return d
	case d == "":
		return "(" + n + ")"
	}
	return d + " (" + n + ")"
}
