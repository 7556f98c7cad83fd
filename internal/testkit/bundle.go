package testkit

import (
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/protocol"
	"github.com/ulikunitz/xz"
)

// Keys makes a TEST-ONLY minisign key pair and writes the public key to
// dir/TEST-ONLY-release.pub (the first free name: TEST-ONLY-release-2.pub
// and so on when called again for the same dir). The private key stays in
// memory.
func Keys(t testing.TB, dir string) (pubPath string, priv protocol.PrivateKey) {
	t.Helper()
	pub, priv, err := protocol.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	text, err := pub.MarshalText()
	if err != nil {
		t.Fatal(err)
	}
	return createUnique(t, dir, "TEST-ONLY-release", ".pub", text), priv
}

// Public is the public half of a key from Keys.
func Public(priv protocol.PrivateKey) protocol.PublicKey {
	return priv.Public().(protocol.PublicKey)
}

// Target is the platform a bundle says it is for (GOOS is always linux).
type Target struct{ GOARCH, GOARM, GOAMD64 string }

// Native is the host's architecture (GOAMD64 v1 on amd64).
var Native = Target{GOARCH: runtime.GOARCH}

// Env is the go build environment for tg: GOOS=linux, GOARCH, GOARM when
// set, and GOAMD64 (v1 unless set) on amd64.
func (tg Target) Env() []string {
	env := []string{"GOOS=linux", "GOARCH=" + tg.GOARCH}
	if tg.GOARM != "" {
		env = append(env, "GOARM="+tg.GOARM)
	}
	if tg.GOARCH == "amd64" {
		v := tg.GOAMD64
		if v == "" {
			v = "v1"
		}
		env = append(env, "GOAMD64="+v)
	}
	return env
}

// Spec describes a signed test bundle; the zero value of each field means
// its documented default.
type Spec struct {
	// App is the manifest's app. Default "hello".
	App string
	// Version is the manifest's version (semver); required.
	Version string
	// Sequence is the anti-rollback sequence; required (non-zero).
	Sequence uint64
	// Profile is the manifest's profile. Default "linux-" + Target.GOARCH.
	Profile string
	// Target is the declared platform. Default Native. GOAMD64 is declared
	// v1 on amd64 unless set.
	Target Target
	// Exe is the executable's bytes. Default: the file at Binary.
	Exe []byte
	// Binary is the executable's path, read when Exe is nil. Default:
	// testdata/apps/hello built for Target at Version with Extra ldflags.
	Binary string
	// Extra are extra ldflags for the default hello build
	// ("-X main.crash=1").
	Extra string
	// ELF is the declared ELF identity. Default: read from the executable,
	// which must then be ELF for Target.GOARCH (set ELF to declare a lie or
	// to sign bytes that are not ELF).
	ELF *protocol.ELF
	// Encoding is protocol.EncodingXZ (default; 1 MiB dictionary) or
	// protocol.EncodingNone.
	Encoding string
	// XZDict overrides the declared payload.xz_dict_size. Default: the
	// 1 MiB the stream is written with.
	XZDict int64
	// ChunkSize is the payload's chunk size. Default 64 KiB.
	ChunkSize int64
	// Probe is the install probe. Default: --version prints Version, 30 s
	// timeout.
	Probe *protocol.Probe
	// NoProbe leaves the probe out.
	NoProbe bool
	// Expires is the optional expiry.
	Expires *time.Time
	// MinFree is the declared minimum free storage.
	MinFree int64
	// Created is the creation time. Default 2023-11-14T22:13:20Z
	// (Unix 1700000000), so equal specs give equal bundles.
	Created time.Time
	// KeySet is the optional first entry keyset.json (a key set chain
	// message). Default none.
	KeySet []byte
}

// Created is the default Spec.Created.
var Created = time.Unix(1700000000, 0).UTC()

var elfMachines = map[string]elf.Machine{
	"amd64": elf.EM_X86_64, "386": elf.EM_386, "arm": elf.EM_ARM, "arm64": elf.EM_AARCH64,
	"riscv64": elf.EM_RISCV, "ppc64le": elf.EM_PPC64, "s390x": elf.EM_S390,
	"mips": elf.EM_MIPS, "mipsle": elf.EM_MIPS, "mips64": elf.EM_MIPS, "mips64le": elf.EM_MIPS,
}

// Manifest builds the unsigned manifest for s and its payload bytes, with
// protocol functions only (never the packer). Encoded payloads are cached
// per process: pure-Go xz is the slow part of making a bundle.
func Manifest(t testing.TB, s Spec) (*protocol.Manifest, []byte) {
	t.Helper()
	if s.App == "" {
		s.App = "hello"
	}
	if s.Target.GOARCH == "" {
		s.Target = Native
	}
	if s.Profile == "" {
		s.Profile = "linux-" + s.Target.GOARCH
	}
	if s.Encoding == "" {
		s.Encoding = protocol.EncodingXZ
	}
	if s.ChunkSize == 0 {
		s.ChunkSize = 64 << 10
	}
	if s.Created.IsZero() {
		s.Created = Created
	}
	exe := s.Exe
	if exe == nil {
		if s.Binary == "" {
			s.Binary = BuildHello(t, s.Target.Env(), s.Version, s.Extra)
		}
		var err error
		if exe, err = os.ReadFile(s.Binary); err != nil {
			t.Fatal(err)
		}
	}
	id := s.ELF
	if id == nil {
		id = elfOf(t, s, exe)
	}
	sum := sha256.Sum256(exe)
	m := &protocol.Manifest{
		Schema: protocol.SchemaVersion, App: s.App, Version: s.Version, Sequence: s.Sequence,
		Created: s.Created, Profile: s.Profile,
		Target: protocol.Target{GOOS: "linux", GOARCH: s.Target.GOARCH, GOARM: s.Target.GOARM, GOAMD64: s.Target.GOAMD64,
			ELF: *id},
		Build:      protocol.Build{GoVersion: runtime.Version()},
		Executable: protocol.Executable{Size: int64(len(exe)), SHA256: hex.EncodeToString(sum[:])},
		Expires:    s.Expires, MinFreeStorage: s.MinFree,
	}
	if s.Target.GOARCH == "amd64" && m.Target.GOAMD64 == "" {
		m.Target.GOAMD64 = "v1"
	}
	if !s.NoProbe {
		m.Probe = s.Probe
		if m.Probe == nil {
			m.Probe = &protocol.Probe{Args: []string{"--version"}, Expect: s.Version, Timeout: protocol.Duration(30 * time.Second)}
		}
	}
	payload, p := encode(t, exe, s.Encoding, s.ChunkSize)
	m.Payload = p
	if s.XZDict != 0 {
		m.Payload.XZDictSize = s.XZDict
	}
	return m, payload
}

