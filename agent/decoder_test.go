package agent

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/edgefleet/edgefleet/hardware"
	"github.com/edgefleet/edgefleet/protocol"
)

const mib = 1 << 20

func TestDefaultDecoderLimit(t *testing.T) {
	for _, tc := range []struct {
		name      string
		available int64
		err       error
		want      int64
	}{
		{"256MiB board, 180MiB available", 180 * mib, nil, 45 * mib},
		{"64MiB router, 20MiB available", 20 * mib, nil, 5 * mib},
		{"almost out of memory", 2 * mib, nil, 1 * mib},
		{"8GiB gateway", 6 << 30, nil, 64 * mib},
		{"unknown memory", 0, errors.New("no /proc/meminfo"), 64 * mib},
	} {
		got, why := defaultDecoderLimit(hardware.MemoryFacts{Total: tc.available * 2, Available: tc.available}, tc.err)
		if got != tc.want {
			t.Errorf("%s: limit %s, want %s (%s)", tc.name, hardware.Size(got), hardware.Size(tc.want), why)
		}
		if why == "" {
			t.Errorf("%s: no explanation", tc.name)
		}
	}
}

// A release whose declared xz dictionary is above the device's limit is
// refused before staging (fatal, with the numbers and what to do); at or
// below it installs.
func TestDecoderMemoryRefused(t *testing.T) {
	k := newKit(t)
	k.cfg.Limits.MaxDecoderMemory = 4 * mib
	a := k.open(Options{})
	if lim, why := a.DecoderLimit(); lim != 4*mib || !strings.Contains(why, "limits.max_decoder_memory") {
		t.Fatalf("limit %d from %q", lim, why)
	}
	k.install(a, k.bundle(spec{Version: "1.0.0", Sequence: 1}))
	before := k.snap(a)
	big := k.bundle(spec{Version: "1.1.0", Sequence: 2, XZDict: 8 * mib})
	f, err := os.Open(big)
	if err != nil {
		t.Fatal(err)
	}
	_, err = a.Check(context.Background(), f)
	f.Close()
	if !errors.Is(err, ErrDecoderMemory) {
		t.Fatalf("check: %v, want ErrDecoderMemory", err)
	}
	var steps []string
	f, _ = os.Open(big)
	_, err = a.Install(context.Background(), f, func(p Progress) { steps = append(steps, p.Step) })
	f.Close()
	if !errors.Is(err, ErrDecoderMemory) || !Fatal(err) {
		t.Fatalf("install: %v, want a fatal ErrDecoderMemory", err)
	}
	for _, s := range []string{"8MiB", "4MiB", "xz_dict_size", "repack with a smaller xz_dict_size in the profile", "limits.max_decoder_memory"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("refusal does not say %q: %v", s, err)
		}
	}
	for _, s := range steps {
		if s == StepStage || s == StepStorage {
			t.Fatalf("refused after reaching step %s (steps %v)", s, steps)
		}
	}
	if _, err := os.Stat(k.cfg.Apps[0].stagedPath()); err == nil {
		t.Fatal("a staged file exists")
	}
	if after := k.snap(a); after != before {
		t.Fatalf("the refusal changed the device: %+v → %+v", before, after)
	}
	t.Logf("refusal: %v", err)
	// Exactly at the limit: accepted.
	if err := a.Commit("hello"); err != nil {
		t.Fatal(err)
	}
	k.install(a, k.bundle(spec{Version: "1.1.0", Sequence: 3, XZDict: 4 * mib}))
}

// The built-in profiles' dictionaries (1MiB on 32-bit boards, 4MiB on
// 64-bit) pass the default limit of a small board, and real bundles with
// them install under this machine's default.
func TestDefaultProfilesFitDecoderLimit(t *testing.T) {
	k := newKit(t)
	// A 256MiB board with 64MiB available: 16MiB limit.
	small := k.open(Options{Memory: func() (hardware.MemoryFacts, error) {
		return hardware.MemoryFacts{Total: 256 * mib, Available: 64 * mib}, nil
	}})
	if lim, _ := small.DecoderLimit(); lim != 16*mib {
		t.Fatalf("default limit on a 256MiB board with 64MiB available: %s", hardware.Size(lim))
	}
	for _, p := range hardware.Profiles() {
		m := &protocol.Manifest{App: "hello", Version: "1.0.0", Payload: protocol.Payload{Encoding: protocol.EncodingXZ, XZDictSize: int64(p.XZDictSize)}}
		if err := small.checkDecoderMemory(m); err != nil {
			t.Errorf("profile %s (%s dictionary): %v", p.Name, p.XZDictSize, err)
		}
	}
	small.Close()

	a := k.open(Options{})
	lim, why := a.DecoderLimit()
	t.Logf("this machine's default decoder limit: %s (%s)", hardware.Size(lim), why)
	k.install(a, k.bundle(spec{Version: "1.0.0", Sequence: 1, XZDict: 1 * mib}))
	a.Commit("hello")
	k.install(a, k.bundle(spec{Version: "1.1.0", Sequence: 2, XZDict: 4 * mib}))
}

func TestDecoderLimitConfig(t *testing.T) {
	base := "device_id: d\ndata_dir: /var/lib/edgefleet\ntrusted_keys: [/k.pub]\n"
	cfg, err := ParseConfig([]byte(base + "limits:\n  max_decoder_memory: 16MiB\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Limits.MaxDecoderMemory != 16*mib {
		t.Fatalf("max_decoder_memory %d", cfg.Limits.MaxDecoderMemory)
	}
	for name, y := range map[string]string{
		"unknown key under limits": "limits:\n  max_decoder: 16MiB\n",
		"not a size":               "limits:\n  max_decoder_memory: lots\n",
		"below 4KiB":               "limits:\n  max_decoder_memory: 1KiB\n",
		"top-level typo":           "max_decoder_memory: 16MiB\n",
	} {
		if _, err := ParseConfig([]byte(base + y)); !errors.Is(err, ErrConfig) {
			t.Errorf("%s: %v, want ErrConfig", name, err)
		}
	}
}

// Over MQTT the limit refuses a release before a chunk is fetched, and the
// reason reaches the device's retained status.
func TestMQTTDecoderMemoryRefusedBeforeFetch(t *testing.T) {
	k := newKit(t)
	rel := k.bundle(spec{Version: "1.0.0", Sequence: 1}) // 1MiB dictionary
	b := startTestBroker(t, t.TempDir(), "127.0.0.1:0")
	op := operator(t, b.URL())
	view := fleetView(t, op)
	publish(t, op, k, rel, "")
	cfg := mqttConfig(t, k, "tiny", b.URL())
	cfg.Limits.MaxDecoderMemory = 512 << 10
	dev := startMQTTDevice(t, cfg)
	defer dev.stop()
	eventually(t, "the refusal reaches the status", func() bool {
		for _, d := range view.Devices() {
			if d.Device == "tiny" && len(d.Apps) > 0 {
				return strings.Contains(d.Apps[0].LastError, "repack with a smaller xz_dict_size")
			}
		}
		return false
	})
	if got := dev.stats().ChunksReceived.Load(); got != 0 {
		t.Errorf("the device fetched %d chunks of a release it refuses", got)
	}
	if installedIs(dev, "1.0.0", StateTrial) || installedIs(dev, "1.0.0", StateCommitted) {
		t.Fatal("installed a release above the decoder limit")
	}
}
