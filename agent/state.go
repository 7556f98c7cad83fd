package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/edgefleet/edgefleet/hardware"
	"github.com/edgefleet/edgefleet/protocol"
	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// App states as persisted (strings, never numbers: see STYLE.md).
const (
	StateNone        = "none"         // nothing installed by edgefleet yet
	StateCommitted   = "committed"    // running a release that passed its trial
	StateStaging     = "staging"      // writing .<name>.staged
	StateStaged      = "staged"       // staged file complete and verified; probing
	StateSwapping    = "swapping"     // moving the staged file over the target
	StateTrial       = "trial"        // new binary in place, not yet committed
	StateRollingBack = "rolling-back" // restoring <name>.prev over the target
	StateRolledBack  = "rolled-back"  // previous binary restored
	StateFailed      = "failed"       // an inconsistency recovery could not fix
)

// stateSchema is the version of the persisted records. Records carrying
// another version are refused rather than misread.
const stateSchema = 1

// maxHistory bounds each app's event history.
const maxHistory = 20

var (
	bucketApps = []byte("apps")
	bucketMeta = []byte("meta")
	keySchema  = []byte("schema")
)

// Options tunes an Agent. The zero value is valid; Validate fills defaults.
type Options struct {
	// Now is the clock (manifest expiry, history). Default time.Now.
	Now func() time.Time
	// Logf receives one line per step. Default: discard.
	Logf func(format string, args ...any)
	// CPU, when set, replaces the facts read from this process's auxiliary
	// vector (tests inject an ARMv6 or a pre-AVX2 CPU). Default
	// hardware.ReadCPU().
	CPU *hardware.CPUFacts
	// Keyring, when set, replaces the keys loaded from Config.TrustedKeys.
	Keyring *protocol.Keyring
	// Storage reports free space for a directory. Default
	// hardware.ReadStorage.
	Storage func(path string) (hardware.StorageFacts, error)
	// DBTimeout is how long Open waits for the state database lock before
	// returning ErrLocked. Default 1s.
	DBTimeout time.Duration
	// Memory reports this device's memory; Open derives the default xz
	// decoder memory limit from it (limits.max_decoder_memory). Default
	// hardware.ReadMemory.
	Memory func() (hardware.MemoryFacts, error)
}

// Validate fills the defaults.
func (o *Options) Validate() error {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	if o.Storage == nil {
		o.Storage = hardware.ReadStorage
	}
	if o.Memory == nil {
		o.Memory = hardware.ReadMemory
	}
	if o.DBTimeout == 0 {
		o.DBTimeout = time.Second
	}
	if o.DBTimeout < 0 {
		return errors.New("agent options: DBTimeout must be positive")
	}
	return nil
}

// Agent is the device side of edgefleet for one configuration: it owns the
// state database and installs, commits and rolls back the configured apps.
// Its methods are safe for concurrent use; installs of one app are
// serialised (a second one gets ErrBusy).
type Agent struct {
	cfg  *Config
	opts Options
	keys *protocol.Keyring
	cpu  hardware.CPUFacts

	trust *trustState // root_keys, key set, time floor (keyset.go)

	dbMu sync.RWMutex // guards db itself (Reset swaps it)
	db   *bolt.DB

	floorMu sync.Mutex // serialises read-modify-write of floor.json

	decoderLimit int64  // largest xz dictionary accepted (decoder.go)
	decoderWhy   string // where decoderLimit comes from

	mu       sync.Mutex
	busy     map[string]bool
	progress map[string]*Progress
}

// Event is one line of an app's history.
type Event struct {
	Time    time.Time `json:"time"`
	Kind    string    `json:"kind"` // "installed", "refused", "committed", "rolled-back", "recovered", "boot-on-trial", "failed"
	Version string    `json:"version,omitempty"`
	Detail  string    `json:"detail,omitempty"`
}

