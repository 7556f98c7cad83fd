package packer

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/hardware"
)

// stepDetail returns the report of step in r ("" when it did not run).
func stepDetail(r Result, step string) string {
	for _, s := range r.Steps {
		if s.Step == step {
			return s.Detail
		}
	}
	return ""
}

// cachedSteps lists the steps of r whose detail says they came from the
// cache.
func cachedSteps(r Result) []string {
	var out []string
	for _, s := range r.Steps {
		if strings.Contains(s.Detail, "cached") && !strings.Contains(s.Detail, "not cached") {
			out = append(out, s.Step)
		}
	}
	return out
}

// cacheEntries lists the entry files under a cache directory, by kind.
func cacheEntries(t *testing.T, dir string) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, kind := range []string{cacheXZ, cacheUPX, cacheProbe, cacheTool} {
		filepath.WalkDir(filepath.Join(dir, kind), func(path string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() && !strings.HasPrefix(d.Name(), ".tmp-") {
				out[kind] = append(out[kind], path)
			}
			return nil
		})
	}
	return out
}

// entryValid reads a cache entry file and checks it against its header.
func entryValid(path string) error {
	c := &cache{dir: filepath.Dir(filepath.Dir(filepath.Dir(path)))}
	kind := filepath.Base(filepath.Dir(filepath.Dir(path)))
	hit, err := c.get(kind, filepath.Base(path), io.Discard)
	if err == nil && !hit {
		err = errors.New("not found")
	}
	return err
}

func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func sameFile(t *testing.T, a, b string) bool {
	t.Helper()
	x, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	y, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Equal(x, y)
}

// fixtureSubset is the fixture's linux-armv6 profile and, when upx is
// there, its UPX twin: the profiles the cache tests re-pack.
func fixtureSubset(f *fixtureT) (names []string, profiles []hardware.Profile) {
	names = []string{"linux-armv6"}
	if f.upx != "" {
		names = append(names, upxProfile)
	}
	for _, n := range names {
		profiles = append(profiles, f.results[n].Profile)
	}
	return names, profiles
}

// A second pack of the same input takes compress, probe and upx from the
// cache, says so, and writes the same bytes as the cold pack did.
func TestSecondPackIsCachedAndByteIdentical(t *testing.T) {
	f := getFixture(t)
	names, profiles := fixtureSubset(f)
	o := baseOptions(t, f.priv, t.TempDir(), profiles...)
	o.UPX = f.upx
	res, err := Pack(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		want := []string{"probe", "compress"}
		if r.Profile.UPX {
			want = []string{"upx", "probe", "compress"}
		}
		if got := cachedSteps(r); strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("%s: cached steps %v, want %v (steps %+v)", names[i], got, want, r.Steps)
		}
		// A UPX profile's detail also says what UPX gains on the wire.
		if d := stepDetail(r, "compress"); !strings.Contains(d, " (cached") || !strings.HasPrefix(d, "xz ") || r.Profile.UPX != strings.Contains(d, "UPX ") {
			t.Errorf("%s: compress detail %q, want \"xz <size> (cached...)\" naming UPX's gain for a UPX profile", names[i], d)
		}
		if !r.ProbeOK || r.Probe != f.results[names[i]].Probe {
			t.Errorf("%s: cached probe %q ok=%v, want %q", names[i], r.Probe, r.ProbeOK, f.results[names[i]].Probe)
		}
		if r.PayloadSize != f.results[names[i]].PayloadSize || r.UPXSize != f.results[names[i]].UPXSize {
			t.Errorf("%s: sizes %+v differ from the cold pack's", names[i], r)
		}
		if !sameFile(t, r.Bundle, f.results[names[i]].Bundle) {
			t.Errorf("%s: the cached pack's bundle differs from the cold pack's", names[i])
		}
	}
}

// --no-cache neither reads nor writes the cache, and still gives the same
// bundle.
func TestNoCacheBypassesTheCache(t *testing.T) {
	f := getFixture(t)
	cacheDir := t.TempDir()
	copyTree(t, sharedCacheDir(t), cacheDir) // a warm cache that must be ignored
	before := cacheEntries(t, cacheDir)
	o := baseOptions(t, f.priv, t.TempDir(), f.results["linux-amd64"].Profile)
	o.CacheDir, o.NoCache = cacheDir, true
	res, err := Pack(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	r := res[0]
	if got := cachedSteps(r); len(got) != 0 {
		t.Errorf("steps %v came from the cache with NoCache", got)
	}
	if !sameFile(t, r.Bundle, f.results["linux-amd64"].Bundle) {
		t.Errorf("the uncached pack's bundle differs from the fixture's")
	}
	if after := cacheEntries(t, cacheDir); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("NoCache changed the cache: %d entries before, %d after", len(before), len(after))
	}

	// Validate: NoCache wins over a CacheDir.
	o = baseOptions(t, f.priv, "out", f.results["linux-amd64"].Profile)
	o.CacheDir, o.NoCache = cacheDir, true
	if err := o.Validate(); err != nil || o.CacheDir != "" {
		t.Errorf("Validate with NoCache: CacheDir %q, err %v", o.CacheDir, err)
	}
}

