package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/internal/testkit"
	differ "github.com/edgefleet/edgefleet/packer/bsdiff"
	"github.com/edgefleet/edgefleet/protocol"
)

// deltaBundle signs a delta from the executable oldBin to the release
// the full bundle at fullPath describes (newBin), as pack --delta-from
// makes one.
func (d *device) deltaBundle(fullPath, oldBin, newBin, baseVersion string) string {
	d.t.Helper()
	raw, err := os.ReadFile(fullPath)
	if err != nil {
		d.t.Fatal(err)
	}
	b, err := protocol.OpenBundle(bytes.NewReader(raw), protocol.NewKeyring(testkit.Public(d.priv)))
	if err != nil {
		d.t.Fatal(err)
	}
	old, _ := os.ReadFile(oldBin)
	nw, _ := os.ReadFile(newBin)
	patch, st, err := differ.Diff(old, nw, differ.Options{})
	if err != nil {
		d.t.Fatal(err)
	}
	pl, err := protocol.DescribePayload(bytes.NewReader(patch), protocol.EncodingNone, b.Manifest.Payload.ChunkSize)
	if err != nil {
		d.t.Fatal(err)
	}
	pl.Encoding = protocol.EncodingBSDiff
	m := *b.Manifest
	m.Payload = pl
	m.Delta = &protocol.Delta{Format: protocol.DeltaFormatBSDiff40, BaseSize: int64(len(old)), BaseSHA256: sha(old), BaseVersion: baseVersion,
		FullPayloadSHA256: b.Manifest.Payload.SHA256, ControlEntries: st.ControlEntries, MaxBzip2Level: differ.Options{}.MaxLevel()}
	out := filepath.Join(d.dir, fmt.Sprintf("%s-%s.from-%s.efb", m.App, m.Version, baseVersion))
	if err := os.WriteFile(out, testkit.Sign(d.t, &m, patch, d.priv), 0o644); err != nil {
		d.t.Fatal(err)
	}
	t := d.t
	t.Logf("delta %s → %s of the agent: %d bytes (the binary is %d)", baseVersion, m.Version, len(patch), len(nw))
	return out
}

// The agent updates itself with a delta: the real agent, running as
// edgefleet-agent 1.0.0, is sent a delta to 2.0.0 (a small fraction of its
// binary), applies it to its own executable, re-executes and commits; the
// binary at its path is then byte for byte the full 2.0.0.
func TestSelfUpdateWithDelta(t *testing.T) {
	d := newDevice(t, deviceOpts{self: true, maxBoots: 2})
	v1 := agentBin(t, "1.0.0", "")
	v2 := agentBin(t, "2.0.0", "")
	placeSelfAndHello(t, d, v1)
	startInit(t, d)
	d.waitStatus("agent 1.0.0 answers", func(st agent.DaemonStatus) bool { return st.AgentVersion == "1.0.0" })

	full := d.bundle("edgefleet-agent", "2.0.0", 2, v2)
	delta := d.deltaBundle(full, v1, v2, "1.0.0")
	di, _ := os.Stat(delta)
	if fi, _ := os.Stat(v2); di.Size()*20 > fi.Size() {
		t.Fatalf("the delta bundle is %d bytes for a %d-byte agent: not a delta", di.Size(), fi.Size())
	}
	out := d.mustRun(0, "sideload", "--config", d.cfgPath, delta)
	if !strings.Contains(out, "installed edgefleet-agent 2.0.0") {
		t.Fatalf("self sideload of the delta:\n%s", out)
	}
	d.waitStatus("agent 2.0.0 committed", func(st agent.DaemonStatus) bool {
		return st.AgentVersion == "2.0.0" && app(st, "edgefleet-agent").State == agent.StateCommitted
	})
	got, _ := os.ReadFile(d.self)
	want, _ := os.ReadFile(v2)
	if !bytes.Equal(got, want) {
		t.Fatal("the agent's executable after the delta differs from the full 2.0.0")
	}
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
