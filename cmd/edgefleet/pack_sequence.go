package main

import (
	"fmt"
	"io"
	"path/filepath"

	"github.com/edgefleet/edgefleet/fleet"
	"github.com/edgefleet/edgefleet/packer"
)

// folderBuilds reads the manifests of the bundles already in dir (before
// pack writes, and perhaps overwrites, its own), unverified: they are only
// compared with the new ones. Unreadable files are skipped.
func folderBuilds(dir string) *fleet.Catalog {
	cat := fleet.NewCatalog(nil, nil)
	paths, _ := filepath.Glob(filepath.Join(dir, "*.efb"))
	for _, p := range paths {
		if _, _, m, err := readManifestUnverified(p); err == nil && !m.IsDelta() {
			cat.AddPending(m, p+" (before this pack)")
		}
	}
	return cat
}

// warnSequences warns when the output folder already had a bundle of the
// same app and sequence but another build: publish would refuse one of
// the two, and devices that took one would never take the other.
func warnSequences(w io.Writer, before *fleet.Catalog, results []packer.Result) {
	for _, r := range results {
		if r.Manifest == nil || r.Bundle == "" {
			continue
		}
		if err := before.CheckSequence(r.Manifest, r.Manifest.Payload.SHA256); err != nil {
			fmt.Fprintf(w, "edgefleet pack: warning: %s: %v\n", r.Bundle, err)
		}
	}
}
