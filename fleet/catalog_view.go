package fleet

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/edgefleet/edgefleet/protocol"
)

// CatalogRelease is one envelope in `edgefleet releases` output.
type CatalogRelease struct {
	Topic       string `json:"topic"`
	Channel     string `json:"channel,omitempty"`
	Device      string `json:"device,omitempty"`
	App         string `json:"app"`
	Version     string `json:"version"`
	Sequence    uint64 `json:"sequence"`
	Profile     string `json:"profile"`
	PayloadSize int64  `json:"payload_size"`
	Chunks      int    `json:"chunks"`
	PayloadSHA  string `json:"payload_sha256"`
	// Signature is "verified", "unverified: why", or "not checked"
	// (no --pub).
	Signature string `json:"signature"`
}

// CatalogRollout is one rollout in `edgefleet releases` output.
type CatalogRollout struct {
	Topic    string                 `json:"topic"`
	ID       string                 `json:"id"`
	Channel  string                 `json:"channel"`
	App      string                 `json:"app"`
	Version  string                 `json:"version"`
	Sequence uint64                 `json:"sequence"`
	State    string                 `json:"state"`
	Wave     int                    `json:"wave"`  // 1-based
	Waves    int                    `json:"waves"` // how many
	Counts   protocol.RolloutCounts `json:"counts"`
	Reason   string                 `json:"reason,omitempty"`
}

// CatalogMalformed is a message that could not be read.
type CatalogMalformed struct {
	Topic string `json:"topic"`
	Error string `json:"error"`
}

// CatalogReport is the JSON of `edgefleet releases`.
type CatalogReport struct {
	Releases    []CatalogRelease   `json:"releases"`
	Assignments []CatalogRelease   `json:"assignments"`
	Candidates  []CatalogRelease   `json:"candidates"`
	Rollouts    []CatalogRollout   `json:"rollouts"`
	Malformed   []CatalogMalformed `json:"malformed"`
}

// Report summarises the catalog: per envelope its release (no chunk
// hashes), per rollout where it stands, and what could not be read.
func (c *Catalog) Report() CatalogReport {
	r := CatalogReport{Releases: []CatalogRelease{}, Assignments: []CatalogRelease{}, Candidates: []CatalogRelease{},
		Rollouts: []CatalogRollout{}, Malformed: []CatalogMalformed{}}
	conv := func(list []*Held) []CatalogRelease {
		out := []CatalogRelease{}
		for _, h := range list {
			if h.Manifest == nil {
				r.Malformed = append(r.Malformed, CatalogMalformed{h.Topic, h.Malformed})
				continue
			}
			m := h.Manifest
			sig := "not checked"
			switch {
			case h.Verified:
				sig = "verified"
			case h.Unverified != "":
				sig = "unverified: " + h.Unverified
			}
			out = append(out, CatalogRelease{Topic: h.Topic, Channel: h.Channel, Device: h.Device, App: m.App, Version: m.Version,
				Sequence: m.Sequence, Profile: m.Profile, PayloadSize: m.Payload.Size, Chunks: len(m.Payload.Chunks),
				PayloadSHA: m.Payload.SHA256, Signature: sig})
		}
		return out
	}
	r.Releases, r.Assignments, r.Candidates = conv(c.Releases), conv(c.Assignments), conv(c.Candidates)
	for _, h := range c.Rollouts {
		if h.Rollout == nil {
			r.Malformed = append(r.Malformed, CatalogMalformed{h.Topic, h.Malformed})
			continue
		}
		ro := h.Rollout
		r.Rollouts = append(r.Rollouts, CatalogRollout{Topic: h.Topic, ID: ro.ID, Channel: ro.Channel, App: ro.App, Version: ro.Version,
			Sequence: ro.Sequence, State: ro.State, Wave: ro.Wave + 1, Waves: len(ro.Waves), Counts: ro.Counts, Reason: ro.Reason})
	}
	for _, o := range c.Other {
		r.Malformed = append(r.Malformed, CatalogMalformed{Topic: "", Error: o})
	}
	return r
}

// WriteJSON prints Report as indented JSON.
func (c *Catalog) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(c.Report())
}

// WriteTable prints the catalog as tables: channel releases, rollouts
// (with their candidates), assignments, and the malformed messages.
func (c *Catalog) WriteTable(w io.Writer) {
	r := c.Report()
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	sig := func(s string) string {
		if len(s) > 10 && s[:10] == "unverified" {
			return "UNVERIFIED"
		}
		return s
	}
	fmt.Fprintln(tw, "CHANNEL\tAPP\tVERSION\tSEQ\tPROFILE\tPAYLOAD\tCHUNKS\tSIGNATURE")
	for _, x := range r.Releases {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%d\t%s\n", x.Channel, x.App, x.Version, x.Sequence, x.Profile, HumanBytes(x.PayloadSize), x.Chunks, sig(x.Signature))
	}
	for _, x := range r.Candidates {
		fmt.Fprintf(tw, "%s (rollout)\t%s\t%s\t%d\t%s\t%s\t%d\t%s\n", x.Channel, x.App, x.Version, x.Sequence, x.Profile, HumanBytes(x.PayloadSize), x.Chunks, sig(x.Signature))
	}
	tw.Flush()
	if len(r.Releases)+len(r.Candidates) == 0 {
		fmt.Fprintln(w, "(no releases on any channel)")
	}
	if len(r.Rollouts) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(tw, "ROLLOUT\tCHANNEL\tAPP\tVERSION\tSEQ\tSTATE\tWAVE\tDONE/FAILED/PENDING OF MEMBERS (SELECTED)\tREASON")
		for _, x := range r.Rollouts {
			n := x.Counts
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%d/%d\t%d/%d/%d of %d (%d)\t%s\n", x.ID, x.Channel, x.App, x.Version, x.Sequence, x.State,
				x.Wave, x.Waves, n.Done, n.Failed, n.Pending, n.Members, n.Selected, oneLine(x.Reason, 60))
		}
		tw.Flush()
	}
	fmt.Fprintln(w)
	if len(r.Assignments) == 0 {
		fmt.Fprintln(w, "(no device assignments)")
	} else {
		fmt.Fprintln(tw, "DEVICE\tAPP\tVERSION\tSEQ\tPROFILE\tPAYLOAD\tCHUNKS\tSIGNATURE")
		for _, x := range r.Assignments {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%d\t%s\n", x.Device, x.App, x.Version, x.Sequence, x.Profile, HumanBytes(x.PayloadSize), x.Chunks, sig(x.Signature))
		}
		tw.Flush()
	}
	if len(r.Malformed) > 0 {
		fmt.Fprintf(w, "\n%d malformed messages (devices ignore them; clear or re-publish them):\n", len(r.Malformed))
		for _, x := range r.Malformed {
			fmt.Fprintf(w, "  %s: %s\n", protocol.CleanText(x.Topic), oneLine(protocol.CleanText(x.Error), 160))
		}
	}
}

// HumanBytes prints n as "1.2 MiB", "3.4 KiB" or "512 B".
func HumanBytes(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
