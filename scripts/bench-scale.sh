#!/usr/bin/env bash
# Scale benchmark (issue 9): simulated devices (cmd/edgefleet-sim: fetch
# and verify every chunk like the agent, install nothing) served a ~4 MiB
# xz release by one broker. Per run: devices done per minute, p50/p99
# device times, the broker's CPU seconds (utime+stime from /proc/PID/stat,
# while the devices ran) and peak RSS (VmHWM). Brokers are interleaved
# round by round on the same machine and the script prints medians:
#   embedded       edgefleet broker built from this tree
#   embedded-base  edgefleet broker built from BASE_REV (default: before the
#                  retained-chunk delivery change), when BASE_REV != none
#   mosquitto      Debian's mosquitto (no persistence, anonymous, loopback)
# Env: N (devices, default 1000), ROUNDS (default 3), BASE_REV, BROKERS
# (subset, space separated), TIMEOUT (per run, default 5m).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
N=${N:-1000}
ROUNDS=${ROUNDS:-3}
BASE_REV=${BASE_REV:-$(git log --format=%H -1 --grep='send retained chunks from the retained store')^}
TIMEOUT=${TIMEOUT:-5m}
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT
ulimit -n "$(ulimit -Hn)"
bin=$tmp/bin
go build -o "$bin/edgefleet" ./cmd/edgefleet
go build -o "$bin/edgefleet-sim" ./cmd/edgefleet-sim
brokers=${BROKERS:-"embedded embedded-base mosquitto"}
if [ "$BASE_REV" != none ] && [[ " $brokers " == *" embedded-base "* ]]; then
	mkdir -p "$tmp/base"
	git archive "$BASE_REV" | tar -x -C "$tmp/base"
	(cd "$tmp/base" && go build -o "$bin/edgefleet-base" ./cmd/edgefleet)
else
	brokers=${brokers/embedded-base/}
fi
mosq=$(command -v mosquitto || echo /usr/sbin/mosquitto)

# A ~4 MiB xz payload: a program that embeds random bytes (incompressible).
mkdir -p "$tmp/app"
printf 'module benchapp\n\ngo 1.22\n' >"$tmp/app/go.mod"
cat >"$tmp/app/main.go" <<'GO'
package main

import (
	_ "embed"
	"fmt"
)

//go:embed blob
var blob []byte

var version = "dev"

func main() { fmt.Println(version, len(blob)) }
GO
head -c 3600000 /dev/urandom >"$tmp/app/blob"
"$bin/edgefleet" keygen -o "$tmp/keys" --unencrypted >/dev/null
(cd "$tmp" && "$bin/edgefleet" pack --key keys/release.key --version 1.0.0 --sequence 1 --profile linux-amd64 --no-probe --no-cache -o out ./app >/dev/null)
bundle=$(ls "$tmp"/out/*.efb)
echo "release: $(stat -c %s "$bundle") byte bundle; $N simulated devices; $ROUNDS rounds; base $BASE_REV"

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_s() { awk -v t="$(getconf CLK_TCK)" '{print ($14+$15)/t}' "/proc/$1/stat"; }
hwm_mib() { awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }

results=$tmp/results
: >"$results"
for round in $(seq "$ROUNDS"); do
	for b in $brokers; do
		p=$(port)
		data=$tmp/data-$b-$round
		mkdir -p "$data"
		case $b in
		embedded) "$bin/edgefleet" broker --data "$data" --listen "127.0.0.1:$p" --rollout-driver=false >/dev/null 2>"$data/log" & ;;
		embedded-base) "$bin/edgefleet-base" broker --data "$data" --listen "127.0.0.1:$p" --rollout-driver=false >/dev/null 2>"$data/log" & ;;
		mosquitto)
			printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$p" >"$data/mosquitto.conf"
			"$mosq" -c "$data/mosquitto.conf" >"$data/log" 2>&1 &
			;;
		esac
		pid=$!
		for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.1; done
		"$bin/edgefleet" publish --broker "tcp://127.0.0.1:$p" --pub "$tmp/keys/release.pub" --quiet "$bundle" >/dev/null
		c0=$(cpu_s $pid)
		out=$("$bin/edgefleet-sim" --broker "tcp://127.0.0.1:$p" --pub "$tmp/keys/release.pub" --app app -n "$N" --timeout "$TIMEOUT" -q 2>"$data/sim.err" | head -1 || true)
		c1=$(cpu_s $pid)
		hwm=$(hwm_mib $pid)
		kill $pid
		wait $pid 2>/dev/null || true
		cpu=$(awk -v a="$c0" -v b="$c1" 'BEGIN {printf "%.2f", b-a}')
		echo "round=$round broker=$b $out broker_cpu_s=$cpu broker_peak_rss_mib=$hwm"
		echo "$b $out broker_cpu_s=$cpu broker_peak_rss_mib=$hwm" >>"$results"
		grep -i "limit\|error\|warn" "$data/log" | head -3 || true
	done
done

field() { grep -o "$1=[0-9.]*" | cut -d= -f2; }
median() { sort -n | awk '{a[NR]=$1} END {if (NR) print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
echo
printf '%-14s %6s %7s %10s %7s %7s %8s %9s\n' broker done elapsed per_minute p50_s p99_s cpu_s rss_MiB
for b in $brokers; do
	m() { grep "^$b " "$results" | field "$1" | median; }
	printf '%-14s %6s %7s %10s %7s %7s %8s %9s\n' "$b" "$(m done)" "$(m elapsed_s)" "$(m per_minute)" "$(m p50_s)" "$(m p99_s)" "$(m broker_cpu_s)" "$(m broker_peak_rss_mib)"
done
