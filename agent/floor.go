package agent

// The anti-rollback floor file (data_dir/floor.json): the highest sequence
// ever swapped in per app, kept outside the state database so that
// `edgefleet-agent reset` — moving a corrupt state.db aside — does not
// also forget which releases are too old. Without it, an attacker who can
// corrupt state.db (or wait for a flash fault) gets a device that accepts
// any older, validly signed release again: a replay.
//
// Crash ordering: the file floor is raised (atomically, fsynced) after the
// staged binary verified and probed and before the swap is recorded, so
// before the rename over the target; a recovery that finishes an
// interrupted swap raises it again (idempotent) before it records the
// trial. So once the state database says a release is on
// trial (or committed, or rolled back from), the file floor is at least
// its sequence. The file may be ahead of the database: an undone install
// lowers it back to the value it had before that install (recorded in the
// install's pending record), so a power cut during a swap never condemns
// the release that was being installed.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"unicode/utf8"

	"github.com/edgefleet/edgefleet/protocol"
	bolt "go.etcd.io/bbolt"
)

// floorSchema is the version of floor.json; another version is refused
// rather than misread.
const floorSchema = 1

// maxFloorFile bounds floor.json (a few hundred apps at most).
const maxFloorFile = 256 << 10

// maxFloorVersion bounds the version text kept with a floor (bytes). The
// text is only for messages: the sequence is what the floor is.
const maxFloorVersion = protocol.MaxVersionLen

// floorDoc is floor.json.
type floorDoc struct {
	Schema int                   `json:"schema"`
	Apps   map[string]floorEntry `json:"apps"`

	// repaired: an entry's version text was longer than maxFloorVersion
	// (agents before the limit wrote 203 bytes and then refused their own
	// file) and was clipped when read; the next write stores the clip.
	repaired []string
}

// floorEntry is one app's floor: the sequence, and the version that had
// it (for messages).
type floorEntry struct {
	Sequence uint64 `json:"sequence"`
	Version  string `json:"version,omitempty"`
}

// FloorPath is the anti-rollback floor file in DataDir. It survives
// `edgefleet-agent reset`.
func (c *Config) FloorPath() string { return filepath.Join(c.DataDir, "floor.json") }

// parseFloor decodes floor.json strictly: one JSON object, known fields
// only, no key twice or in another case, this schema, valid app names,
// positive sequences. An over-long version text is clipped, not refused
// (d.repaired names the apps): it is informational, and refusing it
// would stop every install for a text the agent wrote itself.
func parseFloor(b []byte) (*floorDoc, error) {
	if len(b) > maxFloorFile {
		return nil, fmt.Errorf("it is %d bytes, more than the %d allowed", len(b), maxFloorFile)
	}
	var d floorDoc
	if err := protocol.StrictUnmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("not valid JSON: %v", err)
	}
	if d.Schema != floorSchema {
		return nil, fmt.Errorf("schema %d, this agent understands %d (written by a newer edgefleet-agent?)", d.Schema, floorSchema)
	}
	if d.Apps == nil {
		return nil, errors.New(`no "apps" object`)
	}
	for app, e := range d.Apps {
		if !protocol.ValidApp(app) {
			return nil, fmt.Errorf("app name %q is not valid", clip(app, 80))
		}
		if e.Sequence == 0 {
			return nil, fmt.Errorf("app %s has sequence 0", app)
		}
		if len(e.Version) > maxFloorVersion {
			e.Version = clipVersion(e.Version)
			d.Apps[app] = e
			d.repaired = append(d.repaired, app)
		}
	}
	sort.Strings(d.repaired)
	return &d, nil
}

// clipVersion shortens a version text to at most maxFloorVersion bytes,
// on a character boundary, marker included: what is written always reads
// back unchanged.
func clipVersion(v string) string {
	if len(v) <= maxFloorVersion {
		return v
	}
	const mark = "…"
	n := maxFloorVersion - len(mark)
	for n > 0 && !utf8.RuneStart(v[n]) {
		n--
	}
	return v[:n] + mark
}

func (d *floorDoc) marshal() []byte {
	// encoding/json sorts map keys: the file is stable.
	b, _ := json.MarshalIndent(d, "", "  ")
	return append(b, '\n')
}

