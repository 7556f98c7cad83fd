package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

type strictInner struct {
	Size int64 `json:"size"`
}

type strictOuter struct {
	Schema int                    `json:"schema"`
	Name   string                 `json:"name,omitempty"`
	Inner  strictInner            `json:"inner"`
	List   []strictInner          `json:"list,omitempty"`
	Map    map[string]strictInner `json:"map,omitempty"`
	Any    any                    `json:"any,omitempty"`
}

// encoding/json lets the last of two equal keys win and matches keys to
// fields ignoring case (also "ſ" for "s" and the Kelvin sign for "k"), so
// one byte string means different things to different readers. The strict
// decoder refuses both, at every level.
func TestStrictUnmarshal(t *testing.T) {
	good := `{"schema":1,"name":"a","inner":{"size":2},"list":[{"size":3}],"map":{"x":{"size":4},"X":{"size":5}},"any":{"k":[1,{"a":1}]}}`
	var v strictOuter
	if err := StrictUnmarshal([]byte(good), &v); err != nil {
		t.Fatalf("good: %v", err)
	}
	if v.Inner.Size != 2 || v.List[0].Size != 3 || v.Map["X"].Size != 5 {
		t.Fatalf("good decoded as %+v", v)
	}
	cases := []struct{ name, json, msg string }{
		{"duplicate top", `{"schema":1,"schema":2}`, `key "schema" appears twice`},
		{"duplicate nested", `{"schema":1,"inner":{"size":1,"size":2}}`, `key "inner"."size" appears twice`},
		{"duplicate in list", `{"schema":1,"list":[{"size":1},{"size":1,"size":2}]}`, `"list"[1]."size" appears twice`},
		{"duplicate map key", `{"schema":1,"map":{"x":{"size":1},"x":{"size":2}}}`, `"map"."x" appears twice`},
		{"duplicate in any", `{"schema":1,"any":{"a":1,"a":2}}`, `"any"."a" appears twice`},
		{"case variant", `{"schema":1,"Schema":2}`, `key "Schema" differs only in case from the field "schema"`},
		{"case variant alone", `{"SCHEMA":1}`, `differs only in case`},
		{"case variant nested", `{"schema":1,"inner":{"Size":1}}`, `"inner"."Size" differs only in case`},
		{"long s", `{"ſchema":1}`, `differs only in case`},
		{"non-ASCII unknown", `{"schema":1,"inner":{"size":1},"any":1,"name":"x","list":[],"map":{},"\u212Aey":1}`, `unknown key`},
		{"unknown", `{"schema":1,"surprise":1}`, `unknown key "surprise"`},
		{"unknown nested", `{"schema":1,"inner":{"size":1,"x":1}}`, `unknown key "inner"."x"`},
		{"trailing", `{"schema":1} {}`, `data after the JSON value`},
		{"broken", `{"schema":1,`, `not valid JSON`},
		{"deep", `{"schema":1,"any":` + strings.Repeat("[", 100) + strings.Repeat("]", 100) + `}`, `nested deeper`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var v strictOuter
			err := StrictUnmarshal([]byte(c.json), &v)
			if err == nil || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("%s: got %v, want an error containing %q", c.json, err, c.msg)
			}
		})
	}
	// Extensible records ignore unknown keys, never duplicates or case
	// variants.
	if err := StrictUnmarshalExtensible([]byte(`{"schema":1,"later":{"a":1}}`), &v); err != nil {
		t.Fatalf("extensible with an unknown key: %v", err)
	}
	for _, bad := range []string{`{"schema":1,"later":{"a":1,"a":2}}`, `{"schema":1,"Schema":1}`, `{"later":1,"later":2}`} {
		if err := StrictUnmarshalExtensible([]byte(bad), &v); err == nil {
			t.Errorf("extensible accepted %s", bad)
		}
	}
}

