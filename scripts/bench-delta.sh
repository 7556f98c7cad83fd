#!/bin/sh
# Delta benchmarks (issue 10; docs/BENCHMARKS.md "Deltas"): wire bytes of
# a small and a +200-line change of hello and of the agent (linux-armv6,
# linux-arm64, stripped, -trimpath) against xz -9e of the new binary; the
# packer's diff time and peak RSS; the device's apply time and peak RSS
# (streaming applier vs minio/selfupdate's patcher vs writing the full
# binary, each with fsync), also under qemu-arm -cpu arm1176.
# Needs go, xz and (for the emulated row) qemu-user.
set -eu
cd "$(dirname "$0")/.."
EDGEFLEET_BENCH_DELTA=1 exec go test -count=1 -run XXX -bench BenchmarkDelta -benchtime 1x -timeout 30m ./packer/bsdiff
