#!/bin/sh
# Rollout driver benchmarks (issue 8): device statuses the driver handles
# per second on one core with 10,000 selected devices (strict parse +
# engine update; also allocations and heap per device), and the time from
# the status that crosses the failure threshold to the halted control
# message seen by a subscriber, on the embedded broker. Prints medians.
set -eu
cd "$(dirname "$0")/.."
count=${COUNT:-5}
out=$(go test ./fleet -run '^$' -bench 'BenchmarkRolloutStatuses|BenchmarkHaltLatency' -cpu 1 -benchtime "${BENCHTIME:-2s}" -count "$count" 2>/dev/null | grep '^Benchmark')
echo "$out"
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
echo "$out" | awk '/RolloutStatuses/ {for (i=1;i<=NF;i++) if ($(i+1)=="statuses/s") print $i}' | median | xargs printf 'statuses/s on one core (median of %s): %.0f\n' "$count"
echo "$out" | awk '/RolloutStatuses/ {for (i=1;i<=NF;i++) if ($(i+1)=="heap-B/device") print $i}' | median | xargs printf 'heap per device (median): %.0f B\n'
echo "$out" | awk '/HaltLatency/ {print $3/1e6}' | median | xargs printf 'halt latency (median): %.2f ms\n'
# Wall time of a 4-wave rollout of 20 real agents against the same fleet
# converging on a plain publish (one run; the machine is noisy, so the
# publish baseline is measured before and after in the same run).
if [ "${WALLTIME:-1}" = 1 ]; then
	go test ./cmd/edgefleet -run '^$' -bench 'BenchmarkRolloutWallTime' -benchtime 1x -count "${WALLCOUNT:-3}" 2>/dev/null | grep '^Benchmark'
fi