// The manifest, envelope and status parsers refuse duplicate and
// case-variant keys (SPEC.md §3): `"Sequence"` must not override
// `"sequence"`.
func TestParsersRefuseAmbiguousKeys(t *testing.T) {
	pub, _, _ := loadVectorKeys(t)
	b, err := OpenBundle(bytes.NewReader(goodVector(t)), NewKeyring(pub))
	if err != nil {
		t.Fatal(err)
	}
	raw := b.RawManifest
	for name, edit := range map[string][2]string{
		"duplicate sequence":     {`"sequence": 7,`, `"sequence": 7, "sequence": 9,`},
		"case-variant sequence":  {`"sequence": 7,`, `"sequence": 7, "Sequence": 9,`},
		"case-variant alone":     {`"sequence": 7,`, `"SEQUENCE": 7,`},
		"duplicate schema":       {`"schema": 1,`, `"schema": 1, "schema": 2,`},
		"case-variant schema":    {`"schema": 1,`, `"Schema": 1,`},
		"duplicate nested":       {`"chunk_size": 4096,`, `"chunk_size": 4096, "chunk_size": 8192,`},
		"case-variant nested":    {`"chunk_size": 4096,`, `"Chunk_Size": 4096,`},
		"duplicate probe expect": {`"expect": "1.0.0",`, `"expect": "1.0.0", "expect": "2.0.0",`},
	} {
		t.Run(name, func(t *testing.T) {
			m := bytes.Replace(raw, []byte(edit[0]), []byte(edit[1]), 1)
			if bytes.Equal(m, raw) {
				t.Fatalf("edit %q did not apply", edit[0])
			}
			_, err := ParseManifest(m)
			if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "key") {
				t.Fatalf("got %v, want ErrMalformed naming the key", err)
			}
		})
	}

	env, sig, _ := mqttTestRelease(t)
	good, err := MarshalEnvelope(env, sig)
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{
		"duplicate schema":   bytes.Replace(good, []byte(`"schema":1`), []byte(`"schema":1,"schema":1`), 1),
		"case-variant field": bytes.Replace(good, []byte(`"signature"`), []byte(`"Signature"`), 1),
		"duplicate manifest": bytes.Replace(good, []byte(`"signature"`), []byte(`"manifest":"e30=","signature"`), 1),
	} {
		if _, err := ParseEnvelope(b); !errors.Is(err, ErrMalformed) {
			t.Errorf("envelope %s: got %v, want ErrMalformed", name, err)
		}
	}

	st, _ := testStatus().Marshal()
	for name, b := range map[string][]byte{
		"duplicate online":   bytes.Replace(st, []byte(`"online":true`), []byte(`"online":true,"online":false`), 1),
		"case-variant state": bytes.Replace(st, []byte(`"state":"committed"`), []byte(`"State":"committed"`), 1),
		"duplicate version":  bytes.Replace(st, []byte(`"version":"1.0.0"`), []byte(`"version":"1.0.0","version":"9.9.9"`), 1),
		"case-variant done":  bytes.Replace(st, []byte(`"done":3`), []byte(`"Done":3`), 1),
	} {
		if bytes.Equal(b, st) {
			t.Fatalf("status edit %s did not apply", name)
		}
		if _, err := ParseStatus(b); !errors.Is(err, ErrMalformed) {
			t.Errorf("status %s: got %v, want ErrMalformed", name, err)
		}
	}
}

// Every string field of a manifest has a documented maximum (SPEC.md §3);
// a 129-byte semantic version is refused with a sentence that says what
// to do.
func TestManifestStringLimits(t *testing.T) {
	raw, _, _ := mqttTestRelease(t)
	base, err := ParseManifest(raw)
	if err != nil {
		t.Fatal(err)
	}
	long := "1.0.0-" + strings.Repeat("a", MaxVersionLen-6)
	if !ValidVersion(long) || ValidVersion(long+"a") {
		t.Fatalf("ValidVersion must accept %d bytes and refuse %d", MaxVersionLen, MaxVersionLen+1)
	}
	for name, edit := range map[string]func(m *Manifest){
		"version":      func(m *Manifest) { m.Version = long + "a" },
		"goarm":        func(m *Manifest) { m.Target.GOARM = strings.Repeat("7", 17) },
		"module":       func(m *Manifest) { m.Build.Module = strings.Repeat("m", MaxStringLen+1) },
		"go_version":   func(m *Manifest) { m.Build.GoVersion = strings.Repeat("g", MaxStringLen+1) },
		"vcs_revision": func(m *Manifest) { m.Build.Revision = strings.Repeat("f", MaxStringLen+1) },
		"elf machine":  func(m *Manifest) { m.Target.ELF.Machine = strings.Repeat("E", 33) },
	} {
		m := *base
		edit(&m)
		if err := m.Validate(); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s over its limit: %v, want ErrMalformed", name, err)
		}
	}
	m := *base
	m.Version = long + "a"
	err = m.Validate()
	if err == nil || !strings.Contains(err.Error(), "129 bytes, more than the 128") || !strings.Contains(err.Error(), "use a shorter version") {
		t.Fatalf("too long version: %v", err)
	}
	m.Version = long
	if err := m.Validate(); err != nil {
		t.Fatalf("a %d-byte version: %v", MaxVersionLen, err)
	}
}

