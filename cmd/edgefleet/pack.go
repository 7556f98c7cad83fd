package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/edgefleet/edgefleet/hardware"
	"github.com/edgefleet/edgefleet/packer"
	"github.com/edgefleet/edgefleet/protocol"
)

func init() {
	register("pack", command{summary: "build, check and sign a Go program into one bundle per device profile", run: runPack})
}

func runPack(ctx context.Context, env *cliEnv, args []string) int {
	fs := flag.NewFlagSet("pack", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	var profiles stringsFlag
	configPath := fs.String("config", "", "pack configuration file (default: "+packConfigName+" in the current directory, else beside the package; format in docs/pack-config.md); flags override it")
	keyPath := fs.String("key", "", "minisign secret key that signs the manifests (required)")
	version := fs.String("version", "", "semantic version to stamp and sign, e.g. 1.2.3 or v1.2.3 (required, unless the package comes from a required module with a release version)")
	sequence := fs.Uint64("sequence", 0, "release sequence number, at least 1; devices refuse a lower one (required)")
	fs.Var(&profiles, "profile", "device profile or board name; repeat for several (required)")
	budget := fs.String("budget", "", "maximum executable size for every profile, e.g. 8MiB (default: each profile's max_binary_size)")
	profilesFile := fs.String("profiles", "", "YAML file with custom profiles; without --profile, all of its profiles are packed")
	app := fs.String("app", "", "app name (default: the package's directory name)")
	versionVar := fs.String("version-var", packer.DefaultVersionVar, "package-level string variable that -X sets to the version; '' packs without stamping (default main.version when the program declares it, else nothing is stamped, with a note)")
	probeArgs := fs.String("probe-args", "", "probe: arguments the device runs the new binary with before the swap, space-separated (default: --version, else -h; see --probe-expect)")
	probeExpect := fs.String("probe-expect", "", "probe: regular expression the output must match (default with --probe-args: none, exit status 0 is enough)")
	probeStayUp := fs.Duration("probe-stay-up", 0, "probe: the binary must still be running after this long (a server), e.g. 500ms")
	probeTimeout := fs.Duration("probe-timeout", packer.DefaultProbeTimeout, "probe: how long the device lets it take")
	upx := fs.String("upx", "", "compress with this upx program for every profile, also those that do not turn UPX on (default: upx on PATH, for the profiles that ask)")
	expires := fs.String("expires", "", "expiry: a duration from now (720h) or an RFC 3339 time; devices refuse the release after it")
	timestamp := fs.String("timestamp", "", "manifest time: 'now', an RFC 3339 time or Unix seconds (default: $SOURCE_DATE_EPOCH, else 1970-01-01 for reproducible bundles)")
	noProbe := fs.Bool("no-probe", false, "no probe: neither in the manifest nor under emulation")
	encoding := fs.String("encoding", "xz", "payload encoding: xz or none")
	jobs := fs.Int("jobs", 0, "profiles built at once (default: the number of CPUs)")
	unstripped := fs.Bool("measure-unstripped", false, "also link without -s -w to report the unstripped size")
	noCache := fs.Bool("no-cache", false, "neither read nor write the pack cache ($EDGEFLEET_CACHE, default <user cache dir>/edgefleet/pack) of xz payloads, upx outputs and passed probes")
	asJSON := fs.Bool("json", false, "print the results as JSON")
	out := fs.String("o", "", "output directory for the bundles (required)")
	keysetPath := fs.String("keyset", "", "key set message (from `edgefleet keyset chain`) to put first in every bundle, so devices off the network learn the key that signed it; agents older than this entry refuse such bundles (docs/agent.md)")
	var deltas deltaFlags
	deltas.register(fs)
	fs.Usage = func() {
		fmt.Fprintln(env.stderr, "usage: edgefleet pack --key K --version V --sequence N --profile P [--profile P...] -o DIR PKG")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return 2
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	// Every problem in one run: collect, then print them all.
	var problems []string
	usageErr := false // else only files that could not be read: exit 1
	problem := func(format string, a ...any) { problems = append(problems, fmt.Sprintf(format, a...)); usageErr = true }
	failure := func(format string, a ...any) { problems = append(problems, fmt.Sprintf(format, a...)) }
	note := func(format string, a ...any) { fmt.Fprintf(env.stderr, "edgefleet pack: note: "+format+"\n", a...) }

	pkg := fs.Arg(0)
	var cfg *packConfig
	var probe *protocol.Probe
	if path := findPackConfig(*configPath, pkg); path != "" {
		c, err := loadPackConfig(path)
		if err != nil {
			// The rest would only repeat what the file should have said.
			fmt.Fprintf(env.stderr, "edgefleet pack: %v\n", err)
			return 1
		} else {
			cfg = c
			note("using %s (flags override it)", path)
		}
	}
	var seqFromVersion bool
	if cfg != nil {
		str := func(flagName string, v *string, from string) {
			if !set[flagName] && from != "" {
				*v = from
			}
		}
		str("key", keyPath, cfg.path(cfg.Key))
		str("o", out, cfg.path(cfg.Output))
		str("app", app, cfg.App)
		str("profiles", profilesFile, cfg.path(cfg.ProfilesFile))
		str("upx", upx, cfg.UPXProgram)
		str("encoding", encoding, cfg.Encoding)
		str("expires", expires, cfg.Expires)
		str("keyset", keysetPath, cfg.path(cfg.KeySet))
		if !set["delta-from"] {
			for _, d := range cfg.DeltaFrom {
				if _, err := os.Stat(cfg.path(d)); errors.Is(err, os.ErrNotExist) {
					// The first release: the output folder is not there yet.
					note("no deltas from %s: it does not exist (yet)", d)
					continue
				}
				deltas.from = append(deltas.from, cfg.path(d))
			}
		}
		if !set["budget"] && cfg.Budget > 0 {
			*budget = cfg.Budget.String()
		}
		if !set["version-var"] && cfg.VersionVar != nil {
			*versionVar = *cfg.VersionVar
			set["version-var"] = true
		}
		if !set["sequence"] && cfg.Sequence != "" {
			if cfg.Sequence == "version" {
				seqFromVersion = true
			} else if n, err := strconv.ParseUint(cfg.Sequence, 10, 64); err == nil {
				*sequence = n
			} else {
				problem("%s: sequence: %q: want a number or \"version\"", packConfigName, cfg.Sequence)
			}
		}
		if !set["no-probe"] && !set["probe-args"] && !set["probe-expect"] && !set["probe-stay-up"] && cfg.Probe != nil {
			if cfg.Probe.None {
				*noProbe = true
			} else {
				probe = cfg.Probe.probe()
				if probe.Timeout == 0 {
					probe.Timeout = protocol.Duration(*probeTimeout)
				}
			}
		}
		if fs.NArg() == 0 {
			pkg = cfg.pkg()
		}
	}
	if fs.NArg() > 1 || pkg == "" {
		got := ""
		if fs.NArg() > 1 {
			got = fmt.Sprintf(" (got %d: %s)", fs.NArg(), strings.Join(fs.Args(), " "))
		}
		problem("give exactly one package to pack, e.g. ./cmd/myapp, or write %s beside it (docs/pack-config.md)%s", packConfigName, got)
	}
	if *version == "" && pkg != "" {
		// A program packed by import path from a module that requires
		// it: its release version is what `go version -m` will show.
		if v, err := packer.ModuleVersion(ctx, "", ".", pkg); err == nil && v != "" {
			*version = v
			note("version %s from the module that provides %s (go list; --version overrides it)", v, pkg)
		}
	}
	if seqFromVersion && *version != "" {
		n, err := sequenceFromVersion(packer.NormalizeVersion(*version))
		if err != nil {
			problem("%v", err)
		} else {
			*sequence = n
			note("sequence %d from version %s (sequence: version)", n, packer.NormalizeVersion(*version))
		}
	}
	var missing []string
	for _, m := range []struct {
		flag  string
		unset bool
	}{{"--key", *keyPath == ""}, {"--version", *version == ""}, {"--sequence", *sequence == 0}, {"-o", *out == ""}} {
		if m.unset {
			missing = append(missing, m.flag)
		}
	}
	if len(missing) > 0 {
		problem("missing %s (required)", strings.Join(missing, ", "))
	}
	if len(profiles) == 0 && *profilesFile == "" && (cfg == nil || len(cfg.Profiles) == 0) {
		problem("name at least one --profile (see `edgefleet profiles`), give --profiles FILE, or list profiles: in %s", packConfigName)
	}
	if v := packer.NormalizeVersion(*version); v != *version {
		fmt.Fprintf(env.stderr, "edgefleet pack: note: version %s taken as %s (manifests carry the semantic version without the v)\n", *version, v)
		*version = v
	}

	hwSet := hardware.DefaultSet()
	var chosen []hardware.Profile
	if *profilesFile != "" {
		custom, err := hwSet.LoadProfilesFile(*profilesFile)
		if err != nil {
			failure("%v", err)
		}
		if len(profiles) == 0 {
			chosen = custom
		}
	}
	for _, name := range profiles {
		p, err := hwSet.Lookup(name)
		if err != nil {
			problem("%v", err)
			continue
		}
		chosen = append(chosen, p)
	}
	if cfg != nil && len(profiles) == 0 && !set["profiles"] && len(cfg.Profiles) > 0 {
		ps, bad := cfg.profiles(hwSet)
		for _, b := range bad {
			problem("%s", b)
		}
		chosen = ps
	}
	if *budget != "" {
		b, err := hardware.ParseSize(*budget)
		if err != nil || b <= 0 {
			problem("budget %q: want a size like 8MiB", *budget)
		}
		for i := range chosen {
			chosen[i].MaxBinarySize = b
		}
	}
	upxOn := set["upx"] || cfg != nil && cfg.UPX != nil && *cfg.UPX
	for i := range chosen {
		switch {
		case upxOn && !chosen[i].UPX:
			chosen[i].UPX = true
			note("%s: UPX turned on as asked (the profile leaves it off)", chosen[i].Name)
		case cfg != nil && cfg.UPX != nil && !*cfg.UPX && !set["upx"] && chosen[i].UPX:
			chosen[i].UPX = false
			note("%s: UPX turned off (upx: false in %s)", chosen[i].Name, packConfigName)
		}
	}
	if set["probe-args"] || set["probe-expect"] || set["probe-stay-up"] || set["probe-timeout"] {
		args := strings.Fields(*probeArgs)
		if !set["probe-args"] {
			args = []string{"--version"}
		}
		probe = &protocol.Probe{Args: args, Match: *probeExpect, StayUp: protocol.Duration(*probeStayUp), Timeout: protocol.Duration(*probeTimeout)}
		if *noProbe {
			problem("--no-probe and --probe-* contradict each other: drop one")
		}
	}
	noStamp := set["version-var"] && *versionVar == ""
	if !set["version-var"] {
		*versionVar = "" // the default, and then optional
	}

	o := packer.Options{
		Package: pkg, App: *app, Version: *version, Sequence: *sequence,
		Profiles: chosen, OutDir: *out, VersionVar: *versionVar, NoStamp: noStamp, UPX: *upx, Probe: probe,
		NoProbe: *noProbe, Encoding: *encoding, Jobs: *jobs, MeasureUnstripped: *unstripped,
		NoCache: *noCache, CacheDir: env.getenv("EDGEFLEET_CACHE"),
	}
	deltas.apply(&o)
	if *timestamp != "" {
		t, err := parseTime(*timestamp)
		if err != nil {
			problem("--timestamp: %v", err)
		}
		o.Created = t
	}
	if *expires != "" {
		t, err := parseExpiry(*expires, env)
		if err != nil {
			problem("--expires: %v", err)
		} else {
			o.Expires = &t
		}
	}
	if o.UPX == "" {
		o.UPX = env.getenv("EDGEFLEET_UPX")
	}
	if *keyPath != "" {
		key, err := loadSecretKey(env, *keyPath)
		if err != nil {
			failure("%v", err)
		}
		o.Key = key
	}
	if *keysetPath != "" {
		b, err := readKeySetMessage(*keysetPath)
		if err != nil {
			failure("--keyset: %v", err)
		} else {
			o.KeySet = b
			if s := describeKeySetForPack(b, o.Key); s != "" {
				note("%s", s)
			}
		}
	}
	if err := o.Validate(); err != nil {
		for _, e := range strings.Split(err.Error(), "\n") {
			// What the checks above already said, they said with flag names.
			if !hasAnyPrefix(e, "no package", "no version", "sequence must", "no signing key", "no profiles", "no output directory") {
				problem("%s", strings.TrimSuffix(e, ": "+packer.ErrOptions.Error()))
			}
		}
	}
	if len(problems) > 0 {
		fmt.Fprintf(env.stderr, "edgefleet pack: %d problem(s):\n", len(problems))
		for _, p := range problems {
			fmt.Fprintf(env.stderr, "  - %s\n", p)
		}
		if !usageErr {
			return 1
		}
		fmt.Fprintln(env.stderr, "Run 'edgefleet pack -h' for the flags.")
		return 2
	}
	o.Progress = progressPrinter(env.stderr)

	before := folderBuilds(o.OutDir)
	results, err := packer.Pack(ctx, o)
	warnSequences(env.stderr, before, results)
	if *asJSON {
		printPackJSON(env.stdout, results, err)
	} else {
		printPackTable(env.stdout, results)
		printDeltaLines(env.stdout, results, len(o.DeltaFrom) > 0)
	}
	if err != nil {
		fmt.Fprintf(env.stderr, "edgefleet pack: failed:\n%v\n", err)
		if errors.Is(err, packer.ErrOptions) && results == nil {
			return 2
		}
		return 1
	}
	return 0
}

// progressPrinter prints one line per finished, skipped or failed step.
func progressPrinter(w io.Writer) func(packer.Event) {
	return func(e packer.Event) {
		if e.State == packer.StepStart {
			return
		}
		who := e.Profile
		if who == "" {
			who = "pack"
		}
		detail := e.Detail
		if e.State == packer.StepFail {
			detail = "failed"
		}
		if i := strings.IndexByte(detail, '\n'); i >= 0 {
			detail = detail[:i]
		}
		fmt.Fprintf(w, "%-16s %-12s %-5s %6.2fs %s\n", who, e.Step, e.State, e.Elapsed.Seconds(), detail)
	}
}

func printPackTable(w io.Writer, results []packer.Result) {
	if len(results) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PROFILE\tBINARY\tPAYLOAD\tBUDGET\tSTATIC\tUPX\tPROBE\tBUNDLE")
	for _, r := range results {
		bin := sizeOrDash(r.BinarySize)
		if r.UnstrippedSize > 0 {
			bin += " (unstripped " + hardware.Size(r.UnstrippedSize).String() + ")"
		}
		static := "-"
		if r.Static {
			static = "✓"
		} else if r.BinarySize > 0 {
			static = "✗"
		}
		upx := "-"
		if r.UPXSize > 0 {
			upx = hardware.Size(r.UPXSize).String()
			if r.PayloadWithoutUPX > 0 {
				upx += fmt.Sprintf(" (wire %+.0f%%)", 100*float64(r.PayloadSize-r.PayloadWithoutUPX)/float64(r.PayloadWithoutUPX))
			}
		} else if r.UPX {
			upx = "wanted"
		}
		probe := r.Probe
		if probe == "" {
			probe = "-"
		}
		if len(probe) > 60 {
			probe = probe[:57] + "..."
		}
		bundle := r.Bundle
		if bundle == "" {
			bundle = "(not written)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Profile.Name, bin, sizeOrDash(r.PayloadSize), hardware.Size(r.Budget), static, upx, probe, bundle)
	}
	tw.Flush()
}

func sizeOrDash(n int64) string {
	if n <= 0 {
		return "-"
	}
	return hardware.Size(n).String()
}

type packJSON struct {
	OK      bool             `json:"ok"`
	Error   string           `json:"error,omitempty"`
	Results []packResultJSON `json:"results"`
}

type packResultJSON struct {
	packer.Result
	Error string `json:"error,omitempty"`
}

func printPackJSON(w io.Writer, results []packer.Result, err error) {
	out := packJSON{OK: err == nil, Results: []packResultJSON{}}
	if err != nil {
		out.Error = err.Error()
	}
	for _, r := range results {
		pr := packResultJSON{Result: r}
		if r.Err != nil {
			pr.Error = r.Err.Error()
		}
		out.Results = append(out.Results, pr)
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(out)
}

func parseTime(s string) (time.Time, error) {
	if s == "now" {
		return time.Now().UTC().Truncate(time.Second), nil
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		return time.Unix(n, 0).UTC(), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is not 'now', Unix seconds or an RFC 3339 time like 2026-11-01T00:00:00Z", s)
	}
	return t, nil
}

// parseExpiry reads an absolute time, or a duration counted from
// SOURCE_DATE_EPOCH when set (reproducible), else from now.
func parseExpiry(s string, env *cliEnv) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		if d <= 0 {
			return time.Time{}, fmt.Errorf("%s is not a positive duration", s)
		}
		base := time.Now()
		if e := env.getenv("SOURCE_DATE_EPOCH"); e != "" {
			if n, err := strconv.ParseInt(e, 10, 64); err == nil {
				base = time.Unix(n, 0)
			}
		}
		return base.Add(d).UTC().Truncate(time.Second), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is neither a duration like 720h nor an RFC 3339 time", s)
	}
	return t, nil
}

func hasAnyPrefix(s string, prefixes ...string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}