// AppStatus is what status shows for one app.
type AppStatus struct {
	App              string    `json:"app"`
	Path             string    `json:"path"`
	Version          string    `json:"version,omitempty"`
	Sequence         uint64    `json:"sequence,omitempty"`
	State            string    `json:"state"`
	Previous         string    `json:"previous,omitempty"`
	PreviousSequence uint64    `json:"previous_sequence,omitempty"`
	LastError        string    `json:"last_error,omitempty"`
	BootsOnTrial     int       `json:"boots_on_trial,omitempty"`
	TrialStarted     time.Time `json:"trial_started,omitzero"`
	History          []Event   `json:"history,omitempty"`
	Progress         *Progress `json:"progress,omitempty"`
}

// record is the persisted state of one app (JSON in bucket "apps").
type record struct {
	Schema int    `json:"schema"`
	App    string `json:"app"`
	State  string `json:"state"`
	// The release at the target path (when State is committed or trial).
	Version  string `json:"version,omitempty"`
	Sequence uint64 `json:"sequence,omitempty"`
	SHA256   string `json:"sha256,omitempty"`
	// The release kept at <path>.prev, if any.
	Previous         string `json:"previous,omitempty"`
	PreviousSequence uint64 `json:"previous_sequence,omitempty"`
	PreviousSHA256   string `json:"previous_sha256,omitempty"`
	// Floor is the highest sequence ever swapped in: anti-rollback refuses
	// anything at or below it, even after a rollback. floor.json keeps a
	// copy that survives a reset of this database (floor.go).
	Floor uint64 `json:"floor,omitempty"`
	// Pending is the install or rollback in progress.
	Pending      *pending  `json:"pending,omitempty"`
	LastError    string    `json:"last_error,omitempty"`
	BootsOnTrial int       `json:"boots_on_trial,omitempty"`
	TrialStarted time.Time `json:"trial_started,omitzero"`
	History      []Event   `json:"history,omitempty"`
}

// pending describes the release being installed (or, for a rollback, the
// one being restored).
type pending struct {
	Version  string `json:"version"`
	Sequence uint64 `json:"sequence"`
	SHA256   string `json:"sha256"`
	Size     int64  `json:"size"`
	// OldSHA256 is the sha256 of the target when the install started
	// ("" when there was none).
	OldSHA256 string `json:"old_sha256,omitempty"`
	// PriorState is the state to return to when the install is undone.
	PriorState string    `json:"prior_state"`
	Started    time.Time `json:"started"`
	// RaisesFloor: the swap is about to start, so floor.json may have been
	// raised to Sequence; FileFloor is the app's entry before that, restored when
	// the install is undone (floor.go).
	RaisesFloor bool       `json:"raises_floor,omitempty"`
	FileFloor   floorEntry `json:"file_floor,omitzero"`
}

func (r *record) event(now time.Time, kind, version, detail string) {
	r.History = append(r.History, Event{Time: now.UTC(), Kind: kind, Version: version, Detail: detail})
	if n := len(r.History) - maxHistory; n > 0 {
		r.History = append([]Event(nil), r.History[n:]...)
	}
}

func decodeRecord(app string, b []byte) (*record, error) {
	var r record
	// Extensible: a newer agent may add fields, and an agent rolled back
	// after a self-update must still read them; a key twice or in
	// another case is refused (protocol.StrictUnmarshal).
	if err := protocol.StrictUnmarshalExtensible(b, &r); err != nil {
		return nil, fmt.Errorf("record of app %q is not valid JSON: %v", app, err)
	}
	if r.Schema != stateSchema {
		return nil, fmt.Errorf("record of app %q has schema %d, this agent understands %d (written by a newer edgefleet-agent?)", app, r.Schema, stateSchema)
	}
	if r.App != app {
		return nil, fmt.Errorf("record under key %q names app %q", app, r.App)
	}
	switch r.State {
	case StateNone, StateCommitted, StateStaging, StateStaged, StateSwapping, StateTrial, StateRollingBack, StateRolledBack, StateFailed:
	default:
		return nil, fmt.Errorf("record of app %q has unknown state %q", app, r.State)
	}
	if len(r.History) > maxHistory {
		r.History = r.History[len(r.History)-maxHistory:]
	}
	return &r, nil
}

