#!/bin/busybox sh
# PID 1 of the power-cut suite's guest (internal/powercut): busybox, the
# project's static edgefleet-agent at /pc/agent, signed bundles in /pc/b,
# the device's disk at /dev/vda (ext4, mounted at /mnt with pc.mount).
#
# pc.phase=cut:   run workload pc.workload (sideload | daemon | rollback |
#                 mqtt | delta | mqttdelta | self), with EDGEFLEET_FAILPOINT=pc.fp
#                 when set; the host cuts the power (SIGKILL of qemu) at
#                 some moment of it.
# pc.phase=check: the next boot: what the app path holds, recovery by the
#                 daemon, its status, then the next install (1.2.0).
#
# Every line the host reads starts with "PC:" on the serial console:
#   PC:UP t, PC:GO, PC:BEGIN op, PC:ACK state version, PC:KILLED (the
#   failpoint fired), PC:DONE, PC:PRE v, PC:STATUS{ ... PC:STATUS},
#   PC:APP v, PC:RESUMED rc, PC:RESUME{ ... PC:RESUME} (mqttdelta),
#   PC:CATCHUP, PC:NEXT rc, PC:END.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /pc/modules); do insmod /lib/modules/$m.ko 2>/dev/null; done

arg() { tr ' ' '\n' < /proc/cmdline | sed -n "s/^pc\.$1=//p"; }
say() { echo "PC:$*"; }
stop() { sync; say END; while :; do sleep 1000; done; }
PHASE=$(arg phase); WL=$(arg workload); MNT=$(arg mount); FP=$(arg fp); DEV=$(arg dev)
C="--config /pc/agent.yaml"
# pc.dev: this device's ID on the host's broker (mqtt workload), whose
# configuration has the broker section.
if [ -n "$DEV" ]; then
  mkdir -p /run
  sed "s/^device_id: .*/device_id: $DEV/" /pc/agent-mqtt.yaml > /run/agent-mqtt.yaml
  CM="--config /run/agent-mqtt.yaml"
  [ "$PHASE" = cut ] && C=$CM
fi
APP=/mnt/opt/hello/bin/hello
# The self workload: the agent itself is an app on the disk, started by a
# respawning init (selfinit), with a configuration that lists it.
SELF=/mnt/opt/edgefleet/bin/edgefleet-agent
[ "$WL" = self ] && C="--config /pc/agent-self.yaml"

i=0
while [ ! -b /dev/vda ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
if ! mount -t ext4 -o "$MNT" /dev/vda /mnt; then say MOUNTFAIL; stop; fi
say UP "$(cut -d' ' -f1 /proc/uptime)"

if [ -n "$DEV" ]; then
  ip link set lo up
  ip link set eth0 up
  ip addr add 10.0.2.15/24 dev eth0
  ip route add default via 10.0.2.2
fi

# killed RC: a failpoint kills the agent with SIGKILL (exit 137); the
# host cuts the power as soon as it reads PC:KILLED.
killed() { if [ "$1" = 137 ]; then say KILLED; while :; do sleep 1000; done; fi; }

# selfinit: the init system of the self workload (Restart=always): runs
# the agent from the disk and restarts it when it exits (a re-exec keeps
# the process). In the cut phase a SIGKILL from a failpoint is the cut.
selfinit() {
  while :; do
    $SELF run $C > /dev/console 2>&1; rc=$?
    [ "$PHASE" = cut ] && killed $rc
    echo "selfinit: the agent exited $rc; restarting it" > /dev/console
    sleep 0.5
  done
}

daemon() {
  if [ "$WL" = self ]; then
    selfinit &
  else
    /pc/agent run $C > /dev/console 2>&1 &
  fi
  DPID=$!
  # status answers while the daemon recovers ("daemon starting"); wait
  # until it is ready for installs.
  i=0
  while :; do
    st=$(/pc/agent status $C 2>/dev/null)
    case "$st" in *"daemon starting"*) ;; *"daemon pid"*) break ;; esac
    daemon_dead
    if [ ! -d /proc/$DPID ]; then say NODAEMON; return 1; fi
    i=$((i+1)); [ $i -gt 300 ] && { say NODAEMON; return 1; }
    sleep 0.2
  done
}

# ok RC STEP: a step that failed without a power cut is the agent's (or
# the suite's) fault: the host reports it.
ok() { [ "$1" = 0 ] && return 0; say FAILSTEP "$2" exit "$1"; return 1; }

# daemon_dead [RC]: if the daemon died (a failpoint: SIGKILL), say so. A
# killed child stays a zombie until waited for, so kill -0 cannot tell;
# after a failed client step (RC not 0) it may take a moment.
daemon_dead() {
  n=1; [ -n "$1" ] && [ "$1" != 0 ] && n=20
  while [ $n -gt 0 ]; do
    if [ ! -d /proc/$DPID ] || grep -q '^State:[[:space:]]*Z' /proc/$DPID/status 2>/dev/null; then wait $DPID; killed $?; return; fi
    n=$((n-1)); [ $n -gt 0 ] && sleep 0.1
  done
}

