package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"
)

// mqttTestRelease signs a small unencoded release with a fresh key.
func mqttTestRelease(t testing.TB) (raw, sig []byte, kr *Keyring) {
	t.Helper()
	pub, priv, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	exe := bytes.Repeat([]byte("edgefleet"), 1000)
	p, err := DescribePayload(bytes.NewReader(exe), EncodingNone, MinChunkSize)
	if err != nil {
		t.Fatal(err)
	}
	m := &Manifest{
		Schema: SchemaVersion, App: "hello", Version: "1.0.0", Sequence: 1,
		Created: time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC), Profile: "linux-amd64",
		Target:     Target{GOOS: "linux", GOARCH: "amd64", GOAMD64: "v1", ELF: ELF{Class: 64, Machine: "EM_X86_64", Endian: "little"}},
		Payload:    p,
		Executable: Executable{Size: p.Size, SHA256: p.SHA256},
	}
	raw, sig, err = SignManifest(m, priv)
	if err != nil {
		t.Fatal(err)
	}
	return raw, sig, NewKeyring(pub)
}

func TestTopicsRoundTrip(t *testing.T) {
	sha := strings.Repeat("ab", 32)
	rel, err := ReleaseTopic("stable", "hello", "linux-armv6")
	if err != nil || rel != "edgefleet/v1/release/stable/hello/linux-armv6/manifest" {
		t.Fatalf("ReleaseTopic = %q, %v", rel, err)
	}
	ch, err := ChunkTopic("hello", sha, 12)
	if err != nil || ch != "edgefleet/v1/chunks/hello/"+sha+"/12" {
		t.Fatalf("ChunkTopic = %q, %v", ch, err)
	}
	des, err := DesiredTopic("pi-017", "hello")
	if err != nil || des != "edgefleet/v1/device/pi-017/desired/hello" {
		t.Fatalf("DesiredTopic = %q, %v", des, err)
	}
	st, err := StatusTopic("pi-017")
	if err != nil || st != "edgefleet/v1/device/pi-017/status" {
		t.Fatalf("StatusTopic = %q, %v", st, err)
	}
	for _, s := range []string{rel, ch, des, st} {
		tp, err := ParseTopic(s)
		if err != nil {
			t.Fatalf("ParseTopic(%q): %v", s, err)
		}
		if tp.String() != s {
			t.Errorf("ParseTopic(%q).String() = %q", s, tp.String())
		}
	}
	f, err := ChunksFilter("hello", sha)
	if err != nil || f != "edgefleet/v1/chunks/hello/"+sha+"/+" {
		t.Fatalf("ChunksFilter = %q, %v", f, err)
	}
}

func TestTopicBuildersRejectWildcards(t *testing.T) {
	for _, bad := range []string{"", "a/b", "a+", "#", "+", "a#b", "$SYS", "x\x00y", strings.Repeat("a", 65)} {
		if _, err := ReleaseTopic(bad, "hello", "p"); !errors.Is(err, ErrMalformed) {
			t.Errorf("ReleaseTopic channel %q: err %v", bad, err)
		}
		if _, err := ReleaseTopic("stable", bad, "p"); !errors.Is(err, ErrMalformed) {
			t.Errorf("ReleaseTopic app %q: err %v", bad, err)
		}
		if _, err := ReleaseTopic("stable", "hello", bad); !errors.Is(err, ErrMalformed) {
			t.Errorf("ReleaseTopic profile %q: err %v", bad, err)
		}
		if _, err := DesiredTopic(bad, "hello"); !errors.Is(err, ErrMalformed) {
			t.Errorf("DesiredTopic device %q: err %v", bad, err)
		}
		if _, err := StatusTopic(bad); !errors.Is(err, ErrMalformed) {
			t.Errorf("StatusTopic %q: err %v", bad, err)
		}
		if _, err := ChunkTopic("hello", bad, 0); !errors.Is(err, ErrMalformed) {
			t.Errorf("ChunkTopic sha %q: err %v", bad, err)
		}
	}
	if _, err := ChunkTopic("hello", strings.Repeat("ab", 32), -1); !errors.Is(err, ErrMalformed) {
		t.Errorf("negative chunk index accepted: %v", err)
	}
	for _, bad := range []string{
		"edgefleet/v2/device/a/status", "edgefleet/v1/device/+/status", "edgefleet/v1/device/a/status/x",
		"edgefleet/v1/chunks/hello/" + strings.Repeat("ab", 32) + "/01", "edgefleet/v1/chunks/hello/" + strings.Repeat("ab", 32) + "/-1",
		"edgefleet/v1/release/stable/hello/p/other", "edgefleet/v1/", "",
	} {
		if _, err := ParseTopic(bad); !errors.Is(err, ErrMalformed) {
			t.Errorf("ParseTopic(%q): err %v, want ErrMalformed", bad, err)
		}
	}
}

