#!/usr/bin/env bash
# The power-cut suite (internal/powercut): emulated machines that install a
# release and lose power. See internal/powercut/doc.go.
#
# Usage: scripts/powercut.sh [--install | --smoke | --long [CUTS]]
#   --install  install what the suite needs, idempotently, and exit:
#              qemu-system-x86, busybox-static, e2fsprogs, cpio, file (Debian),
#              and Debian's cloud kernel (linux-image-*-cloud-amd64, fetched
#              with apt-get download and unpacked into .tools/powercut/kernel);
#              for the ARM device: qemu-system-arm, and Debian's armhf kernel
#              (linux-image-*-armmp) and busybox-static, fetched from the
#              registry's signed armhf index without adding the architecture,
#              unpacked into .tools/powercut/arm (install_arm); and (as root or
#              with sudo) the systemd guest's Debian root filesystem
#              (mmdebstrap; internal/powercut/guest/systemd-rootfs.sh, cached
#              in .tools/powercut/systemd/ per recipe: about 2-3 minutes once)
#   --smoke    what scripts/test.sh runs: every workload cut once (a random
#              moment or a drawn failpoint), one more mqttdelta point, 2 cuts
#              per proof build: 12 cuts, about 2.5 minutes on 2 cores at
#              load 4-5; beside them the ARM device (one cut) and the
#              systemd guest (boot, rescue, one cut)
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
#      (a failpoint, random, after-done). The ARM device (TestARMDevice*)
#      runs unless EDGEFLEET_POWERCUT_ONLY leaves out "arm";
#      EDGEFLEET_POWERCUT_ARM_RANDOM its random cuts in --long (default 6),
#      EDGEFLEET_POWERCUT_ARM_CPU its qemu -cpu (default cortex-a7),
#      EDGEFLEET_POWERCUT_ARM its unpacked armhf kernel and busybox (default
#      .tools/powercut/arm).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
log() { printf 'powercut.sh: %s\n' "$*" >&2; }
sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else "$@"; fi; }

kdir=$root/.tools/powercut/kernel
adir=$root/.tools/powercut/arm

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
  install_arm || log "WARNING: the ARM device's tools did not install; TestARMDeviceBootsUpdatesAndSurvivesCut will skip loudly"
}

