#!/usr/bin/env bash
# The recipe of the systemd guest's root filesystem (internal/powercut,
# TestSystemdUnitsBootAndRescue): Debian bookworm, minbase plus
# systemd-sysv, nothing else, in a raw ext4 image. scripts/powercut.sh
# --install runs it once per recipe: the image is cached as
# .tools/powercut/systemd/rootfs-<first 16 hex of this file's sha256>.img,
# so any change here builds a new one. Needs root (mmdebstrap's root mode
# and mkfs.ext4 -d keep the tree's owners) and mmdebstrap.
#
# Usage: systemd-rootfs.sh IMAGE
set -euo pipefail
img=$1
mirror=${EDGEFLEET_DEBIAN_MIRROR:-http://deb.debian.org/debian}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The guest is a test machine: no documentation, no timers that would run
# apt or fstrim under the test, no getty (no udev: its serial device unit
# would never appear), and a fixed machine-id so that no boot is a "first
# boot" that applies presets.
mmdebstrap --quiet --variant=minbase --include=systemd-sysv \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
  --customize-hook='rm -f "$1"/etc/systemd/system/timers.target.wants/* "$1"/etc/systemd/system/multi-user.target.wants/e2scrub_reap.service' \
  --customize-hook='for u in getty.target serial-getty@ttyS0.service; do ln -sf /dev/null "$1/etc/systemd/system/$u"; done' \
  --customize-hook='printf "%032x\\n" 14 > "$1"/etc/machine-id; echo edgefleet-systemd > "$1"/etc/hostname' \
  bookworm "$tmp/root" "$mirror"
mkfs.ext4 -q -F -L root -d "$tmp/root" "$img.tmp" 512M
mv "$img.tmp" "$img"