func TestEnvelopeVerifiesRawBytes(t *testing.T) {
	raw, sig, kr := mqttTestRelease(t)
	b, err := MarshalEnvelope(raw, sig)
	if err != nil {
		t.Fatal(err)
	}
	e, err := ParseEnvelope(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(e.Manifest, raw) {
		t.Fatal("envelope changed the manifest bytes")
	}
	m, err := e.Open(kr)
	if err != nil {
		t.Fatal(err)
	}
	if m.App != "hello" || m.Sequence != 1 {
		t.Fatalf("opened %v", m)
	}
	// A re-serialised manifest (same content, different bytes) must not verify.
	e2 := *e
	e2.Manifest = bytes.Replace(raw, []byte("  "), []byte(" "), -1)
	if _, err := e2.Open(kr); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("re-serialised manifest: err %v, want ErrBadSignature", err)
	}
	// Another key.
	_, _, other := mqttTestRelease(t)
	if _, err := e.Open(other); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("untrusted key: err %v, want ErrUnknownKey", err)
	}
}

func TestEnvelopeStrict(t *testing.T) {
	raw, sig, _ := mqttTestRelease(t)
	good, _ := MarshalEnvelope(raw, sig)
	var generic map[string]any
	json.Unmarshal(good, &generic)
	with := func(k string, v any) []byte {
		m := map[string]any{}
		for kk, vv := range generic {
			m[kk] = vv
		}
		if v == nil {
			delete(m, k)
		} else {
			m[k] = v
		}
		b, _ := json.Marshal(m)
		return b
	}
	cases := map[string]struct {
		b    []byte
		want error
	}{
		"empty":          {nil, ErrMalformed},
		"not json":       {[]byte("hello"), ErrMalformed},
		"no schema":      {with("schema", nil), ErrMalformed},
		"future schema":  {with("schema", 2), ErrSchema},
		"unknown field":  {with("extra", 1), ErrMalformed},
		"no manifest":    {with("manifest", nil), ErrMalformed},
		"no signature":   {with("signature", nil), ErrMalformed},
		"bad base64":     {with("manifest", "!!!"), ErrMalformed},
		"trailing":       {append(append([]byte{}, good...), []byte(" {}")...), ErrMalformed},
		"too large":      {bytes.Repeat([]byte(" "), MaxEnvelopeSize+1), ErrTooLarge},
		"array":          {[]byte("[]"), ErrMalformed},
		"schema string":  {with("schema", "1"), ErrMalformed},
		"signature long": {with("signature", strings.Repeat("x", MaxSignatureSize+1)), ErrMalformed},
	}
	for name, c := range cases {
		if _, err := ParseEnvelope(c.b); !errors.Is(err, c.want) {
			t.Errorf("%s: err %v, want %v", name, err, c.want)
		}
	}
	if _, err := MarshalEnvelope([]byte("{}"), sig); err == nil {
		t.Error("MarshalEnvelope accepted a non-manifest")
	}
}