// Open opens the agent: state database (bbolt, exclusive: a second process
// gets ErrLocked after Options.DBTimeout), trusted keys and CPU facts. A
// corrupt state database gives ErrCorruptState naming the file; the apps
// keep their binaries and `edgefleet-agent reset` (ResetState) moves the
// file aside. Open raises the anti-rollback floor file (floor.json) to the
// database's floors when it is behind; a corrupt floor file does not stop
// Open (installs report it with ErrCorruptFloor).
func Open(cfg *Config, opts Options) (*Agent, error) {
	if cfg == nil {
		return nil, fmt.Errorf("no configuration: %w", ErrConfig)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	a := &Agent{cfg: cfg, opts: opts, busy: map[string]bool{}, progress: map[string]*Progress{}}
	extra := opts.Keyring
	if extra == nil && len(cfg.TrustedKeys) > 0 {
		kr, err := protocol.LoadKeyring(cfg.TrustedKeys...)
		if err != nil {
			return nil, fmt.Errorf("load trusted keys: %w", err)
		}
		extra = kr
	}
	if err := a.openTrust(extra); err != nil { // keyset.go: root_keys, trust.json
		return nil, err
	}
	if opts.CPU != nil {
		a.cpu = *opts.CPU
	} else {
		c, err := hardware.ReadCPU()
		if err != nil {
			return nil, fmt.Errorf("read CPU facts: %w", err)
		}
		a.cpu = c
	}
	a.setDecoderLimit()
	// data_dir holds the state and the floor: another user who can change
	// it could move them aside and replay an older release (safefile.go).
	if err := ensureDataDir(cfg); err != nil {
		return nil, err
	}
	db, err := openDB(cfg.StatePath(), opts.DBTimeout)
	if err != nil {
		return nil, err
	}
	a.db = db
	a.seedFloor()
	return a, nil
}

func openDB(path string, timeout time.Duration) (db *bolt.DB, err error) {
	corrupt := func(why any) error {
		return fmt.Errorf("cannot read the state database %s (%v); the installed binaries are untouched — run `edgefleet-agent reset` to move it aside and start with fresh state: %w", path, why, ErrCorruptState)
	}
	defer func() {
		// bbolt panics on some corrupt pages; never let that brick the agent.
		if p := recover(); p != nil {
			if db != nil {
				db.Close()
			}
			db, err = nil, corrupt(p)
		}
	}()
	db, err = bolt.Open(path, 0o600, &bolt.Options{
		Timeout:         timeout,
		InitialMmapSize: 1 << 20,
		NoFreelistSync:  false,
	})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("%s is held by another process (is `edgefleet-agent run` running? then sideload through it): %w", path, ErrLocked)
	}
	if err != nil {
		if errors.Is(err, fs.ErrPermission) {
			return nil, fmt.Errorf("open state database: %w", err)
		}
		return nil, corrupt(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for e := range tx.Check() {
			return e
		}
		apps, err := tx.CreateBucketIfNotExists(bucketApps)
		if err != nil {
			return err
		}
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		if v := meta.Get(keySchema); v == nil {
			if err := meta.Put(keySchema, []byte(fmt.Sprint(stateSchema))); err != nil {
				return err
			}
		}
		_, err = checkRecords(tx, apps, meta)
		return err
	})
	if err != nil {
		db.Close()
		return nil, corrupt(err)
	}
	return db, nil
}

// checkRecords checks the schema and decodes every record; it returns
// how many there are.
func checkRecords(tx *bolt.Tx, apps, meta *bolt.Bucket) (int, error) {
	if meta != nil {
		if v := meta.Get(keySchema); v != nil && string(v) != fmt.Sprint(stateSchema) {
			return 0, fmt.Errorf("database schema %q, this agent understands %d", v, stateSchema)
		}
	}
	n := 0
	if apps == nil {
		return 0, nil
	}
	err := apps.ForEach(func(k, v []byte) error {
		n++
		_, err := decodeRecord(string(k), v)
		return err
	})
	return n, err
}

