package fleet

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"

	"github.com/edgefleet/edgefleet/internal/testkit"
	differ "github.com/edgefleet/edgefleet/packer/bsdiff"
	"github.com/edgefleet/edgefleet/protocol"
)

// makeDelta signs a delta bundle from base's executable to full.
func makeDelta(t *testing.T, dir string, base, full testRelease) testRelease {
	t.Helper()
	patch, st, err := differ.Diff(base.payload, full.payload, differ.Options{})
	if err != nil {
		t.Fatal(err)
	}
	pl, err := protocol.DescribePayload(bytes.NewReader(patch), protocol.EncodingNone, protocol.MinChunkSize)
	if err != nil {
		t.Fatal(err)
	}
	pl.Encoding = protocol.EncodingBSDiff
	m := *full.m
	m.Payload = pl
	m.Delta = &protocol.Delta{Format: protocol.DeltaFormatBSDiff40, BaseSize: base.m.Executable.Size, BaseSHA256: base.m.Executable.SHA256,
		BaseVersion: base.m.Version, FullPayloadSHA256: full.m.Payload.SHA256, ControlEntries: st.ControlEntries, MaxBzip2Level: 5}
	path := filepath.Join(dir, "delta_"+base.m.Version+"_"+full.m.Version+".efb")
	writeFile(t, path, testkit.Sign(t, &m, patch, testKey.priv))
	return testRelease{path: path, kr: full.kr, payload: patch, m: &m}
}

// TestPublishAndRetireDelta: a delta is published to its delta topic
// (result and base sha256) whatever the channel, with its chunks; retiring
// the release it leads to clears it and its chunks, retiring its base's
// release does not.
func TestPublishAndRetireDelta(t *testing.T) {
	dir := t.TempDir()
	b := startEmbedded(t, BrokerOptions{DataDir: t.TempDir()})
	c := connect(t, b.URL(), "", "", "")
	ctx := context.Background()
	v1 := makeBundle(t, dir, "hello", "1.0.0", 1, 40_000)
	nw := append(append([]byte(nil), v1.payload...), []byte("a small change")...)
	v2 := makeBundleFrom(t, dir, "hello", "2.0.0", 2, nw)
	d := makeDelta(t, dir, v1, v2)
	for _, r := range []testRelease{v1, d, v2} {
		res, err := PublishBundle(ctx, c, r.path, PublishOptions{Keyring: v1.kr, Channel: "stable"})
		if err != nil {
			t.Fatal(err)
		}
		if r.m.IsDelta() {
			want, _ := protocol.DeltaTopic("hello", v2.m.Executable.SHA256, v1.m.Executable.SHA256)
			if res.Topic != want {
				t.Fatalf("delta published to %s, want %s", res.Topic, want)
			}
		}
	}
	dt, _ := protocol.DeltaTopic("hello", v2.m.Executable.SHA256, v1.m.Executable.SHA256)
	if env, p := snapshotRelease(t, c, dt, d); env == nil || !bytes.Equal(p, d.payload) {
		t.Fatal("the delta and its chunks are not retained")
	}
	res, err := Retire(ctx, c, "hello", "1.0.0", t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	for _, tp := range res.Cleared {
		if tp == dt {
			t.Fatal("retiring the base's release cleared the delta to 2.0.0")
		}
	}
	res, err = Retire(ctx, c, "hello", "2.0.0", t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, tp := range res.Cleared {
		found = found || tp == dt
	}
	if !found {
		t.Fatalf("retire 2.0.0 did not clear its delta: %+v", res)
	}
	if env, p := snapshotRelease(t, c, dt, d); env != nil || p != nil {
		t.Fatal("the delta or its chunks are still retained after retire")
	}
}