func testStatus() *DeviceStatus {
	return &DeviceStatus{
		Schema: MQTTSchemaVersion, Device: "pi-017", Profile: "linux-armv6", CPU: "arm vfp", AgentVersion: "0.1.0",
		Time: time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC), Online: true,
		Apps: []AppReport{{App: "hello", Version: "1.0.0", Sequence: 1, State: "committed", Target: "1.1.0",
			Progress: &ProgressReport{Step: "download", Done: 3, Total: 10}}},
	}
}

func TestStatusRoundTrip(t *testing.T) {
	s := testStatus()
	s.Apps[0].LastError = strings.Repeat("e", 5000)
	b, err := s.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseStatus(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.Device != "pi-017" || got.Apps[0].Progress.Done != 3 || len(got.Apps[0].LastError) != MaxLastError {
		t.Fatalf("round trip: %+v", got)
	}
}

func TestStatusStrict(t *testing.T) {
	good, _ := testStatus().Marshal()
	cases := map[string][]byte{
		"empty":         nil,
		"unknown field": bytes.Replace(good, []byte(`"online"`), []byte(`"x":1,"online"`), 1),
		"bad device":    bytes.Replace(good, []byte(`"pi-017"`), []byte(`"pi/017"`), 1),
		"bad app":       bytes.Replace(good, []byte(`"app":"hello"`), []byte(`"app":"#"`), 1),
		"duplicate key": bytes.Replace(good, []byte(`"online"`), []byte(`"online":false,"online"`), 1),
		"case variant":  bytes.Replace(good, []byte(`"online"`), []byte(`"Online"`), 1),
		"future schema": bytes.Replace(good, []byte(`"schema":1`), []byte(`"schema":9`), 1),
		"too large":     bytes.Repeat([]byte(" "), MaxStatusSize+1),
		"trailing":      append(append([]byte{}, good...), 'x'),
	}
	for name, b := range cases {
		if _, err := ParseStatus(b); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	s := testStatus()
	for i := 0; i <= MaxStatusApps; i++ {
		s.Apps = append(s.Apps, AppReport{App: "a"})
	}
	if _, err := s.Marshal(); !errors.Is(err, ErrMalformed) {
		t.Errorf("too many apps: %v", err)
	}
}

func FuzzParseEnvelope(f *testing.F) {
	raw, sig, kr := mqttTestRelease(f)
	good, _ := MarshalEnvelope(raw, sig)
	f.Add(good)
	f.Add([]byte(`{"schema":1,"manifest":"e30=","signature":"x"}`))
	f.Add([]byte(`{"schema":2}`))
	f.Add([]byte{})
	f.Add(bytes.Replace(good, []byte(`"schema":1`), []byte(`"schema":1,"schema":1`), 1))
	f.Add(bytes.Replace(good, []byte(`"signature"`), []byte(`"Signature"`), 1))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := ParseEnvelope(b)
		if err != nil {
			if e != nil {
				t.Fatal("error with a value")
			}
			return
		}
		m, err := e.Open(kr)
		if err == nil && m == nil {
			t.Fatal("nil manifest without error")
		}
		if err == nil && !bytes.Equal(e.Manifest, raw) {
			t.Fatalf("a different manifest verified")
		}
	})
}

func FuzzParseStatus(f *testing.F) {
	good, _ := testStatus().Marshal()
	f.Add(good)
	f.Add([]byte(`{"schema":1,"device":"a","time":"2026-01-01T00:00:00Z","online":false,"apps":null}`))
	f.Add([]byte(`{"schema":1,"apps":[{"progress":{}}]}`))
	f.Add(bytes.Replace(good, []byte(`"online":true`), []byte(`"online":true,"Online":false`), 1))
	f.Add(bytes.Replace(good, []byte(`"done":3`), []byte(`"done":30,"done":-3`), 1))
	f.Add([]byte("{\"schema\":1,\"device\":\"a\",\"time\":\"2026-01-01T00:00:00Z\",\"online\":true,\"apps\":[{\"app\":\"a\",\"last_error\":\"x\u2028\u200b\ufeff\\u2029\"}]}"))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseStatus(b)
		if err != nil {
			return
		}
		// Whatever parses must re-encode within limits, with progress
		// in range and nothing a terminal would interpret.
		if _, err := s.Marshal(); err != nil {
			t.Fatalf("parsed status does not re-marshal: %v", err)
		}
		for _, a := range s.Apps {
			if p := a.Progress; p != nil && (p.Done < 0 || p.Done > p.Total) {
				t.Fatalf("progress %d/%d", p.Done, p.Total)
			}
			for _, txt := range []string{a.Version, a.State, a.Target, a.LastError} {
				if CleanText(txt) != txt {
					t.Fatalf("free text %q is not neutralised", txt)
				}
			}
		}
	})
}

