#!/bin/sh
# Dashboard benchmarks (issue 13): bytes a browser transfers on first load
# (page, script, style, session; and the first event with 1,000 devices),
# the time to the first full render in a real headless Chromium with 10
# devices (baseline) and 1,000 published to a real broker, and the heap
# the dashboard holds for 10,000 devices next to what `edgefleet status`
# (fleet.FleetView) holds for the same messages, and the resident memory
# of a real `edgefleet dashboard` process with 10,000 devices. Needs chromium (scripts/test.sh
# installs it); the render benchmark fails without it.
set -eu
cd "$(dirname "$0")/.."
go test ./fleet/dashboard -run '^$' -bench 'BenchmarkPageWeight|BenchmarkFirstRender|BenchmarkMemory10k' \
	-benchtime "${BENCHTIME:-5x}" -count "${COUNT:-3}" 2>/dev/null | grep '^Benchmark'
# The real process's resident memory, empty and with 10,000 devices.
go test ./cmd/edgefleet -run '^$' -bench 'BenchmarkDashboardRSS10k' -benchtime 1x -count "${COUNT:-3}" 2>/dev/null | grep '^Benchmark'
