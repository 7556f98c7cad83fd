package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/hardware"
	"github.com/edgefleet/edgefleet/protocol"
)

// pickBundle chooses, from the bundle files a field engineer gives (a USB
// stick holds one per profile), the one for this device: signed by a key
// it trusts (its trusted_keys, the key set it holds, or a newer key set the
// bundle carries, judged without storing it: agent.BundleVerifier), for an
// app configured here, built for a target this CPU runs;
// then the profile the config pins, the most specific target (armv7 over
// armv6) and the highest sequence win. Only the manifests are read (and
// their signatures checked); the install verifies everything again. One
// path is returned as it is: the install explains a refusal in full.
func pickBundle(cfg *agent.Config, paths []string) (string, string, error) {
	if len(paths) == 1 {
		return paths[0], "", nil
	}
	verifier, err := agent.BundleVerifier(cfg, time.Now)
	if err != nil {
		return "", "", err
	}
	cpu, err := hardware.ReadCPU()
	if err != nil {
		return "", "", fmt.Errorf("reading this CPU's facts to choose a bundle: %w", err)
	}
	type fit struct {
		path string
		m    *protocol.Manifest
	}
	var fits []fit
	var skipped []string
	for _, p := range paths {
		m, err := readManifest(p, verifier)
		if err != nil {
			skipped = append(skipped, fmt.Sprintf("%s: %v", filepath.Base(p), err))
			continue
		}
		if _, ok := cfg.App(m.App); !ok {
			skipped = append(skipped, fmt.Sprintf("%s: app %s is not configured on this device", filepath.Base(p), m.App))
			continue
		}
		t := hardware.Target{GOOS: m.Target.GOOS, GOARCH: m.Target.GOARCH, GOARM: m.Target.GOARM, GOAMD64: m.Target.GOAMD64, GOMIPS: m.Target.GOMIPS,
			ELFClass: m.Target.ELF.Class, ELFMachine: m.Target.ELF.Machine, ELFBigEndian: m.Target.ELF.Endian == "big"}
		if err := cpu.CanRun(t); err != nil {
			skipped = append(skipped, fmt.Sprintf("%s (%s): this %s device cannot run it", filepath.Base(p), m.Profile, cpu))
			continue
		}
		fits = append(fits, fit{p, m})
	}
	if len(fits) == 0 {
		return "", "", fmt.Errorf("none of the %d bundles is for this device (%s): %s; bring a %s build", len(paths), cpu, strings.Join(skipped, "; "), cpu.SuggestedProfile())
	}
	apps := map[string]bool{}
	for _, f := range fits {
		apps[f.m.App] = true
	}
	if len(apps) > 1 {
		var names []string
		for a := range apps {
			names = append(names, a)
		}
		sort.Strings(names)
		return "", "", fmt.Errorf("the bundles are for several apps (%s): give the bundles of one app at a time", strings.Join(names, ", "))
	}
	spec := func(m *protocol.Manifest) int {
		return hardware.Specificity(hardware.Target{GOARCH: m.Target.GOARCH, GOARM: m.Target.GOARM, GOAMD64: m.Target.GOAMD64, GOMIPS: m.Target.GOMIPS})
	}
	sort.SliceStable(fits, func(i, j int) bool {
		a, b := fits[i].m, fits[j].m
		if pa, pb := a.Profile == cfg.Profile, b.Profile == cfg.Profile; pa != pb {
			return pa
		}
		if sa, sb := spec(a), spec(b); sa != sb {
			return sa > sb
		}
		return a.Sequence > b.Sequence
	})
	best := fits[0]
	note := fmt.Sprintf("picked %s (%s %s, profile %s) for this %s device", filepath.Base(best.path), best.m.App, best.m.Version, best.m.Profile, cpu)
	var others []string
	for _, f := range fits[1:] {
		others = append(others, filepath.Base(f.path))
	}
	if len(others) > 0 {
		note += "; it also runs " + strings.Join(others, ", ")
	}
	if len(skipped) > 0 {
		note += "; skipped " + strings.Join(skipped, "; ")
	}
	return best.path, note, nil
}

// readManifest opens the bundle at path with o and returns its verified
// manifest; no payload byte is read.
func readManifest(path string, o protocol.OpenOptions) (*protocol.Manifest, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := protocol.OpenBundleWith(f, o)
	if err != nil {
		return nil, err
	}
	return b.Manifest, nil
}