if [ "$PHASE" = cut ]; then
  [ -n "$FP" ] && export EDGEFLEET_FAILPOINT=$FP
  case $WL in
  sideload)
    say GO
    say BEGIN sideload
    /pc/agent sideload $C /pc/b/hello-1.1.0.efb; rc=$?; killed $rc
    ok $rc sideload && say ACK trial 1.1.0 ;;
  delta)
    # The signed delta 1.0.0 -> 1.1.0 (bsdiff against the installed
    # executable), sideloaded: staged by patching, then the same swap.
    say GO
    say BEGIN delta
    /pc/agent sideload $C /pc/b/hello-1.1.0.from-1.0.0.efb; rc=$?; killed $rc
    ok $rc delta && say ACK trial 1.1.0 ;;
  self)
    # The agent updates itself: 1.0.0 -> 2.0.0 swapped in, re-executed,
    # its trial, its commit. selfinit says KILLED if a failpoint fires.
    daemon || stop
    say GO
    say BEGIN self
    /pc/agent sideload $C /pc/b/agent-2.0.0.efb; rc=$?
    [ $rc != 0 ] && sleep 3
    if ok $rc self-sideload; then
      i=0
      while :; do
        st=$(/pc/agent status $C 2>/dev/null | grep '^edgefleet-agent ')
        case "$st" in *"2.0.0"*committed*) say ACKSELF committed 2.0.0; break ;; esac
        i=$((i+1)); [ $i -gt 600 ] && { say FAILSTEP self "$st"; break; }
        sleep 0.2
      done
    fi ;;
  daemon)
    daemon || stop
    say GO
    say BEGIN sideload
    /pc/agent sideload $C /pc/b/hello-1.1.0.efb; rc=$?; daemon_dead $rc
    ok $rc sideload && say ACK committed 1.1.0 ;;
  rollback)
    say GO
    say BEGIN sideload
    /pc/agent sideload $C /pc/b/hello-1.1.0.efb; rc=$?; killed $rc
    ok $rc sideload && say ACK trial 1.1.0
    say BEGIN rollback
    /pc/agent rollback $C --reason "power-cut suite" hello; rc=$?; killed $rc
    ok $rc rollback && say ACK rolled-back 1.0.0 ;;
  mqtt|mqttdelta)
    # The daemon downloads 1.1.0 from the host's broker (mqttdelta: as the
    # delta from its installed 1.0.0, which the host published too),
    # installs it and runs the trial; the workload ends when it committed.
    # It starts with the daemon, which fetches at once (a failpoint may
    # fire before status first answers).
    say GO
    say BEGIN mqtt
    daemon || stop
    i=0
    while :; do
      daemon_dead
      st=$(/pc/agent status $C 2>/dev/null | grep '^hello ')
      case "$st" in *"1.1.0"*committed*) say ACK committed 1.1.0; break ;; esac
      i=$((i+1)); [ $i -gt 600 ] && { say FAILSTEP mqtt "$st"; break; }
      sleep 0.2
    done ;;
  esac
  say DONE
  stop
fi

if [ "$PHASE" = check ]; then
  say PRE "$($APP --version 2>&1 | head -1)"
  unset EDGEFLEET_FAILPOINT
  daemon || stop
  # Wait for the trial (if any) to end: a settled state.
  i=0
  while :; do
    st=$(/pc/agent status $C --json 2>/dev/null)
    case "$st" in
    *'"starting"'*|*'"state": "trial"'*|*'"state": "staging"'*|*'"state": "staged"'*|*'"state": "swapping"'*|*'"state": "rolling-back"'*) ;;
    *'"state"'*) break ;;
    esac
    i=$((i+1)); [ $i -gt 150 ] && break
    sleep 0.2
  done
  echo "PC:STATUS{"; echo "$st"; echo "PC:STATUS}"
  [ "$WL" = self ] && say SELF "$($SELF --version 2>&1 | head -1)"
  say APP "$($APP --version 2>&1 | head -1)"
  if [ -z "$DEV" ]; then
    /pc/agent sideload $C /pc/b/hello-1.2.0.efb > /dev/console 2>&1
    say NEXT $?
  else
    # Catch up with the fleet: the host assigns 1.2.0 when it reads
    # CATCHUP; the daemon, now with the broker, downloads and commits it.
    kill $DPID; wait $DPID
    C=$CM
    if [ "$WL" = mqttdelta ]; then
      # First finish what the cut interrupted: 1.1.0 and the delta are
      # still published; by the delta or the full release (the host reads
      # which from the agent's log), or nothing to do.
      daemon || stop
      i=0; rc=1
      while [ $i -lt 600 ]; do
        case "$(/pc/agent status $C 2>/dev/null | grep '^hello ')" in *"1.1.0"*committed*|*rolled-back*) rc=0; break ;; esac
        i=$((i+1)); sleep 0.2
      done
      say RESUMED $rc
      echo "PC:RESUME{"; /pc/agent status $C --json 2>&1; echo "PC:RESUME}"
      say CATCHUP
    else
      say CATCHUP
      daemon || stop
    fi
    i=0; rc=1
    while [ $i -lt 600 ]; do
      case "$(/pc/agent status $C 2>/dev/null | grep '^hello ')" in *"1.2.0"*committed*) rc=0; break ;; esac
      i=$((i+1)); sleep 0.2
    done
    say NEXT $rc
  fi
  echo "PC:FINAL{"; /pc/agent status $C --json 2>&1; echo "PC:FINAL}"
  say FINALAPP "$($APP --version 2>&1 | head -1)"
  stop
fi
say NOPHASE
stop
