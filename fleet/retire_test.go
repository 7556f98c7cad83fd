package fleet

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"sort"
	"testing"

	"github.com/edgefleet/edgefleet/internal/testkit"
	"github.com/edgefleet/edgefleet/protocol"
)

// makeBundleChunked is makeBundleFrom with a chosen chunk size.
func makeBundleChunked(t testing.TB, dir, app, version string, seq uint64, exe []byte, chunkSize int64) testRelease {
	t.Helper()
	m, payload := testkit.Manifest(t, testkit.Spec{App: app, Version: version, Sequence: seq, Exe: exe,
		Target: testkit.Target{GOARCH: "amd64"}, Encoding: protocol.EncodingNone, ChunkSize: chunkSize, NoProbe: true,
		ELF: &protocol.ELF{Class: 64, Machine: "EM_X86_64", Endian: "little"}})
	path := filepath.Join(dir, fmt.Sprintf("%s_%s_%d.efb", app, version, chunkSize))
	writeFile(t, path, testkit.Sign(t, m, payload, testKey.priv))
	return testRelease{path: path, kr: protocol.NewKeyring(testKey.pub), payload: exe, m: m}
}

// retainedChunks lists the retained chunk topics of app's payload sha.
func retainedChunks(t *testing.T, url, app, sha string) []string {
	t.Helper()
	c := connect(t, url, "", "", "")
	defer c.Disconnect(100)
	cf, err := protocol.ChunksFilter(app, sha)
	if err != nil {
		t.Fatal(err)
	}
	snap, err := Snapshot(context.Background(), c, []string{cf})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for topic, p := range snap {
		if len(p) > 0 {
			out = append(out, topic)
		}
	}
	sort.Strings(out)
	return out
}

func chunkTopics(t *testing.T, app, sha string, idx ...int) []string {
	t.Helper()
	var out []string
	for _, i := range idx {
		ct, err := protocol.ChunkTopic(app, sha, i)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, ct)
	}
	sort.Strings(out)
	return out
}

// TestRetireCountsReferencesPerChunkTopic: chunk topics are named by app,
// payload sha256 and index, so a chunk topic is in use exactly when some
// remaining retained envelope (any channel, profile or device) names that
// app and payload and has that many chunks. Two apps with the same payload
// do not share chunk topics, and the same payload published with two chunk
// sizes shares only the lower indices.
func TestRetireCountsReferencesPerChunkTopic(t *testing.T) {
	dir := t.TempDir()
	b := startEmbedded(t, BrokerOptions{DataDir: t.TempDir()})
	c := connect(t, b.URL(), "", "", "")
	ctx := context.Background()
	exe := makeBundle(t, dir, "x", "0.0.1", 1, 20_000).payload
	hello := makeBundleFrom(t, dir, "hello", "1.0.0", 1, exe)                                                // 5 chunks of 4 KiB
	world := makeBundleFrom(t, dir, "world", "1.0.0", 1, exe)                                                // same payload, other app
	hello2 := makeBundleChunked(t, dir, "hello", "1.0.1", 2, exe, 8<<10)                                     // same payload, 3 chunks of 8 KiB
	other := makeBundleFrom(t, dir, "hello", "0.9.0", 1, makeBundle(t, dir, "y", "0.0.1", 1, 9_000).payload) // 3 chunks
	if hello.m.Payload.SHA256 != world.m.Payload.SHA256 || hello.m.Payload.SHA256 != hello2.m.Payload.SHA256 {
		t.Fatal("test setup: the payloads differ")
	}
	psha := hello.m.Payload.SHA256
	for _, p := range []struct {
		r            testRelease
		channel, dev string
	}{{hello, "stable", ""}, {world, "stable", ""}, {other, "", "pi-1"}} {
		if _, err := PublishBundle(ctx, c, p.r.path, PublishOptions{Keyring: p.r.kr, Channel: p.channel, Device: p.dev}); err != nil {
			t.Fatal(err)
		}
	}

	// Case 1: hello and world publish the same payload; retiring hello
	// must remove hello's chunk topics and keep world's.
	res, err := Retire(ctx, c, "hello", "1.0.0", t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	if got := retainedChunks(t, b.URL(), "hello", psha); len(got) != 0 {
		t.Errorf("after retiring hello 1.0.0, %d of its chunk topics are still retained although no release references them (world's chunks are separate topics): %v", len(got), got)
	}
	if got, want := retainedChunks(t, b.URL(), "world", psha), chunkTopics(t, "world", psha, 0, 1, 2, 3, 4); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("retiring hello touched world's chunks: have %v, want %v", got, want)
	}
	if res.ChunksCleared != 5 || res.SharedPayloads != 0 {
		t.Errorf("retire hello 1.0.0: %+v, want 5 chunks cleared, none kept as shared", res)
	}
	rt, _ := protocol.ReleaseTopic("stable", "world", "linux-amd64")
	if env, p := snapshotRelease(t, c, rt, world); env == nil || !bytes.Equal(p, world.payload) {
		t.Error("retiring hello damaged world, which has the same payload")
	}
	if _, p := snapshotRelease(t, c, "x", other); !bytes.Equal(p, other.payload) {
		t.Error("retiring hello 1.0.0 damaged hello 0.9.0 (assigned to pi-1)")
	}

	// Case 2: hello 1.0.0 (4 KiB chunks) on beta, then the same payload as
	// hello 1.0.1 with 8 KiB chunks on stable: chunks 0-2 are 1.0.1's now,
	// 3 and 4 only 1.0.0's. Retiring 1.0.0 removes exactly 3 and 4.
	if _, err := PublishBundle(ctx, c, hello.path, PublishOptions{Keyring: hello.kr, Channel: "beta"}); err != nil {
		t.Fatal(err)
	}
	if _, err := PublishBundle(ctx, c, hello2.path, PublishOptions{Keyring: hello2.kr, Channel: "stable"}); err != nil {
		t.Fatal(err)
	}
	res, err = Retire(ctx, c, "hello", "1.0.0", t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := retainedChunks(t, b.URL(), "hello", psha), chunkTopics(t, "hello", psha, 0, 1, 2); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("after retiring hello 1.0.0 (5 chunks) while 1.0.1 (3 chunks, same payload) stays: retained %v, want %v", got, want)
	}
	if res.ChunksCleared != 2 || res.SharedPayloads != 1 {
		t.Errorf("retire hello 1.0.0 again: %+v, want 2 chunks cleared and 1 payload kept", res)
	}
	rt, _ = protocol.ReleaseTopic("stable", "hello", "linux-amd64")
	if env, p := snapshotRelease(t, c, rt, hello2); env == nil || !bytes.Equal(p, hello2.payload) {
		t.Error("retiring hello 1.0.0 damaged hello 1.0.1, which has the same payload")
	}

	// Case 3: retiring the last user of the payload removes the rest.
	if _, err := Retire(ctx, c, "hello", "1.0.1", t.Logf); err != nil {
		t.Fatal(err)
	}
	if got := retainedChunks(t, b.URL(), "hello", psha); len(got) != 0 {
		t.Errorf("after retiring hello 1.0.1, chunk topics left: %v", got)
	}
	if _, p := snapshotRelease(t, c, "x", other); !bytes.Equal(p, other.payload) {
		t.Error("retiring hello 1.0.1 damaged hello 0.9.0 (assigned to pi-1)")
	}
}