// stateHealth reads the state database at path without changing it (a
// shared lock, read-only): nil and the number of app records when Open
// would accept it, an error wrapping ErrLocked when a daemon (or another
// command) holds it, else why it is unreadable.
func stateHealth(path string) (records int, err error) {
	defer func() {
		if p := recover(); p != nil { // bbolt panics on some corrupt pages
			records, err = 0, fmt.Errorf("%v", p)
		}
	}()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 200 * time.Millisecond})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return 0, fmt.Errorf("%s is held by another process (the running daemon?); stop `edgefleet-agent run` before a reset: %w", path, ErrLocked)
	}
	if err != nil {
		return 0, err
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		for e := range tx.Check() {
			return e
		}
		records, err = checkRecords(tx, tx.Bucket(bucketApps), tx.Bucket(bucketMeta))
		return err
	})
	return records, err
}

// Close closes the state database.
func (a *Agent) Close() error {
	a.dbMu.Lock()
	defer a.dbMu.Unlock()
	if a.db == nil {
		return nil
	}
	err := a.db.Close()
	a.db = nil
	return err
}

// Config returns the agent's configuration.
func (a *Agent) Config() *Config { return a.cfg }

// CPU returns the CPU facts the agent decides compatibility with.
func (a *Agent) CPU() hardware.CPUFacts { return a.cpu }

// Reset moves the state database aside (state.db.corrupt-<time>) and starts
// with an empty one, however healthy it is: it is the in-process form of
// ForceResetState (the daemon never calls it: a database it holds open is
// healthy, and `edgefleet-agent reset` refuses that). Binaries are kept,
// and so is the anti-rollback floor file (floor.json): a reset device still
// refuses every release at or below the highest sequence it ever swapped
// in.
func (a *Agent) Reset() error {
	a.dbMu.Lock()
	defer a.dbMu.Unlock()
	if a.db != nil {
		a.db.Close()
		a.db = nil
	}
	if _, err := moveAside(a.cfg.StatePath(), a.opts.Now()); err != nil {
		return err
	}
	db, err := openDB(a.cfg.StatePath(), a.opts.DBTimeout)
	if err != nil {
		return err
	}
	a.db = db
	return nil
}

// ResetState is for when Open failed with ErrCorruptState: it moves the
// state database aside and returns the new name ("" when there was no
// file). It refuses, moving nothing, while another process holds the
// database (ErrLocked: the daemon is running) and when the database reads
// fine (ErrHealthyState: moving it aside would only forget what is
// installed; ForceResetState does it anyway). The anti-rollback floor file
// (Config.FloorPath) is never touched.
func ResetState(cfg *Config, now time.Time) (string, error) {
	return resetState(cfg, now, false)
}

// ForceResetState is ResetState for a healthy database too (`edgefleet-agent
// reset --force`, daemon stopped): the device then reports nothing
// installed, and the kept anti-rollback floor still refuses every release
// at or below the sequences it ever installed. It still refuses while
// another process holds the database.
func ForceResetState(cfg *Config, now time.Time) (string, error) {
	return resetState(cfg, now, true)
}

func resetState(cfg *Config, now time.Time, force bool) (string, error) {
	if err := cfg.Validate(); err != nil {
		return "", err
	}
	if err := checkDataDir(cfg); err != nil {
		return "", err
	}
	path := cfg.StatePath()
	if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	n, err := stateHealth(path)
	if errors.Is(err, ErrLocked) {
		return "", err
	}
	if err == nil && !force {
		return "", fmt.Errorf("the state database %s reads fine (%d app records); nothing needs resetting — a reset is for a database the agent cannot read, and moving a healthy one aside only forgets what is installed (status would show nothing installed while the apps run, and the anti-rollback floor in %s would still refuse reinstalling the same releases); if you really want to start over with empty state, stop the daemon and run `edgefleet-agent reset --force`: %w",
			path, n, cfg.FloorPath(), ErrHealthyState)
	}
	return moveAside(path, now)
}

