#!/usr/bin/env bash
# The power-cut suite (internal/powercut): emulated machines that install a
# release and lose power. See internal/powercut/doc.go.
#
# Usage: scripts/powercut.sh [--install | --smoke | --long [CUTS]]
#   --install  install what the suite needs, idempotently, and exit:
#              qemu-system-x86, busybox-static, e2fsprogs, cpio, file (Debian),
#              and Debian's cloud kernel (linux-image-*-cloud-amd64, fetched
#              with apt-get download and unpacked into .tools/powercut/kernel)
#   --smoke    what scripts/test.sh runs: every workload cut once (a random
#              moment or a drawn failpoint), one more mqttdelta point, 2 cuts
#              per proof build: 12 cuts, about 2.5 minutes on 2 cores at
#              load 4-5
#   --long N   each workload calibrated, N cuts (default 1000) of the shipped
#              agent and, beside them, both proofs (missing staged-file
#              fsync, missing swap directory fsync) under every mount set;
#              the Markdown tables go to .tools/powercut/report/
# Env: EDGEFLEET_POWERCUT_JOBS machines at a time, all tests together
#      (default 2), EDGEFLEET_POWERCUT_BUDGET (e.g. 55m) stops starting cuts
#      after it, EDGEFLEET_POWERCUT_SEED=N repeats the plan of the run that
#      logged "seed N", EDGEFLEET_POWERCUT_VERBOSE=1 one line per cut
#      (=logs: every console), EDGEFLEET_POWERCUT_ONLY=delta,self only these
#      workloads (sideload, daemon, rollback, mqtt, delta, mqttdelta, self),
#      EDGEFLEET_POWERCUT_POINTS=delta-mid,random only these cut points
#      (a failpoint, random, after-done).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
log() { printf 'powercut.sh: %s\n' "$*" >&2; }
sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else "$@"; fi; }

kdir=$root/.tools/powercut/kernel

install() {
  local missing=()
  command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
  { command -v busybox >/dev/null && file -L "$(command -v busybox)" 2>/dev/null | grep -q 'statically linked'; } || missing+=(busybox-static)
  command -v mkfs.ext4 >/dev/null || [ -x /usr/sbin/mkfs.ext4 ] || missing+=(e2fsprogs)
  command -v cpio >/dev/null || missing+=(cpio)
  command -v file >/dev/null || missing+=(file)
  if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null || { log "missing ${missing[*]} and no apt-get: install them by hand"; return 1; }
    log "installing ${missing[*]}"
    { [ -n "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -print -quit 2>/dev/null)" ] || sudo_ apt-get update -qq; }
    DEBIAN_FRONTEND=noninteractive sudo_ apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  if ! ls "$kdir"/boot/vmlinuz-* >/dev/null 2>&1; then
    command -v apt-get >/dev/null || { log "no apt-get to fetch Debian's kernel; set EDGEFLEET_POWERCUT_KERNEL to an unpacked linux-image-*-cloud-amd64"; return 1; }
    local pkg tmp
    pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}')
    [ -n "$pkg" ] || { log "apt-cache knows no linux-image-cloud-amd64 (apt-get update?)"; return 1; }
    log "fetching $pkg into $kdir"
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download -qq "$pkg" 2>/dev/null)
    mkdir -p "$kdir"
    dpkg-deb -x "$tmp"/*.deb "$kdir"
    rm -rf "$tmp"
  fi
}

run() {
  export EDGEFLEET_POWERCUT_KERNEL=${EDGEFLEET_POWERCUT_KERNEL:-$kdir}
  export EDGEFLEET_POWERCUT_REPORT=${EDGEFLEET_POWERCUT_REPORT:-$root/.tools/powercut/report}
  go test ./internal/powercut -count=1 -timeout 12h -v "$@"
}

case "${1:---smoke}" in
  --install) install ;;
  --smoke) install; EDGEFLEET_POWERCUT=smoke run ;;
  --long) install; EDGEFLEET_POWERCUT=long EDGEFLEET_POWERCUT_CUTS=${2:-1000} run ;;
  *) echo "usage: scripts/powercut.sh [--install | --smoke | --long [CUTS]] (what each does and the EDGEFLEET_POWERCUT_* settings: the comment at the top of scripts/powercut.sh)" >&2; exit 2 ;;
esac
