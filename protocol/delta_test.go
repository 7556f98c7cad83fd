package protocol

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// deltaPair returns a full release manifest and a delta manifest for it.
func deltaPair(t testing.TB) (full, delta *Manifest) {
	t.Helper()
	raw, _, _ := mqttTestRelease(t)
	full, err := ParseManifest(raw)
	if err != nil {
		t.Fatal(err)
	}
	d := *full
	p, err := DescribePayload(bytes.NewReader([]byte("BSDIFF40 pretend patch")), EncodingNone, MinChunkSize)
	if err != nil {
		t.Fatal(err)
	}
	p.Encoding = EncodingBSDiff
	d.Payload = p
	d.Delta = &Delta{Format: DeltaFormatBSDiff40, BaseSize: 1234, BaseSHA256: strings.Repeat("ab", 32), BaseVersion: "0.9.0",
		FullPayloadSHA256: full.Payload.SHA256, ControlEntries: 7, MaxBzip2Level: 9}
	if err := d.Validate(); err != nil {
		t.Fatalf("good delta manifest: %v", err)
	}
	return full, &d
}

func TestDeltaManifest(t *testing.T) {
	full, good := deltaPair(t)
	raw, err := good.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if m, err := ParseManifest(raw); err != nil || !m.IsDelta() {
		t.Fatalf("delta manifest does not round-trip: %v", err)
	}
	if err := CheckDeltaFor(good, full); err != nil {
		t.Fatalf("CheckDeltaFor: %v", err)
	}
	cases := []struct {
		name string
		edit func(m *Manifest)
		want error
		msg  string
	}{
		{"bsdiff without delta", func(m *Manifest) { m.Delta = nil }, ErrMalformed, "without a delta record"},
		{"delta with xz", func(m *Manifest) { m.Payload.Encoding = EncodingXZ; m.Payload.XZDictSize = 1 << 20 }, ErrMalformed, "want bsdiff"},
		{"unknown format", func(m *Manifest) { m.Delta.Format = "courgette" }, ErrMalformed, "update the agent"},
		{"zero base", func(m *Manifest) { m.Delta.BaseSize = 0 }, ErrTooLarge, "base size"},
		{"huge base", func(m *Manifest) { m.Delta.BaseSize = 1 << 31 }, ErrTooLarge, "base size"},
		{"bad base hash", func(m *Manifest) { m.Delta.BaseSHA256 = "AB" }, ErrMalformed, "hex"},
		{"base is result", func(m *Manifest) { m.Delta.BaseSHA256 = m.Executable.SHA256 }, ErrMalformed, "to itself"},
		{"names itself", func(m *Manifest) { m.Delta.FullPayloadSHA256 = m.Payload.SHA256 }, ErrMalformed, "own payload"},
		{"negative entries", func(m *Manifest) { m.Delta.ControlEntries = -1 }, ErrTooLarge, "control entries"},
		{"too many entries", func(m *Manifest) { m.Delta.ControlEntries = MaxDeltaControlEntries + 1 }, ErrTooLarge, "control entries"},
		{"bzip2 level", func(m *Manifest) { m.Delta.MaxBzip2Level = 10 }, ErrMalformed, "max_bzip2_level"},
		{"upx", func(m *Manifest) { m.UPX = true }, ErrMalformed, "UPX"},
		{"bad base version", func(m *Manifest) { m.Delta.BaseVersion = "v1" }, ErrMalformed, "semantic version"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := *good
			d := *good.Delta
			m.Delta = &d
			c.edit(&m)
			err := m.Validate()
			if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("got %v, want %v saying %q", err, c.want, c.msg)
			}
		})
	}
	t.Run("full release with a delta record", func(t *testing.T) {
		m := *full
		m.Delta = good.Delta
		if err := m.Validate(); !errors.Is(err, ErrMalformed) {
			t.Fatalf("got %v", err)
		}
	})
}

// A delta stands in for exactly one release: any signed field other than
// the payload that differs (another version, sequence, probe, target) is
// refused, so a delta cannot smuggle in something the device did not choose.
func TestCheckDeltaFor(t *testing.T) {
	full, good := deltaPair(t)
	for name, edit := range map[string]func(m *Manifest){
		"version":      func(m *Manifest) { m.Version = "1.0.1" },
		"sequence":     func(m *Manifest) { m.Sequence++ },
		"executable":   func(m *Manifest) { m.Executable.SHA256 = strings.Repeat("cd", 32) },
		"probe":        func(m *Manifest) { m.Probe = &Probe{Args: []string{"--version"}, Timeout: Duration(1e9)} },
		"full payload": func(m *Manifest) { m.Delta.FullPayloadSHA256 = strings.Repeat("ef", 32) },
		"target":       func(m *Manifest) { m.Target.GOAMD64 = "v3" },
	} {
		t.Run(name, func(t *testing.T) {
			m := *good
			d := *good.Delta
			m.Delta = &d
			edit(&m)
			if err := CheckDeltaFor(&m, full); !errors.Is(err, ErrMalformed) {
				t.Fatalf("got %v, want ErrMalformed", err)
			}
		})
	}
	if err := CheckDeltaFor(full, full); err == nil {
		t.Fatal("a full manifest passed as a delta")
	}
}

func TestDeltaPayloadDoesNotDecodeAlone(t *testing.T) {
	_, d := deltaPair(t)
	if _, err := DecodePayload(bytes.NewReader(nil), d); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "only against that base") {
		t.Fatalf("got %v", err)
	}
}

func TestDeltaTopic(t *testing.T) {
	res, base := strings.Repeat("ab", 32), strings.Repeat("cd", 32)
	s, err := DeltaTopic("hello", res, base)
	if err != nil {
		t.Fatal(err)
	}
	if s != "edgefleet/v1/delta/hello/"+res+"/"+base {
		t.Fatalf("topic %s", s)
	}
	tp, err := ParseTopic(s)
	if err != nil || tp.Kind != KindDelta || tp.App != "hello" || tp.SHA256 != res || tp.Base != base {
		t.Fatalf("ParseTopic: %+v, %v", tp, err)
	}
	f, err := DeltasFilter("hello", res)
	if err != nil || f != "edgefleet/v1/delta/hello/"+res+"/+" {
		t.Fatalf("filter %q %v", f, err)
	}
	for _, bad := range []string{
		"edgefleet/v1/delta/hello/" + res,
		"edgefleet/v1/delta/hello/" + res + "/" + strings.ToUpper(base),
		"edgefleet/v1/delta/hello/" + res + "/+",
		"edgefleet/v1/delta/Hello/" + res + "/" + base,
	} {
		if _, err := ParseTopic(bad); err == nil {
			t.Errorf("%s parsed", bad)
		}
	}
	if _, err := DeltaTopic("hello", res, "x"); err == nil {
		t.Error("bad base accepted")
	}
}