// readFloor reads floor.json; a missing file is an empty floor. A file
// that cannot be parsed gives ErrCorruptFloor naming it and what to do.
// The caller holds floorMu.
func (a *Agent) readFloor() (*floorDoc, error) {
	path := a.cfg.FloorPath()
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return &floorDoc{Schema: floorSchema, Apps: map[string]floorEntry{}}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the anti-rollback floor file: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxFloorFile+1))
	if err != nil {
		return nil, fmt.Errorf("read the anti-rollback floor file: %w", err)
	}
	d, err := parseFloor(b)
	if err != nil {
		return nil, fmt.Errorf("the anti-rollback floor file %s cannot be read (%v); installs are refused until it is repaired, so that damaging it cannot let an older release back in — restore it from a backup, or, if you trust the state database %s, move the file aside: the agent rebuilds it from the state database when it next starts: %w",
			path, err, a.cfg.StatePath(), ErrCorruptFloor)
	}
	return d, nil
}

// fileFloor returns app's entry in floor.json (zero when none).
func (a *Agent) fileFloor(app string) (floorEntry, error) {
	a.floorMu.Lock()
	defer a.floorMu.Unlock()
	d, err := a.readFloor()
	if err != nil {
		return floorEntry{}, err
	}
	return d.Apps[app], nil
}

// setFloors applies change to the floor file and writes it back
// atomically (temporary file, fsync, rename, directory fsync) when it
// changed anything.
func (a *Agent) setFloors(change func(d *floorDoc) bool) error {
	a.floorMu.Lock()
	defer a.floorMu.Unlock()
	d, err := a.readFloor()
	if err != nil {
		return err
	}
	if !change(d) && len(d.repaired) == 0 {
		return nil
	}
	if len(d.repaired) > 0 {
		a.opts.Logf("anti-rollback floor: %s had an over-long version text for %s; rewriting it clipped to %d bytes (the sequences stay as they are)",
			a.cfg.FloorPath(), strings.Join(d.repaired, ", "), maxFloorVersion)
	}
	b := d.marshal()
	if err := protocol.WriteFileAtomic(a.cfg.FloorPath(), 0o600, func(w io.Writer) error {
		_, err := w.Write(b)
		return err
	}); err != nil {
		return fmt.Errorf("write the anti-rollback floor file %s: %w", a.cfg.FloorPath(), err)
	}
	return nil
}

// raiseFloor makes app's file floor at least seq.
func (a *Agent) raiseFloor(app string, seq uint64, version string) error {
	return a.setFloors(func(d *floorDoc) bool {
		if d.Apps[app].Sequence >= seq {
			return false
		}
		d.Apps[app] = floorEntry{Sequence: seq, Version: clipVersion(version)}
		return true
	})
}

// unraiseFloor undoes raiseFloor for an install that was undone before it
// reached the target: when app's file floor is exactly the undone
// release's sequence, it goes back to what it was when that install
// started. Any other value was set by something else and stays.
func (a *Agent) unraiseFloor(app string, p *pending) error {
	if p == nil || !p.RaisesFloor {
		return nil
	}
	return a.setFloors(func(d *floorDoc) bool {
		if d.Apps[app].Sequence != p.Sequence {
			return false
		}
		if p.FileFloor.Sequence == 0 {
			delete(d.Apps, app)
		} else {
			d.Apps[app] = floorEntry{Sequence: p.FileFloor.Sequence, Version: clipVersion(p.FileFloor.Version)}
		}
		return true
	})
}

// seedFloor raises the file floor to the state database's floor for every
// app (after an upgrade from an agent without floor.json, or after the
// file was moved aside). A corrupt file is left alone and logged; installs
// report it.
func (a *Agent) seedFloor() {
	want := map[string]floorEntry{}
	err := a.withDB(func(db *bolt.DB) error {
		return db.View(func(tx *bolt.Tx) error {
			return tx.Bucket(bucketApps).ForEach(func(k, v []byte) error {
				r, err := decodeRecord(string(k), v)
				if err != nil {
					return err
				}
				if s := max(r.Floor, r.Sequence); s > 0 {
					e := floorEntry{Sequence: s}
					if s == r.Sequence {
						e.Version = clipVersion(r.Version)
					}
					want[r.App] = e
				}
				return nil
			})
		})
	})
	if err != nil {
		a.opts.Logf("anti-rollback floor: cannot read the state database: %v", err)
		return
	}
	apps := make([]string, 0, len(want))
	for app := range want {
		apps = append(apps, app)
	}
	sort.Strings(apps)
	err = a.setFloors(func(d *floorDoc) bool {
		changed := false
		for _, app := range apps {
			if e := want[app]; d.Apps[app].Sequence < e.Sequence {
				d.Apps[app] = e
				changed = true
				a.opts.Logf("anti-rollback floor: %s raised to sequence %d from the state database", app, e.Sequence)
			}
		}
		return changed
	})
	if err != nil {
		a.opts.Logf("anti-rollback floor: %v", err)
	}
}
