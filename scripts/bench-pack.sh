#!/usr/bin/env bash
# bench-pack.sh: time `edgefleet pack` of testdata/apps/hello for 4 profiles
# against a plain shell loop of the same go build commands (the usual
# build.sh), warm go build cache, and print per-profile sizes. Prints
# Markdown for docs/BENCHMARKS.md (## Packer).
#
# Two pack figures: warm (the pack cache of xz payloads, upx outputs and
# passed probes already holds this input: the usual re-pack of unchanged
# code) and cold (an empty pack cache each run: the first pack of new code,
# which also fills the cache). The pack cache lives in the script's temp
# directory, never the user's.
#
# usage: scripts/bench-pack.sh [runs]     (default 5 runs, the median is reported)
# needs: go, jq; qemu-user for the probe; xz for the xz build.sh variant;
#        upx ($EDGEFLEET_UPX, PATH or .tools/bin/upx) for the UPX sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
profiles=(linux-armv6 linux-armv7 linux-arm64 linux-amd64)
pkg=./testdata/apps/hello
version=1.2.3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export EDGEFLEET_CACHE=$work/pack-cache

upx=${EDGEFLEET_UPX:-$(command -v upx || true)}
[[ -z $upx && -x .tools/bin/upx ]] && upx=$PWD/.tools/bin/upx

go build -o "$work/edgefleet" ./cmd/edgefleet
"$work/edgefleet" keygen -o "$work/keys" --unencrypted >/dev/null

envs() { # the build environment of a profile, as hardware.Profile.Env gives it
	case $1 in
	linux-armv6) echo "CGO_ENABLED=0 GOOS=linux GOARCH=arm GOARM=6" ;;
	linux-armv7) echo "CGO_ENABLED=0 GOOS=linux GOARCH=arm GOARM=7" ;;
	linux-arm64) echo "CGO_ENABLED=0 GOOS=linux GOARCH=arm64" ;;
	linux-amd64) echo "CGO_ENABLED=0 GOOS=linux GOARCH=amd64 GOAMD64=v1" ;;
	esac
}
ldflags="-s -w -buildid= -X main.version=$version"

buildsh() { # $1: out dir, $2: "xz" to compress like a release script would
	mkdir -p "$1"
	for p in "${profiles[@]}"; do
		env $(envs "$p") go build -trimpath -ldflags "$ldflags" -o "$1/hello-$p" "$pkg"
		if [[ ${2:-} == xz ]]; then xz -6 --lzma2=preset=6,dict=1MiB -T1 -kf "$1/hello-$p"; fi
	done
}
pack() { # $@: extra flags
	"$work/edgefleet" pack --key "$work/keys/release.key" --version $version --sequence 1 \
		$(printf -- '--profile %s ' "${profiles[@]}") -o "$work/dist" "$@" $pkg >/dev/null 2>&1
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
TIMEFORMAT='%R %U %S'
measure() { # $1: name; rest: command. Appends "wall cpu" to $work/t.$1
	local name=$1; shift
	{ time "$@" >/dev/null 2>&1; } 2>"$work/one"
	awk '{print $1, $2 + $3}' "$work/one" >>"$work/t.$name"
}

coldpack() { # an empty pack cache: xz, probe (and upx) all run, and fill it
	rm -rf "$work/cold-cache"
	EDGEFLEET_CACHE=$work/cold-cache pack
}

# Warm the go build cache for every target, and the pack cache.
buildsh "$work/warm"; pack

# Interleave the variants so that load from other processes hits them alike.
for _ in $(seq "$runs"); do
	measure loop buildsh "$work/loop"
	measure loopxz buildsh "$work/loopxz" xz
	measure pack pack
	measure cold coldpack
done
wall() { awk '{print $1}' "$work/t.$1" | median; }
cpu() { awk '{print $2}' "$work/t.$1" | median; }
ratio() { printf %.2f "$(echo "$1 / $2" | bc -l)"; }
row() { # $1 label, $2 variant
	printf '| %s | %.2f | %s× | %.2f | %s× |\n' "$1" "$(wall "$2")" "$(ratio "$(wall "$2")" "$(wall loop)")" "$(cpu "$2")" "$(ratio "$(cpu "$2")" "$(cpu loop)")"
}
cat <<MD
Machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(go version | cut -d' ' -f3), load average $(cut -d' ' -f1 /proc/loadavg) at the end.
\`scripts/bench-pack.sh $runs\`: hello for ${profiles[*]}, warm build cache, median of $runs interleaved runs.

| what | wall s | wall vs loop | CPU s (user+sys) | CPU vs loop |
|---|---:|---:|---:|---:|
MD
row 'build.sh: `go build` ×4, sequential' loop
row 'build.sh + `xz -6` ×4' loopxz
row '`edgefleet pack`, warm pack cache (every step; xz, probe from the cache)' pack
row '`edgefleet pack`, cold pack cache (every step runs: checks, qemu probe, xz, sign, write)' cold

# Sizes: unstripped, stripped, UPX, xz payload of the stripped binary, and
# xz payload of the UPX binary.
"$work/edgefleet" pack --key "$work/keys/release.key" --version $version --sequence 1 \
	$(printf -- '--profile %s ' "${profiles[@]}") --measure-unstripped --json -o "$work/sizes" $pkg 2>/dev/null >"$work/plain.json"
have_upx=no
if [[ -n $upx ]]; then
	{
		echo "profiles:"
		for p in "${profiles[@]}"; do printf '  - name: %s-upx\n    base: %s\n    upx: true\n' "$p" "$p"; done
	} >"$work/upx.yaml"
	"$work/edgefleet" pack --key "$work/keys/release.key" --version $version --sequence 1 --upx "$upx" \
		--profiles "$work/upx.yaml" --json -o "$work/sizes-upx" $pkg 2>/dev/null >"$work/upx.json" || true
	jq -e '.results | length == 4' "$work/upx.json" >/dev/null && have_upx=yes
fi
echo
echo "| profile | unstripped | stripped (-s -w) | UPX (default args) | xz payload | xz of UPX | probe | probe of the UPX build |"
echo "|---|---:|---:|---:|---:|---:|---|---|"
for i in "${!profiles[@]}"; do
	p=${profiles[$i]}
	IFS=$'\t' read -r un st xzp probe < <(jq -r ".results[$i] | [.unstripped_size, .binary_size, .payload_size, .probe] | @tsv" "$work/plain.json")
	ux=- uxz=- uprobe=-
	if [[ $have_upx == yes ]]; then
		read -r ux uxz < <(jq -r ".results[$i] | \"\(.upx_size) \(.payload_size)\"" "$work/upx.json")
		uprobe=$(jq -r ".results[$i].probe | .[0:90]" "$work/upx.json")
		[[ $uxz == 0 ]] && uxz="- (not compressed: probe failed)"
	fi
	echo "| $p | $un | $st | $ux | $xzp | $uxz | $probe | $uprobe |"
done
