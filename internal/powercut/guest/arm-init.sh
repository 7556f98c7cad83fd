#!/bin/busybox sh
# PID 1 of the ARM device (internal/powercut, arm_test.go): a Cortex-A7
# board booted by Debian's armhf kernel, busybox (armhf), the project's
# armv7 edgefleet-agent at /pc/agent (the field engineer's CLI) and, on
# the disk /dev/vda (ext4, mounted at /mnt), the agent the device runs:
# app edgefleet-agent at /mnt/opt/edgefleet/bin/edgefleet-agent, started
# at boot and restarted when it exits by agentinit below (Restart=always).
# Its configuration (/pc/agent.yaml, as /run/agent.yaml) has the host's broker (10.0.2.2 on
# QEMU's user network) and the apps hello and edgefleet-agent.
#
# pc.phase=first: the first boot: the agent installs hello from the
#                 fleet; CPU facts, status.
# pc.phase=cut:   the agent runs (EDGEFLEET_FAILPOINT=pc.fp when set); PC:GO
#                 tells the host to publish the agent 2.0.0; the host cuts
#                 the power at the failpoint (PC:KILLED), at a random moment,
#                 or after PC:DONE (the update committed).
# pc.phase=check: the next boot: recovery, the fleet's newer hello, a
#                 settled status.
#
# Lines for the host start with "PC:": PC:UP t, PC:READY t, PC:GO, PC:KILLED,
# PC:ACKSELF committed 2.0.0, PC:DONE, PC:PRE v, PC:HELLO v, PC:FACTS{ ... },
# PC:STATUS{ ... }, PC:SELF v, PC:APP v, PC:SETTLED rc, PC:END.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /pc/modules); do insmod /lib/modules/$m.ko || echo "PC:NOMODULE $m"; done

arg() { tr ' ' '\n' < /proc/cmdline | sed -n "s/^pc\.$1=//p"; }
say() { echo "PC:$*"; }
stop() { sync; say END; while :; do sleep 1000; done; }
up() { cut -d' ' -f1 /proc/uptime; }
PHASE=$(arg phase); FP=$(arg fp)
# pc.dev and pc.channel: this boot's device ID and release channel on the
# host's broker (each cut of a long run is a device of its own).
mkdir -p /run
sed -e "s/^device_id: .*/device_id: $(arg dev)/" -e "s/^  channel: .*/  channel: $(arg channel)/" /pc/agent.yaml > /run/agent.yaml
C="--config /run/agent.yaml"
SELF=/mnt/opt/edgefleet/bin/edgefleet-agent
APP=/mnt/opt/hello/bin/hello

i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
if ! mount -t ext4 /dev/vda /mnt; then say MOUNTFAIL; stop; fi
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
say UP "$(up)"

# agentinit: the device's init for the agent (Restart=always): runs the
# agent from the disk and restarts it when it exits (its self-update
# re-executes in the same process). In the cut phase a SIGKILL (exit
# 137) is a failpoint firing: the host cuts the power on PC:KILLED.
agentinit() {
  while :; do
    $SELF run $C > /dev/console 2>&1; rc=$?
    if [ "$PHASE" = cut ] && [ $rc = 137 ]; then say KILLED; while :; do sleep 1000; done; fi
    echo "agentinit: the agent exited $rc; restarting it" > /dev/console
    sleep 0.5
  done
}

# ready: wait until the daemon answers and is ready for work (status
# says "daemon starting" while it recovers).
ready() {
  i=0
  while :; do
    case "$(/pc/agent status $C 2>/dev/null)" in *"daemon pid"*) return 0 ;; esac
    i=$((i+1)); [ $i -gt 600 ] && { say NODAEMON; return 1; }
    sleep 0.2
  done
}

# wait_app APP VERSION [N]: until status shows APP VERSION committed
# (N tries of 0.2 s, default 900).
wait_app() {
  i=0
  while [ $i -lt "${3:-900}" ]; do
    case "$(/pc/agent status $C 2>/dev/null | grep "^$1 ")" in *"$2"*committed*) return 0 ;; esac
    i=$((i+1)); sleep 0.2
  done
  return 1
}

# block NAME CMD...: CMD's output between PC:NAME{ and PC:NAME}, in one
# write, so that the agent's log lines on the same console stay outside.
block() { n=$1; shift; o=$("$@" 2>&1); printf 'PC:%s{\n%s\nPC:%s}\n' "$n" "$o" "$n"; }

if [ "$PHASE" = first ]; then
  agentinit &
  ready || stop
  say READY "$(up)"
  if wait_app hello 1.0.0; then say HELLO 1.0.0 "$(up)"; else say FAILSTEP hello "$(/pc/agent status $C 2>&1 | grep '^hello ')"; fi
  block FACTS $SELF facts --json
  block STATUS /pc/agent status $C --json
  stop
fi

if [ "$PHASE" = cut ]; then
  [ -n "$FP" ] && export EDGEFLEET_FAILPOINT=$FP
  agentinit &
  ready || stop
  say READY "$(up)"
  say GO
  if wait_app edgefleet-agent 2.0.0; then say ACKSELF committed 2.0.0; else say FAILSTEP self "$(/pc/agent status $C 2>&1 | grep '^edgefleet-agent ')"; fi
  say DONE
  stop
fi

if [ "$PHASE" = check ]; then
  say PRE "$($SELF --version 2>&1 | head -1)"
  agentinit &
  ready || stop
  say READY "$(up)"
  # Settled: the fleet's hello 1.1.0 committed (published while the
  # device was off), the agent itself at the fleet's 2.0.0 committed or
  # rolled back (the update undone and remembered), and the agent's path
  # the same before and after the status was taken.
  i=0; rc=1
  while [ $i -lt 900 ]; do
    # The agent's line before and after the JSON status and the path's
    # version: all unchanged, or look again (a trial commits meanwhile).
    if wait_app hello 1.1.0 1; then
      ag=$(/pc/agent status $C 2>/dev/null | grep '^edgefleet-agent ')
      v1=$($SELF --version 2>&1 | head -1)
      st=$(/pc/agent status $C --json 2>/dev/null)
      v2=$($SELF --version 2>&1 | head -1)
      ag2=$(/pc/agent status $C 2>/dev/null | grep '^edgefleet-agent ')
      case "$ag" in *2.0.0*committed*|*rolled-back*) [ "$v1" = "$v2" ] && [ "$ag" = "$ag2" ] && { rc=0; break; } ;; esac
    fi
    i=$((i+1)); sleep 0.2
  done
  [ -z "$v2" ] && v2=$($SELF --version 2>&1 | head -1)
  [ -z "$st" ] && st=$(/pc/agent status $C --json 2>&1)
  say SETTLED $rc "$(up)"
  block STATUS echo "$st"
  say SELF "$v2"
  say APP "$($APP --version 2>&1 | head -1)"
  stop
fi
say NOPHASE
stop
