package fleet

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/edgefleet/edgefleet/hardware"
	"github.com/edgefleet/edgefleet/protocol"
)

// Errors of the assign checks; the messages say what to do.
var (
	// ErrUnknownDevice: no device with that id has a status on the broker.
	ErrUnknownDevice = errors.New("unknown device")
	// ErrWrongCPU: the device's reported CPU or profile cannot run the
	// bundle (it wraps hardware.ErrIncompatible too).
	ErrWrongCPU = errors.New("the device cannot run this bundle")
)

// DeviceStatuses reads the retained statuses of devices. A device with no
// status is missing from the map; one whose status is malformed is in
// bad with why (it is treated as unknown).
func DeviceStatuses(ctx context.Context, c paho.Client, devices []string) (map[string]*protocol.DeviceStatus, map[string]error, error) {
	var filters []string
	for _, d := range devices {
		t, err := protocol.StatusTopic(d)
		if err != nil {
			return nil, nil, err
		}
		filters = append(filters, t)
	}
	snap, err := Snapshot(ctx, c, filters)
	if err != nil {
		return nil, nil, fmt.Errorf("read device statuses: %w", err)
	}
	out, bad := map[string]*protocol.DeviceStatus{}, map[string]error{}
	for topic, b := range snap {
		t, err := protocol.ParseTopic(topic)
		if err != nil || len(b) == 0 {
			continue
		}
		s, err := protocol.ParseStatus(b)
		if err == nil && s.Device != t.Device {
			err = fmt.Errorf("the status on %s claims to be device %q", topic, s.Device)
		}
		if err != nil {
			bad[t.Device] = err
			continue
		}
		out[t.Device] = s
	}
	return out, bad, nil
}

// CheckKnown refuses a device without a status: an id with a typo would
// get a release no device ever reads. bad is DeviceStatuses' malformed set.
func CheckKnown(device string, st *protocol.DeviceStatus, bad error) error {
	switch {
	case bad != nil:
		return fmt.Errorf("device %s has no readable status on the broker (%v); check the id with `edgefleet status`, or --force to assign anyway: %w", device, bad, ErrUnknownDevice)
	case st == nil:
		return fmt.Errorf("no device %s has reported a status to this broker; check the id with `edgefleet status` (a typo would leave the release unread), or --force to assign to a device that has not connected yet: %w", device, ErrUnknownDevice)
	}
	return nil
}

// DeviceCPU is what the device's status says about its CPU: the CPU it
// reported (CPUFacts.String) or, without one, the least CPU of the
// profile it reported. ok is false when neither tells (then why says so).
func DeviceCPU(st *protocol.DeviceStatus) (c hardware.CPUFacts, from string, err error) {
	if st.CPU != "" {
		c, err := hardware.ParseCPUString(st.CPU)
		if err != nil {
			return c, "", fmt.Errorf("device %s: %w", st.Device, err)
		}
		return c, "its CPU " + st.CPU, nil
	}
	if st.Profile != "" {
		p, err := hardware.DefaultSet().Lookup(st.Profile)
		if err != nil {
			return hardware.CPUFacts{}, "", fmt.Errorf("device %s reports no CPU and profile %s, which is not a built-in profile", st.Device, st.Profile)
		}
		c, err := hardware.CPUFactsFor(p)
		if err != nil {
			return c, "", fmt.Errorf("device %s: profile %s: %w", st.Device, st.Profile, err)
		}
		return c, "its profile " + st.Profile, nil
	}
	return hardware.CPUFacts{}, "", fmt.Errorf("device %s reports neither its CPU nor its profile", st.Device)
}

// TargetOf is the signed target in hardware's terms.
func TargetOf(t protocol.Target) hardware.Target {
	// CanRun compares GOOS with the running program's: here the
	// operator's, not the device's (devices run Linux), so it is left
	// out unless it is the same.
	goos := ""
	if t.GOOS == runtime.GOOS {
		goos = t.GOOS
	}
	return hardware.Target{
		GOOS: goos, GOARCH: t.GOARCH, GOARM: t.GOARM, GOAMD64: t.GOAMD64, GOMIPS: t.GOMIPS,
		ELFClass: t.ELF.Class, ELFMachine: t.ELF.Machine, ELFBigEndian: t.ELF.Endian == "big",
	}
}

// CheckRuns refuses a bundle that the device's reported CPU (or profile)
// cannot run. It returns a non-nil note, and no error, when the status
// does not say enough to decide.
func CheckRuns(st *protocol.DeviceStatus, m *protocol.Manifest) (note string, err error) {
	c, from, err := DeviceCPU(st)
	if err != nil {
		return err.Error() + "; the bundle's CPU was not checked", nil
	}
	if err := c.CanRun(TargetOf(m.Target)); err != nil {
		// CanRun's sentence speaks of "this device"; say which one.
		return "", fmt.Errorf("device %s (%s) cannot run %s %s for %s: %v; or --force if you know better: %w",
			st.Device, from, m.App, m.Version, m.Profile, strings.TrimSpace(err.Error()), ErrWrongCPU)
	}
	return "", nil
}

// PickBundle chooses, among several bundles of one app (one per profile),
// the one for the device: the bundle of the profile it reports, else the
// only one its CPU runs. It refuses when none runs on it (ErrWrongCPU)
// or the choice is not clear.
func PickBundle(st *protocol.DeviceStatus, ms []*protocol.Manifest) (int, error) {
	if len(ms) == 1 {
		return 0, nil
	}
	c, from, cpuErr := DeviceCPU(st)
	var fits []int
	var why []string
	for i, m := range ms {
		if cpuErr == nil {
			if err := c.CanRun(TargetOf(m.Target)); err != nil {
				why = append(why, fmt.Sprintf("%s: %v", m.Profile, err))
				continue
			}
		}
		if m.Profile == st.Profile {
			return i, nil
		}
		fits = append(fits, i)
	}
	switch {
	case len(fits) == 1:
		return fits[0], nil
	case len(fits) == 0:
		return -1, fmt.Errorf("device %s (%s) runs none of the %d bundles of %s: %s: %w", st.Device, from, len(ms), ms[0].App, strings.Join(why, "; "), ErrWrongCPU)
	}
	var names []string
	for _, i := range fits {
		names = append(names, ms[i].Profile)
	}
	return -1, fmt.Errorf("device %s could run several of the bundles of %s (%s) and reports profile %q: give the one bundle it should get", st.Device, ms[0].App, strings.Join(names, ", "), st.Profile)
}
