package agent

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/hardware"
	"github.com/edgefleet/edgefleet/internal/emutest"
	"github.com/edgefleet/edgefleet/protocol"
)

func armv7CPU() *hardware.CPUFacts {
	c := hardware.CPUFactsFromAuxv("arm", map[uint64]uint64{hardware.AT_HWCAP: hardware.HWCAP_ARM_VFP | hardware.HWCAP_ARM_VFPv3}, "v7l")
	return &c
}

// startMQTTDeviceWith is startMQTTDevice with agent options (an injected
// CPU).
func startMQTTDeviceWith(t testing.TB, cfg *Config, opts Options) *mqttDevice {
	t.Helper()
	logf := func(f string, a ...any) { t.Logf(cfg.DeviceID+": "+f, a...) }
	opts.Logf = logf
	a, err := Open(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	d, err := NewDaemon(cfg, a, DaemonOptions{Logf: logf, Version: "test", MinBackoff: 50 * time.Millisecond, StopGrace: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	dev := &mqttDevice{id: cfg.DeviceID, cfg: cfg, a: a, cancel: cancel, done: make(chan error, 1)}
	go func() { dev.done <- d.Run(ctx) }()
	return dev
}

// TestMQTTSaysWhyBehind: an ARMv6 device (injected CPU, the app running
// under binfmt's qemu-arm as an ARM1176) installs hello 1.0.0 published
// for linux-armv6; hello 2.0.0 is then published only for linux-armv7. The
// device keeps 1.0.0 and its retained status says why and what to
// publish, without fetching a chunk of 2.0.0; once a linux-armv6 build of
// 2.0.0 is published it installs it and the note goes away.
func TestMQTTSaysWhyBehind(t *testing.T) {
	emutest.RequireARM(t)
	t.Setenv("QEMU_CPU", "arm1176") // the supervised app and the probe run on an ARMv6 core
	k := newKit(t)
	v6 := target{GOARCH: "arm", GOARM: "6"}
	v7 := target{GOARCH: "arm", GOARM: "7"}
	one := k.bundle(spec{Version: "1.0.0", Sequence: 1, Target: v6, Profile: "linux-armv6"})
	twoV7 := k.bundle(spec{Version: "2.0.0", Sequence: 2, Target: v7, Profile: "linux-armv7"})
	b := startTestBroker(t, t.TempDir(), "127.0.0.1:0")
	op := operator(t, b.URL())
	view := fleetView(t, op)
	publish(t, op, k, one, "")
	dev := startMQTTDeviceWith(t, mqttConfig(t, k, "pi-zero", b.URL()), Options{CPU: armv6CPU()})
	defer dev.stop()
	eventually(t, "the ARMv6 device commits 1.0.0", func() bool { return installedIs(dev, "1.0.0", StateCommitted) })
	got1 := dev.stats().ChunksReceived.Load()

	publish(t, op, k, twoV7, "")
	lastErr := func() string {
		for _, d := range view.Devices() {
			if d.Device == "pi-zero" && len(d.Apps) > 0 {
				if d.Apps[0].LastError != "" {
					t.Errorf("being behind is not a failure, but last_error says %q", d.Apps[0].LastError)
				}
				return d.Apps[0].Note
			}
		}
		return ""
	}
	eventually(t, "the status says why the device stays on 1.0.0", func() bool {
		return strings.Contains(lastErr(), "2.0.0 (sequence 2) is published only for linux-armv7")
	})
	note := lastErr()
	t.Logf("status note: %s", note)
	for _, s := range []string{"1.0.0 (sequence 1, linux-armv6)", "ARMv6 with VFPv2", "GOARM=6 at most", "publish a linux-armv5 build", "it also runs linux-armv6"} {
		if !strings.Contains(note, s) {
			t.Errorf("note does not say %q: %s", s, note)
		}
	}
	if !installedIs(dev, "1.0.0", StateCommitted) {
		t.Fatal("the device left 1.0.0")
	}
	if got := dev.stats().ChunksReceived.Load(); got != got1 {
		t.Errorf("the device fetched %d chunks of a release it cannot run", got-got1)
	}

	// The operator follows the advice.
	publish(t, op, k, k.bundle(spec{Version: "2.0.0", Sequence: 2, Target: v6, Profile: "linux-armv6"}), "")
	eventually(t, "the ARMv6 device commits the linux-armv6 2.0.0", func() bool { return installedIs(dev, "2.0.0", StateCommitted) })
	eventually(t, "the note goes away", func() bool {
		for _, d := range view.Devices() {
			if d.Device == "pi-zero" && len(d.Apps) > 0 && d.Apps[0].Version == "2.0.0" {
				return d.Apps[0].LastError == "" && d.Apps[0].Note == ""
			}
		}
		return false
	})
}

// behindNote evaluates the transport's behindNote for hello whose channel
// holds rels (profile → manifest), on cpu, with the release the transport
// chooses.
func behindNote(t *testing.T, cpu *hardware.CPUFacts, cfgProfile string, rels map[string]protocol.Manifest) string {
	t.Helper()
	k := newKit(t)
	k.cfg.Profile = cfgProfile
	a := k.open(Options{CPU: cpu})
	tr := &mqttTransport{cfg: k.cfg}
	ap := &mqttApp{cfg: &k.cfg.Apps[0], channel: map[string]*mqttRelease{}, failed: map[string]string{}}
	for p, m := range rels {
		m := m
		ap.channel[p] = &mqttRelease{topic: "edgefleet/v1/release/stable/hello/" + p, m: &m}
	}
	rel, _ := tr.choose(a, ap)
	return tr.behindNote(a, ap, rel)
}

func armManifest(version string, seq uint64, goarm string) protocol.Manifest {
	return protocol.Manifest{App: "hello", Version: version, Sequence: seq,
		Target: protocol.Target{GOOS: "linux", GOARCH: "arm", GOARM: goarm, ELF: protocol.ELF{Class: 32, Machine: "EM_ARM", Endian: "little"}}}
}

func TestBehindNoteCases(t *testing.T) {
	t.Run("newest only for a CPU this one cannot run", func(t *testing.T) {
		n := behindNote(t, armv6CPU(), "", map[string]protocol.Manifest{
			"linux-armv6": armManifest("1.0.0", 1, "6"),
			"linux-armv7": armManifest("2.0.0", 2, "7"),
		})
		for _, s := range []string{"hello 2.0.0 (sequence 2) is published only for linux-armv7", "ARMv6 with VFPv2", "publish a linux-armv5 build"} {
			if !strings.Contains(n, s) {
				t.Errorf("note %q does not say %q", n, s)
			}
		}
	})
	t.Run("newest only for a less specific profile", func(t *testing.T) {
		n := behindNote(t, armv7CPU(), "", map[string]protocol.Manifest{
			"linux-armv7": armManifest("1.0.0", 1, "7"),
			"linux-armv6": armManifest("2.0.0", 2, "6"),
		})
		for _, s := range []string{"published only for linux-armv6, which this CPU runs", "linux-armv7", "retire the older linux-armv7 release"} {
			if !strings.Contains(n, s) {
				t.Errorf("note %q does not say %q", n, s)
			}
		}
	})
	t.Run("newest not for the configured profile", func(t *testing.T) {
		n := behindNote(t, armv7CPU(), "linux-armv6", map[string]protocol.Manifest{
			"linux-armv7": armManifest("2.0.0", 2, "7"),
		})
		for _, s := range []string{"published only for linux-armv7, not for linux-armv6, the profile in this device's config", "nothing is published for it", "change profile:"} {
			if !strings.Contains(n, s) {
				t.Errorf("note %q does not say %q", n, s)
			}
		}
	})
	t.Run("not behind", func(t *testing.T) {
		if n := behindNote(t, armv6CPU(), "", map[string]protocol.Manifest{
			"linux-armv6": armManifest("2.0.0", 2, "6"),
			"linux-armv7": armManifest("2.0.0", 2, "7"),
		}); n != "" {
			t.Errorf("note for a device on the newest: %q", n)
		}
	})
}
