package main

import (
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"github.com/edgefleet/edgefleet/hardware"
	"github.com/edgefleet/edgefleet/packer"
	"github.com/edgefleet/edgefleet/protocol"
)

// deltaFlags are pack's delta options (issue 10), kept apart from pack.go.
type deltaFlags struct {
	from stringsFlag
}

func (d *deltaFlags) register(fs *flag.FlagSet) {
	fs.Var(&d.from, "delta-from", "earlier release to make a delta from: a bundle `FILE_OR_DIR` (.efb, or a directory of them); per profile, a signed delta <app>_<version>_<profile>.from-<old version>.efb is written beside the full bundle when clearly smaller; repeat for several")
}

func (d *deltaFlags) apply(o *packer.Options) {
	o.DeltaFrom = append(o.DeltaFrom, d.from...)
}

// printDeltaLines prints, below the pack table, one line per delta made or
// skipped, so the operator sees why a profile has none.
func printDeltaLines(w io.Writer, results []packer.Result, asked bool) {
	if !asked {
		return
	}
	for _, r := range results {
		for _, s := range r.Steps {
			if s.Step == "delta" && s.State == packer.StepSkip {
				fmt.Fprintf(w, "%s  delta: skipped: %s\n", r.Profile.Name, s.Detail)
			}
		}
		for _, d := range r.Deltas {
			if d.Bundle == "" {
				fmt.Fprintf(w, "%s  delta from %s: skipped: %s\n", r.Profile.Name, d.BaseVersion, d.Skipped)
				continue
			}
			line := fmt.Sprintf("%s  delta from %s: %s", r.Profile.Name, d.BaseVersion, hardware.Size(d.PatchSize))
			if r.BinarySize > 0 && r.PayloadSize > 0 {
				line += fmt.Sprintf(" (%.2f%% of the binary, %.1f%% of the full payload)", 100*float64(d.PatchSize)/float64(r.BinarySize), 100*float64(d.PatchSize)/float64(r.PayloadSize))
			}
			fmt.Fprintf(w, "%s  %s\n", line, d.Bundle)
		}
	}
}

func orUnknownVersion(v string) string {
	if v == "" {
		return "an earlier build"
	}
	return v
}

// withDeltas returns the bundles with, for each full bundle
// <name>.efb, the delta bundles pack wrote beside it
// (<name>.from-<version>.efb), deltas first: a device that finds a
// release may look for its delta at once (SPEC.md §8.10).
func withDeltas(paths []string) []string {
	seen := map[string]bool{}
	var deltas, full []string
	add := func(p string) {
		if seen[p] {
			return
		}
		seen[p] = true
		if strings.Contains(filepath.Base(p), ".from-") {
			deltas = append(deltas, p)
		} else {
			full = append(full, p)
		}
	}
	for _, p := range paths {
		add(p)
		if !strings.Contains(filepath.Base(p), ".from-") {
			more, _ := filepath.Glob(strings.TrimSuffix(p, protocol.BundleExt) + ".from-*" + protocol.BundleExt)
			for _, d := range more {
				add(d)
			}
		}
	}
	return append(deltas, full...)
}

// countDeltaTopics counts the delta topics (SPEC.md §8.10) among topics.
func countDeltaTopics(topics []string) int {
	n := 0
	for _, t := range topics {
		if strings.HasPrefix(t, protocol.TopicPrefix+"delta/") {
			n++
		}
	}
	return n
}