func moveAside(path string, now time.Time) (string, error) {
	f, err := os.OpenFile(path, os.O_RDWR|syscall.O_NOFOLLOW, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("reset state: %w", err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return "", fmt.Errorf("%s is held by another process; stop `edgefleet-agent run` before a reset: %w", path, ErrLocked)
	}
	to := path + ".corrupt-" + now.UTC().Format("20060102T150405Z")
	if err := os.Rename(path, to); err != nil {
		return "", fmt.Errorf("reset state: %w", err)
	}
	if err := protocol.SyncDir(filepath.Dir(path)); err != nil {
		return "", err
	}
	return to, nil
}

func (a *Agent) withDB(fn func(db *bolt.DB) error) error {
	a.dbMu.RLock()
	defer a.dbMu.RUnlock()
	if a.db == nil {
		return errors.New("agent is closed")
	}
	return fn(a.db)
}

// load returns the app's record (a fresh "none" record when there is none).
func (a *Agent) load(app string) (*record, error) {
	var r *record
	err := a.withDB(func(db *bolt.DB) error {
		return db.View(func(tx *bolt.Tx) error {
			var err error
			r, err = getRecord(tx, app)
			return err
		})
	})
	return r, err
}

func getRecord(tx *bolt.Tx, app string) (*record, error) {
	v := tx.Bucket(bucketApps).Get([]byte(app))
	if v == nil {
		return &record{Schema: stateSchema, App: app, State: StateNone}, nil
	}
	r, err := decodeRecord(app, v)
	if err != nil {
		return nil, fmt.Errorf("%v: %w", err, ErrCorruptState)
	}
	return r, nil
}

// update applies fn to the app's record in one fsynced bbolt transaction.
// fn's error aborts without writing.
func (a *Agent) update(app string, fn func(r *record) error) (*record, error) {
	var out *record
	err := a.withDB(func(db *bolt.DB) error {
		return db.Update(func(tx *bolt.Tx) error {
			r, err := getRecord(tx, app)
			if err != nil {
				return err
			}
			if err := fn(r); err != nil {
				return err
			}
			r.Schema, r.App = stateSchema, app
			b, err := json.Marshal(r)
			if err != nil {
				return err
			}
			out = r
			return tx.Bucket(bucketApps).Put([]byte(app), b)
		})
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Installed returns the version and sequence at the app's path as recorded
// ("" and 0 when edgefleet installed nothing yet).
func (a *Agent) Installed(app string) (string, uint64, error) {
	if _, ok := a.cfg.App(app); !ok {
		return "", 0, fmt.Errorf("app %q: %w", app, ErrUnknownApp)
	}
	r, err := a.load(app)
	if err != nil {
		return "", 0, err
	}
	return r.Version, r.Sequence, nil
}

// Status reports every configured app (and any app with a record that is
// no longer configured), sorted by name.
func (a *Agent) Status() ([]AppStatus, error) {
	recs := map[string]*record{}
	err := a.withDB(func(db *bolt.DB) error {
		return db.View(func(tx *bolt.Tx) error {
			return tx.Bucket(bucketApps).ForEach(func(k, v []byte) error {
				r, err := decodeRecord(string(k), v)
				if err != nil {
					return fmt.Errorf("%v: %w", err, ErrCorruptState)
				}
				recs[string(k)] = r
				return nil
			})
		})
	})
	if err != nil {
		return nil, err
	}
	for _, app := range a.cfg.Apps {
		if _, ok := recs[app.Name]; !ok {
			recs[app.Name] = &record{App: app.Name, State: StateNone}
		}
	}
	out := make([]AppStatus, 0, len(recs))
	a.mu.Lock()
	defer a.mu.Unlock()
	for name, r := range recs {
		s := AppStatus{
			App: name, Version: r.Version, Sequence: r.Sequence, State: r.State,
			Previous: r.Previous, PreviousSequence: r.PreviousSequence,
			LastError: r.LastError, BootsOnTrial: r.BootsOnTrial, TrialStarted: r.TrialStarted,
			History: r.History,
		}
		if c, ok := a.cfg.App(name); ok {
			s.Path = c.Path
		}
		if p := a.progress[name]; p != nil {
			cp := *p
			s.Progress = &cp
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].App < out[j].App })
	return out, nil
}