func elfOf(t testing.TB, s Spec, exe []byte) *protocol.ELF {
	t.Helper()
	f, err := elf.NewFile(bytes.NewReader(exe))
	if err != nil {
		t.Fatalf("testkit: the executable for %s %s (%q) is not ELF (%v); set Spec.ELF to sign other bytes", s.App, s.Version, s.Binary, err)
	}
	if want, ok := elfMachines[s.Target.GOARCH]; ok && f.Machine != want {
		t.Fatalf("testkit: the executable for %s %s (%q) is %s, not %s for GOARCH=%s; set Spec.ELF to declare a lie on purpose", s.App, s.Version, s.Binary, f.Machine, want, s.Target.GOARCH)
	}
	id := &protocol.ELF{Class: 32, Machine: f.Machine.String(), Endian: "little"}
	if f.Class == elf.ELFCLASS64 {
		id.Class = 64
	}
	if f.Data == elf.ELFDATA2MSB {
		id.Endian = "big"
	}
	return id
}

type encoded struct {
	bytes []byte
	p     protocol.Payload
}

var encodeCache sync.Map // sha256(exe)|encoding|chunk size → encoded

func encode(t testing.TB, exe []byte, encoding string, chunk int64) ([]byte, protocol.Payload) {
	t.Helper()
	sum := sha256.Sum256(exe)
	key := fmt.Sprintf("%x|%s|%d", sum, encoding, chunk)
	if v, ok := encodeCache.Load(key); ok {
		e := v.(encoded)
		return e.bytes, e.p
	}
	payload := exe
	var dict int64
	if encoding == protocol.EncodingXZ {
		var buf bytes.Buffer
		w, err := xz.WriterConfig{DictCap: 1 << 20}.NewWriter(&buf)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(exe); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		payload, dict = buf.Bytes(), 1<<20
	}
	p, err := protocol.DescribePayload(bytes.NewReader(payload), encoding, chunk)
	if err != nil {
		t.Fatal(err)
	}
	p.XZDictSize = dict
	encodeCache.Store(key, encoded{payload, p})
	return payload, p
}

// Sign signs m with priv (protocol.SignManifest, which validates it) and
// returns the bundle of m and payload (protocol.WriteBundle, entries dated
// m.Created).
func Sign(t testing.TB, m *protocol.Manifest, payload []byte, priv protocol.PrivateKey) []byte {
	t.Helper()
	return signKeySet(t, m, payload, priv, nil)
}

// signKeySet is Sign with an optional keyset.json entry.
func signKeySet(t testing.TB, m *protocol.Manifest, payload []byte, priv protocol.PrivateKey, keyset []byte) []byte {
	t.Helper()
	raw, sig, err := protocol.SignManifest(m, priv)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := protocol.WriteBundleKeySet(&out, keyset, raw, sig, bytes.NewReader(payload), int64(len(payload)), m.Created); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// Bundle is the signed bundle for s (see Manifest and Sign).
func Bundle(t testing.TB, s Spec, priv protocol.PrivateKey) []byte {
	t.Helper()
	m, payload := Manifest(t, s)
	return signKeySet(t, m, payload, priv, s.KeySet)
}

// BundleFile writes Bundle(s) to a new file in dir, named
// <app>_<version>_<sequence>_<profile>_<goarch><goarm><goamd64>.efb (with
// -2, -3 … before .efb when that name is taken), and returns its path.
func BundleFile(t testing.TB, dir string, s Spec, priv protocol.PrivateKey) string {
	t.Helper()
	m, payload := Manifest(t, s)
	b := signKeySet(t, m, payload, priv, s.KeySet)
	name := fmt.Sprintf("%s_%s_%d_%s_%s%s%s", m.App, m.Version, m.Sequence, m.Profile, m.Target.GOARCH, m.Target.GOARM, m.Target.GOAMD64)
	return createUnique(t, dir, name, ".efb", b)
}

// createUnique writes b to the first free dir/base[-n]ext (mode 0644).
func createUnique(t testing.TB, dir, base, ext string, b []byte) string {
	t.Helper()
	for n := 1; ; n++ {
		p := filepath.Join(dir, base+ext)
		if n > 1 {
			p = filepath.Join(dir, fmt.Sprintf("%s-%d%s", base, n, ext))
		}
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if os.IsExist(err) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		_, err = f.Write(b)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
}