func FuzzParseTopic(f *testing.F) {
	for _, s := range []string{
		"edgefleet/v1/release/stable/hello/linux-armv6/manifest",
		"edgefleet/v1/chunks/hello/" + strings.Repeat("ab", 32) + "/7",
		"edgefleet/v1/device/pi-1/desired/hello",
		"edgefleet/v1/device/pi-1/status",
		"edgefleet/v1/device/+/status",
		"edgefleet/v1/delta/hello/" + strings.Repeat("ab", 32) + "/" + strings.Repeat("cd", 32),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tp, err := ParseTopic(s)
		if err != nil {
			return
		}
		if tp.String() != s {
			t.Fatalf("ParseTopic(%q) rebuilds as %q", s, tp.String())
		}
		if strings.ContainsAny(s, "+#\x00") {
			t.Fatalf("wildcard topic %q parsed", s)
		}
	})
}

func TestEnvelopeMirrors(t *testing.T) {
	raw, sig, _ := mqttTestRelease(t)
	good := []string{"https://cdn.example.com/edgefleet", "http://10.0.0.1:8080/"}
	b, err := MarshalEnvelopeMirrors(raw, sig, good)
	if err != nil {
		t.Fatal(err)
	}
	e, err := ParseEnvelope(b)
	if err != nil || len(e.Mirrors) != 2 || e.Mirrors[0] != good[0] {
		t.Fatalf("round trip: %v %+v", err, e)
	}
	if u := MirrorChunkURL(good[1], "app", "ab", 3); u != "http://10.0.0.1:8080/chunks/app/ab/3" {
		t.Errorf("chunk URL %s", u)
	}
	nine := make([]string, 9)
	for i := range nine {
		nine[i] = fmt.Sprintf("https://m%d.example.com", i)
	}
	for _, bad := range [][]string{
		{"ftp://x.example.com"}, {"file:///tmp"}, {"https://"}, {"https://u:p@x.example.com"},
		{"https://x.example.com/?a=1"}, {"https://x.example.com/#f"}, {"https://x.example.com/a b"},
		{"https://x.example.com/\n"}, {"/relative"}, {""}, {"https://" + strings.Repeat("a", MaxMirrorURL)},
		{"https://x.example.com", "https://x.example.com"}, nine, {"mailto:a@b"}, {"https://x.example.com/é"},
	} {
		if _, err := MarshalEnvelopeMirrors(raw, sig, bad); !errors.Is(err, ErrMalformed) {
			t.Errorf("%q: want ErrMalformed, got %v", bad, err)
		}
		env, _ := json.Marshal(Envelope{Schema: 1, Manifest: raw, Signature: string(sig), Mirrors: bad})
		if _, err := ParseEnvelope(env); !errors.Is(err, ErrMalformed) {
			t.Errorf("parse %q: want ErrMalformed, got %v", bad, err)
		}
	}
}

func FuzzCheckMirrors(f *testing.F) {
	f.Add("https://cdn.example.com/edgefleet")
	f.Add("http://127.0.0.1:8080/")
	f.Add("https://u@x/")
	f.Add("javascript:alert(1)")
	f.Fuzz(func(t *testing.T, s string) {
		if CheckMirrors([]string{s}) != nil {
			return
		}
		u, err := url.Parse(MirrorChunkURL(s, "app", "00", 1))
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.RawQuery != "" {
			t.Fatalf("accepted %q gives chunk URL %v (%v)", s, u, err)
		}
	})
}