// A corrupted entry is detected on read, the step runs again, the bundle
// is still right, and the entry is rewritten whole.
func TestCorruptCacheEntryIsDetectedAndReplaced(t *testing.T) {
	f := getFixture(t)
	names, profiles := fixtureSubset(f)
	cacheDir := t.TempDir()
	copyTree(t, sharedCacheDir(t), cacheDir)
	entries := cacheEntries(t, cacheDir)
	if len(entries[cacheXZ]) == 0 || len(entries[cacheProbe]) == 0 {
		t.Fatalf("the fixture's pack left no cache entries: %v", entries)
	}
	// Three kinds of damage: a flipped body byte (xz), a truncated body
	// (upx), a garbled header (probe).
	for _, p := range entries[cacheXZ] {
		b, _ := os.ReadFile(p)
		b[len(b)-100] ^= 0x40
		os.WriteFile(p, b, 0o644)
	}
	for _, p := range entries[cacheUPX] {
		os.Truncate(p, int64(cacheHeaderLen+1000))
	}
	for _, p := range entries[cacheProbe] {
		os.WriteFile(p, []byte("pass\n"), 0o644)
	}
	for _, p := range append(append(entries[cacheXZ], entries[cacheUPX]...), entries[cacheProbe]...) {
		if err := entryValid(p); !errors.Is(err, errCacheCorrupt) {
			t.Fatalf("damaged entry %s: err %v, want errCacheCorrupt", p, err)
		}
	}

	pack := func() []Result {
		o := baseOptions(t, f.priv, t.TempDir(), profiles...)
		o.UPX, o.CacheDir = f.upx, cacheDir
		res, err := Pack(context.Background(), o)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	res := pack()
	for i, r := range res {
		if got := cachedSteps(r); len(got) != 0 {
			t.Errorf("%s: steps %v were taken from a corrupt cache", names[i], got)
		}
		if d := stepDetail(r, "compress"); !strings.Contains(d, "corrupt") {
			t.Errorf("%s: compress detail %q does not mention the corrupt entry", names[i], d)
		}
		if d := stepDetail(r, "probe"); !strings.Contains(d, "corrupt") || !r.ProbeOK {
			t.Errorf("%s: probe detail %q ok=%v, want a fresh pass noting the corrupt entry", names[i], d, r.ProbeOK)
		}
		if r.Profile.UPX && !strings.Contains(stepDetail(r, "upx"), "corrupt") {
			t.Errorf("%s: upx detail %q does not mention the corrupt entry", names[i], stepDetail(r, "upx"))
		}
		if !sameFile(t, r.Bundle, f.results[names[i]].Bundle) {
			t.Errorf("%s: bundle after a corrupt cache differs from the fixture's", names[i])
		}
	}
	// The damaged entries of these profiles were rewritten: a third pack
	// takes everything from the cache again.
	for i, r := range pack() {
		want := 2
		if r.Profile.UPX {
			want = 3
		}
		if got := cachedSteps(r); len(got) != want {
			t.Errorf("%s: after the rewrite, cached steps %v, want %d", names[i], got, want)
		}
	}
}

// A probe failure is never cached: the same failing pack probes again and
// fails again, and a pass cached for another CPU does not count.
func TestProbeFailureIsNeverCached(t *testing.T) {
	requireGo(t)
	requireTool(t, "qemu-arm")
	_, priv := testKey(t)
	p := lookupProfiles(t, "linux-armv7")[0]
	good := p
	p.Name, p.QEMUCPU = "armv7-on-arm1176", "arm1176"
	cacheDir := t.TempDir()

	// The same executable passes on cortex-a7 (now cached)...
	o := baseOptions(t, priv, t.TempDir(), good)
	o.CacheDir, o.Encoding = cacheDir, "none"
	if _, err := Pack(context.Background(), o); err != nil {
		t.Fatal(err)
	}
	// ...and still fails on arm1176, twice.
	for run := 1; run <= 2; run++ {
		o := baseOptions(t, priv, t.TempDir(), p)
		o.CacheDir = cacheDir
		res, err := Pack(context.Background(), o)
		if !errors.Is(err, ErrProbe) {
			t.Fatalf("run %d: err = %v, want ErrProbe", run, err)
		}
		if d := stepDetail(res[0], "probe"); strings.Contains(d, "cached") {
			t.Errorf("run %d: probe detail %q: a failure came from the cache", run, d)
		}
	}
	if n := len(cacheEntries(t, cacheDir)[cacheProbe]); n != 1 {
		t.Errorf("%d probe entries, want 1 (the cortex-a7 pass only)", n)
	}
}

func TestCacheEntryRoundTripAndDamage(t *testing.T) {
	c, err := openCache(t.TempDir(), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	key := cacheKey("xz", "a", "b")
	if key == cacheKey("xz", "ab") || key == cacheKey("xz", "a", "b", "") || key == cacheKey("upx", "a", "b") {
		t.Fatal("cache keys of different parts collide")
	}
	var got bytes.Buffer
	if hit, err := c.get(cacheXZ, key, &got); hit || err != nil {
		t.Fatalf("empty cache: hit %v err %v", hit, err)
	}
	body := bytes.Repeat([]byte("payload "), 5000)
	if err := c.put(cacheXZ, key, bytes.NewReader(body)); err != nil {
		t.Fatal(err)
	}
	if hit, err := c.get(cacheXZ, key, &got); !hit || err != nil || !bytes.Equal(got.Bytes(), body) {
		t.Fatalf("round trip: hit %v err %v, %d bytes of %d", hit, err, got.Len(), len(body))
	}
	path := c.path(cacheXZ, key)
	good, _ := os.ReadFile(path)
	for name, bad := range map[string][]byte{
		"empty":       {},
		"header only": good[:cacheHeaderLen],
		"truncated":   good[:len(good)-1],
		"extra byte":  append(append([]byte(nil), good...), 'x'),
		"flipped":     append(append(append([]byte(nil), good[:cacheHeaderLen+10]...), good[cacheHeaderLen+10]^1), good[cacheHeaderLen+11:]...),
		"bad magic":   append([]byte("efpc2"), good[5:]...),
	} {
		os.WriteFile(path, bad, 0o644)
		dst := filepath.Join(t.TempDir(), "out")
		hit, corrupt := c.getFile(cacheXZ, key, dst, 0o644)
		if hit || !corrupt {
			t.Errorf("%s: hit %v corrupt %v, want a detected corrupt entry", name, hit, corrupt)
		}
		if fileExists(dst) {
			t.Errorf("%s: getFile left %s behind", name, dst)
		}
	}
	// put replaces a corrupt entry.
	if err := c.put(cacheXZ, key, bytes.NewReader(body)); err != nil {
		t.Fatal(err)
	}
	if err := entryValid(path); err != nil {
		t.Errorf("rewritten entry: %v", err)
	}
}

func TestCacheTrimRemovesLeastRecentlyUsed(t *testing.T) {
	c, err := openCache(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	var keys []string
	for i := 0; i < 5; i++ {
		k := cacheKey("xz", fmt.Sprint(i))
		keys = append(keys, k)
		if err := c.put(cacheXZ, k, bytes.NewReader(make([]byte, 1000))); err != nil {
			t.Fatal(err)
		}
		age := now.Add(-time.Duration(10-i) * time.Hour) // key 0 is the oldest
		os.Chtimes(c.path(cacheXZ, k), age, age)
	}
	// A hit refreshes an old entry's mtime: key 0 becomes the newest.
	if hit, err := c.get(cacheXZ, keys[0], io.Discard); !hit || err != nil {
		t.Fatal(hit, err)
	}
	// A stray temp file of a pack that died mid-write.
	stray := filepath.Join(filepath.Dir(c.path(cacheXZ, keys[1])), ".tmp-dead")
	os.WriteFile(stray, []byte("x"), 0o644)
	os.Chtimes(stray, now.Add(-2*time.Hour), now.Add(-2*time.Hour))

	entry := int64(cacheHeaderLen + 1000)
	c.max = 3 * entry
	if err := c.trimIfDue(now); err != nil {
		t.Fatal(err)
	}
	for i, k := range keys {
		want := i == 0 || i >= 3 // 1 and 2 were the least recently used
		if got := fileExists(c.path(cacheXZ, k)); got != want {
			t.Errorf("entry %d: present %v, want %v", i, got, want)
		}
	}
	if fileExists(stray) {
		t.Error("trim left an old temporary file")
	}
	// Within the hour, trimIfDue does not walk again.
	c.max = 0
	if err := c.trimIfDue(now.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if !fileExists(c.path(cacheXZ, keys[4])) {
		t.Error("trimIfDue walked the cache twice within the hour")
	}
	if err := c.trimIfDue(now.Add(2 * cacheTrimEvery)); err != nil {
		t.Fatal(err)
	}
	if n := len(cacheEntries(t, c.dir)[cacheXZ]); n != 0 {
		t.Errorf("%d entries left under a zero bound", n)
	}
}

// A tool's --version answer is asked once per program file: later packs
// (here: a fresh process memo) read it from the cache; replacing the
// program asks again.
func TestToolIdentityCachedByProgramFile(t *testing.T) {
	dir := t.TempDir()
	tool := filepath.Join(dir, "fake-qemu")
	count := filepath.Join(dir, "count")
	write := func(version string) {
		script := "#!/bin/sh\necho x >> " + count + "\necho '" + version + "'\necho second line\n"
		tmp := tool + ".new"
		if err := os.WriteFile(tmp, []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, tool); err != nil { // a new inode, as a package upgrade gives
			t.Fatal(err)
		}
	}
	runs := func() int { b, _ := os.ReadFile(count); return bytes.Count(b, []byte("x")) }
	c, err := openCache(filepath.Join(dir, "cache"), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	write("fake-qemu version 1.0")
	for i := 0; i < 3; i++ {
		toolIDs.Clear() // as in a new process
		id, err := identifyTool(context.Background(), c, tool, true)
		if err != nil {
			t.Fatal(err)
		}
		if id.version != "fake-qemu version 1.0" || len(id.sum) != 64 {
			t.Fatalf("identity %+v", id)
		}
	}
	if n := runs(); n != 1 {
		t.Errorf("--version ran %d times for one program file, want 1", n)
	}
	write("fake-qemu version 2.0")
	toolIDs.Clear()
	id, err := identifyTool(context.Background(), c, tool, false)
	if err != nil || id.version != "fake-qemu version 2.0" || runs() != 2 {
		t.Errorf("after replacing the program: %+v, %v, %d runs; want version 2.0 asked again", id, err, runs())
	}
}

// An unusable cache directory does not fail the pack: it runs uncached and
// says so.
func TestUnusableCacheDirPacksWithoutCache(t *testing.T) {
	requireGo(t)
	_, priv := testKey(t)
	file := filepath.Join(t.TempDir(), "not-a-dir")
	os.WriteFile(file, nil, 0o644)
	o := baseOptions(t, priv, t.TempDir(), lookupProfiles(t, "linux-amd64")...)
	o.CacheDir, o.Encoding, o.NoProbe = filepath.Join(file, "cache"), "none", true
	var resolve string
	o.Progress = func(e Event) {
		if e.Step == "resolve" && e.State == StepDone {
			resolve = e.Detail
		}
	}
	if _, err := Pack(context.Background(), o); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(resolve, "cache off") {
		t.Errorf("resolve detail %q does not say the cache is off", resolve)
	}
}

// FuzzCacheEntry: whatever bytes sit in an entry file, get never panics and
// hands out a hit only when the body matches the header.
func FuzzCacheEntry(f *testing.F) {
	dir := f.TempDir()
	c := &cache{dir: dir, max: 1 << 20}
	key := cacheKey("xz", "fuzz")
	if err := c.put(cacheXZ, key, strings.NewReader("hello payload")); err != nil {
		f.Fatal(err)
	}
	good, _ := os.ReadFile(c.path(cacheXZ, key))
	f.Add(good)
	f.Add(good[:cacheHeaderLen])
	f.Add([]byte("efpc1 00 1\n"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		if err := os.WriteFile(c.path(cacheXZ, key), b, 0o644); err != nil {
			t.Fatal(err)
		}
		var got bytes.Buffer
		hit, err := c.get(cacheXZ, key, &got)
		if !hit {
			return
		}
		// A hit means the file is exactly a header naming the body's
		// sha256 and size, followed by that body.
		sum := sha256.Sum256(got.Bytes())
		want := fmt.Sprintf("%s %x %020d\n%s", cacheMagic, sum, got.Len(), got.Bytes())
		if err != nil || string(b) != want {
			t.Fatalf("hit (err %v) on %q: body %q", err, b, got.Bytes())
		}
	})
}