# install_arm: the ARM device (TestARMDevice*): qemu-system-arm, and
# Debian's armhf kernel and busybox-static unpacked into $adir. This
# machine is amd64 and must not gain a foreign dpkg architecture, so the
# .debs come straight from the registry: each suite's InRelease checked
# with gpgv against debian-archive-keyring, its armhf Packages.xz against
# InRelease's SHA256, each .deb against Packages' SHA256. Idempotent.
install_arm() {
  if ! command -v qemu-system-arm >/dev/null; then
    command -v apt-get >/dev/null || { log "missing qemu-system-arm and no apt-get: install it by hand"; return 1; }
    log "installing qemu-system-arm"
    DEBIAN_FRONTEND=noninteractive sudo_ apt-get install -y -qq --no-install-recommends qemu-system-arm >/dev/null
  fi
  if ls "$adir"/boot/vmlinuz-*-armmp >/dev/null 2>&1 && [ -x "$adir"/bin/busybox ]; then return 0; fi
  local keyring=/usr/share/keyrings/debian-archive-keyring.gpg mirror=${EDGEFLEET_DEBIAN_MIRROR:-http://deb.debian.org}
  [ -r "$keyring" ] && command -v gpgv >/dev/null || { log "need gpgv and $keyring (Debian: gpgv, debian-archive-keyring) to check the armhf index; or unpack linux-image-*-armmp and busybox-static (armhf) into $adir by hand"; return 1; }
  local tmp; tmp=$(mktemp -d)
  # arm_index ARCHIVE SUITE: the verified armhf Packages of one suite,
  # each stanza with an X-Archive field (where its Filename is).
  arm_index() {
    local base=$mirror/$1 suite=$2 want got
    curl -fsSL -o "$tmp/InRelease" "$base/dists/$suite/InRelease" || { log "cannot fetch $base/dists/$suite/InRelease"; return 1; }
    gpgv -q --keyring "$keyring" --output "$tmp/Release" "$tmp/InRelease" 2>/dev/null || { log "$base/dists/$suite/InRelease: bad or unknown signature (debian-archive-keyring too old?)"; return 1; }
    want=$(awk '/^SHA256:/{s=1;next} /^[^ ]/{s=0} s && $3=="main/binary-armhf/Packages.xz"{print $1}' "$tmp/Release")
    [ -n "$want" ] || { log "$suite: InRelease lists no main/binary-armhf/Packages.xz"; return 1; }
    curl -fsSL -o "$tmp/Packages.xz" "$base/dists/$suite/main/binary-armhf/Packages.xz" || return 1
    got=$(sha256sum "$tmp/Packages.xz" | cut -d' ' -f1)
    [ "$got" = "$want" ] || { log "$suite: armhf Packages.xz has sha256 $got, InRelease says $want"; return 1; }
    xzcat "$tmp/Packages.xz" | awk -v a="$base" 'BEGIN{RS="";ORS="\n\n"} {print $0 "\nX-Archive: " a}'
  }
  {
    arm_index debian bookworm && arm_index debian bookworm-updates && arm_index debian-security bookworm-security
  } > "$tmp/Packages" || { rm -rf "$tmp"; return 1; }
  # arm_stanza PACKAGE [VERSION]: the newest stanza of PACKAGE (or that version).
  arm_stanza() {
    awk -v p="$1" -v v="${2:-}" 'BEGIN{RS="";ORS="\n\n"} {pk="";ve=""; n=split($0,l,"\n"); for(i=1;i<=n;i++){ if(l[i]~/^Package: /) pk=substr(l[i],10); if(l[i]~/^Version: /) ve=substr(l[i],10) } if(pk==p && (v=="" || ve==v)) print}' "$tmp/Packages" > "$tmp/st"
    local best="" ver
    for ver in $(sed -n 's/^Version: //p' "$tmp/st"); do
      if [ -z "$best" ] || dpkg --compare-versions "$ver" gt "$best"; then best=$ver; fi
    done
    [ -n "$best" ] || return 1
    awk -v v="$best" 'BEGIN{RS="";ORS="\n\n"} index($0, "\nVersion: " v "\n") {print; exit}' "$tmp/st"
  }
  field() { sed -n "s/^$1: //p" | head -1; }
  # arm_deb PACKAGE [VERSION]: download, check and unpack into $adir.
  arm_deb() {
    local st url sum got
    st=$(arm_stanza "$@") || { log "the armhf index has no package $1 ${2:-}"; return 1; }
    url=$(field X-Archive <<<"$st")/$(field Filename <<<"$st"); sum=$(field SHA256 <<<"$st")
    log "fetching $url"
    curl -fsSL -o "$tmp/p.deb" "$url" || { log "cannot fetch $url"; return 1; }
    got=$(sha256sum "$tmp/p.deb" | cut -d' ' -f1)
    [ "$got" = "$sum" ] || { log "$url has sha256 $got, the signed index says $sum: not unpacked"; return 1; }
    mkdir -p "$adir"
    dpkg-deb -x "$tmp/p.deb" "$adir"
  }
  # linux-image-armmp (the newest) depends on the versioned kernel package.
  local dep
  dep=$(arm_stanza linux-image-armmp | field Depends | sed -n 's/^\(linux-image-[^ ,]*\) (= \([^)]*\)).*/\1 \2/p')
  [ -n "$dep" ] || { log "the armhf index has no linux-image-armmp"; rm -rf "$tmp"; return 1; }
  # shellcheck disable=SC2086
  arm_deb $dep && arm_deb busybox-static || { rm -rf "$tmp"; return 1; }
  rm -rf "$tmp"
}

# install_systemd_rootfs: the root filesystem of the systemd guest
# (TestSystemdUnitsBootAndRescue), built once per recipe: its name carries
# the recipe's hash, so an edited recipe builds a new image and a session
# reuses the cached one. EDGEFLEET_POWERCUT_SYSTEMD overrides the directory.
install_systemd_rootfs() {
  local recipe=$root/internal/powercut/guest/systemd-rootfs.sh
  local dir=${EDGEFLEET_POWERCUT_SYSTEMD:-$root/.tools/powercut/systemd}
  local img
  img=$dir/rootfs-$(sha256sum "$recipe" | cut -c1-16).img
  [ -f "$img" ] && return 0
  # mmdebstrap's root mode and mkfs.ext4 -d keep the tree's owners only as
  # root: sudo when not root.
  if [ "$(id -u)" != 0 ] && ! command -v sudo >/dev/null; then
    log "not root and no sudo: the systemd guest's root filesystem is not built; TestSystemdUnitsBootAndRescue will skip"
    return 0
  fi
  if ! command -v mmdebstrap >/dev/null; then
    command -v apt-get >/dev/null || { log "no mmdebstrap and no apt-get: TestSystemdUnitsBootAndRescue will skip"; return 0; }
    log "installing mmdebstrap"
    DEBIAN_FRONTEND=noninteractive sudo_ apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null
  fi
  log "building the systemd guest's root filesystem $img (Debian bookworm, minbase + systemd-sysv)"
  mkdir -p "$dir"
  local t0=$SECONDS
  sudo_ "$recipe" "$img"
  [ "$(id -u)" = 0 ] || sudo_ chown "$(id -u):$(id -g)" "$img"
  log "built $img in $((SECONDS - t0)) s"
}

run() {
  export EDGEFLEET_POWERCUT_KERNEL=${EDGEFLEET_POWERCUT_KERNEL:-$kdir}
  export EDGEFLEET_POWERCUT_ARM=${EDGEFLEET_POWERCUT_ARM:-$adir}
  export EDGEFLEET_POWERCUT_REPORT=${EDGEFLEET_POWERCUT_REPORT:-$root/.tools/powercut/report}
  go test ./internal/powercut -count=1 -timeout 12h -v "$@"
}

case "${1:---smoke}" in
  --install) install; install_systemd_rootfs ;;
  --smoke) install; install_systemd_rootfs; EDGEFLEET_POWERCUT=smoke run ;;
  --long) install; install_systemd_rootfs; EDGEFLEET_POWERCUT=long EDGEFLEET_POWERCUT_CUTS=${2:-1000} run ;;
  *) echo "usage: scripts/powercut.sh [--install | --smoke | --long [CUTS]] (what each does and the EDGEFLEET_POWERCUT_* settings: the comment at the top of scripts/powercut.sh)" >&2; exit 2 ;;
esac