// Invisible and line-breaking characters never reach an operator's
// terminal from a device status (SPEC.md §8.4), and the text never grows.
func TestStatusNeutralisesInvisibleCharacters(t *testing.T) {
	hostile := "1.0.0\u200b|\u2028|\u2029|\ufeff|\u2060|\u00ad|\u0085|\u00a0|\u3000|\u202e|\ufe0f|\u115f|\U000E0041|\x1b[2J|\xff|\ufffd|ok"
	s := testStatus()
	s.Apps[0].LastError = hostile
	s.Apps[0].Version = "1.0.0\u200b"
	s.CPU = "arm\u2028vfp"
	raw, err := json.Marshal(s) // as a hostile device would send it
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseStatus(raw)
	if err != nil {
		t.Fatal(err)
	}
	want := "1.0.0?| | |?|?|?| | | |?|?|?|?|?[2J|?|?|ok"
	if got.Apps[0].LastError != want {
		t.Fatalf("last_error neutralised as\n%q, want\n%q", got.Apps[0].LastError, want)
	}
	if got.Apps[0].Version != "1.0.0?" || got.CPU != "arm vfp" {
		t.Fatalf("version %q, cpu %q", got.Apps[0].Version, got.CPU)
	}
	// The device side too: what it publishes is already clean, valid
	// UTF-8, and a last_error cut at the limit is cut on a character.
	s = testStatus()
	s.Apps[0].LastError = strings.Repeat("é", MaxLastError) + "\u200b"
	b, err := s.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if !utf8.Valid(b) || bytes.Contains(b, []byte(`\ufffd`)) || bytes.Contains(b, []byte("\ufffd")) {
		t.Fatalf("published status has a broken character: %s", b[len(b)-80:])
	}
	got, err = ParseStatus(b)
	if err != nil {
		t.Fatalf("the device's own status does not parse: %v", err)
	}
	if n := len(got.Apps[0].LastError); n > MaxLastError || n < MaxLastError-4 {
		t.Fatalf("last_error is %d bytes", n)
	}
	for _, r := range "\u200b\u2028\u2029\ufeff\u2066\u061c\u180e" {
		if c := CleanText(string(r)); c == string(r) || len(c) > len(string(r)) {
			t.Errorf("CleanText(%U) = %q", r, c)
		}
	}
}

// Progress never reads as below 0 or above 100%: done is clamped into
// 0..total when a device publishes and when a reader parses.
func TestStatusProgressClamped(t *testing.T) {
	for _, c := range []struct{ done, total, wantDone, wantTotal int64 }{
		{20, 10, 10, 10},
		{-5, 10, 0, 10},
		{5, -10, 0, 0},
		{1 << 62, 1 << 61, 1 << 61, 1 << 61},
		{3, 10, 3, 10},
	} {
		s := testStatus()
		s.Apps[0].Progress = &ProgressReport{Step: "download", Done: c.done, Total: c.total}
		raw, _ := json.Marshal(s)
		got, err := ParseStatus(raw)
		if err != nil {
			t.Fatalf("done %d total %d: %v", c.done, c.total, err)
		}
		if p := got.Apps[0].Progress; p.Done != c.wantDone || p.Total != c.wantTotal {
			t.Errorf("done %d total %d parsed as %d/%d, want %d/%d", c.done, c.total, p.Done, p.Total, c.wantDone, c.wantTotal)
		}
		b, err := s.Marshal()
		if err != nil {
			t.Fatalf("marshal done %d total %d: %v", c.done, c.total, err)
		}
		var back DeviceStatus
		json.Unmarshal(b, &back)
		if p := back.Apps[0].Progress; p.Done != c.wantDone || p.Total != c.wantTotal {
			t.Errorf("done %d total %d published as %d/%d", c.done, c.total, p.Done, p.Total)
		}
	}
}

// FuzzStrictUnmarshal checks the strict decoder against an independent
// reading: whatever it accepts has no key twice in the top-level object,
// and only exact field names at the levels the type describes.
func FuzzStrictUnmarshal(f *testing.F) {
	for _, s := range []string{
		`{"schema":1,"inner":{"size":2},"list":[{"size":3}],"map":{"x":{"size":4}}}`,
		`{"schema":1,"schema":2}`,
		`{"schema":1,"Schema":2}`,
		`{"ſchema":1}`,
		`{"schema":1,"inner":{"size":1,"Size":2}}`,
		`{"schema":1,"any":{"a":1,"a":2}}`,
		`{"schema":1,"map":{"x":{"size":1},"x":{}}}`,
	} {
		f.Add([]byte(s))
	}
	fields := map[string]bool{"schema": true, "name": true, "inner": true, "list": true, "map": true, "any": true}
	f.Fuzz(func(t *testing.T, b []byte) {
		var v strictOuter
		if StrictUnmarshal(b, &v) != nil {
			return
		}
		var top map[string]json.RawMessage
		if err := json.Unmarshal(b, &top); err != nil {
			if bytes.HasPrefix(bytes.TrimSpace(b), []byte("null")) {
				return
			}
			t.Fatalf("accepted %q that is not an object: %v", b, err)
		}
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.Token()
		keys := 0
		for dec.More() {
			k, _ := dec.Token()
			if !fields[k.(string)] {
				t.Fatalf("accepted key %q, not a field name", k)
			}
			keys++
			var skip json.RawMessage
			dec.Decode(&skip)
		}
		if keys != len(top) {
			t.Fatalf("accepted %q with a key twice (%d keys, %d distinct)", b, keys, len(top))
		}
		if in, ok := top["inner"]; ok {
			var m map[string]json.RawMessage
			if json.Unmarshal(in, &m) == nil {
				for k := range m {
					if k != "size" {
						t.Fatalf("accepted inner key %q", k)
					}
				}
			}
		}
	})
}
