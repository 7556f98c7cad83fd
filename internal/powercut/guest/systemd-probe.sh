#!/bin/bash
# The systemd guest's probe (edgefleet-probe.service; internal/powercut,
# systemd_test.go): watches the agent that systemd runs from the units in
# docs/systemd and prints what the host asserts, each line starting with
# "PC:", on the serial console. Not part of edgefleet.
#
# pc.phase=rescue: the agent up at boot, then a self-update to an agent
#   that cannot start (3.0.0), the rescue unit's work, (pc.hang=1) one to
#   an agent that hangs (3.5.0) and its rescue, then a good self-update
#   (4.0.0) during which the host cuts the power (after PC:CUT).
# pc.phase=check:  the boot after the cut: the agent settled.
exec > /dev/ttyS0 2>&1
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
C="--config /etc/edgefleet/agent.yaml"
L=/usr/local/lib/edgefleet-powercut
# The status client: a copy of the agent (the one at the app path is what
# the updates replace).
A=$L/agent
say() { echo "PC:$*"; }
up() { cut -d' ' -f1 /proc/uptime; }
arg() { tr ' ' '\n' < /proc/cmdline | sed -n "s/^pc\.$1=//p"; }
PHASE=$(arg phase)

# settled VERSION SELFSTATES: the daemon answers as agent VERSION (any
# when empty), app edgefleet-agent is in one of SELFSTATES (a|b), and
# hello's process runs.
settled() {
  st=$($A status $C 2>/dev/null) || return 1
  echo "$st" | grep -Eq "agent ${1:-[^ ]+} \(daemon pid" || return 1
  echo "$st" | grep -Eq "^edgefleet-agent .*($2)( |$)" || return 1
  echo "$st" | grep -A1 '^hello ' | grep -q 'process: *running, pid'
}
# unitwatch: one line when the units' states change (informational).
last=
unitwatch() {
  s="agent $(systemctl show -p ActiveState -p SubState -p Result -p NRestarts --value edgefleet-agent.service | tr '\n' ' ')rescue $(systemctl show -p ActiveState -p Result --value edgefleet-agent-rescue.service | tr '\n' ' ')"
  [ "$s" != "$last" ] && say "UNIT $(up) $s"
  last=$s
}
# waitfor SECONDS VERSION SELFSTATES
waitfor() {
  end=$(( $(cut -d. -f1 /proc/uptime) + $1 ))
  while ! settled "$2" "$3"; do
    unitwatch
    [ "$(cut -d. -f1 /proc/uptime)" -gt "$end" ] && return 1
    sleep 0.5
  done
}
report() {
  echo "PC:$1{"; $A status $C --json 2>&1; echo "PC:$1}"
  say "AGENTBIN $(/usr/local/bin/edgefleet-agent --version 2>&1 | head -1)"
  say "MAINPID $(systemctl show -p MainPID --value edgefleet-agent.service)"
}
journal() {
  echo "PC:JOURNAL{"
  journalctl -b --no-pager -o short-monotonic -u edgefleet-agent.service -u edgefleet-agent-rescue.service 2>&1
  echo "PC:JOURNAL}"
}
end() { sync; say END; sleep infinity; }

say "PROBE $(up) $PHASE"
say "ENABLED $(systemctl is-enabled edgefleet-agent.service 2>&1)"
case "$PHASE" in
rescue)
  if ! waitfor 180 2.0.0 committed; then say "FAIL $(up) the agent 2.0.0 did not come up with hello running"; report STATUS1; journal; end; fi
  say "AGENTUP $(up)"
  # Still waiting for a network that is down: the agent (and its apps)
  # must not wait for it.
  say "WAITONLINE $(systemctl is-active systemd-networkd-wait-online.service)"
  report STATUS1
  # Type=notify: active on the agent's READY=1, with its STATUS= line.
  say "SDTYPE $(systemctl show -p Type --value edgefleet-agent.service)"
  say "SDSTATUS $(systemctl show -p StatusText --value edgefleet-agent.service)"
  say "SDWATCHDOG $(systemctl show -p WatchdogUSec --value edgefleet-agent.service)"
  # The new agent exits at start; systemd restarts it until the start
  # limit, then runs the rescue unit, which restores the previous agent
  # and starts the service again.
  say "BEGIN $(up) 3.0.0"
  $A sideload $C --no-wait $L/agent-3.0.0.efb; say "SIDELOAD $? $(up)"
  if ! waitfor 300 2.0.0 rolled-back; then say "FAIL $(up) no rescue: the agent is not back at 2.0.0 with edgefleet-agent rolled back and hello running"; report STATUS2; journal; end; fi
  unitwatch
  say "RESCUED $(up)"
  report STATUS2
  # The rescue unit again, by hand, with the daemon up: it must change
  # nothing (the agent keeps its process).
  systemctl start edgefleet-agent-rescue.service; say "RESCUEAGAIN $?"
  say "MAINPID $(systemctl show -p MainPID --value edgefleet-agent.service)"
  # An agent that hits the start limit for another reason: killed (-9, as
  # an OOM killer would) right after each start. The rescue unit finds
  # nothing on trial, rolls nothing back, and starts it again.
  # (pc.other=1: the long run; about a minute.)
  if [ "$(arg other)" = 1 ]; then
    say "OTHER $(up)"
    kills=0; last=$(systemctl show -p MainPID --value edgefleet-agent.service)
    deadline=$(( $(cut -d. -f1 /proc/uptime) + 240 ))
    rescued() { systemctl show -p InactiveExitTimestampMonotonic --value edgefleet-agent-rescue.service; }
    r0=$(rescued)
    # Until the rescue unit starts again.
    while [ "$(rescued)" = "$r0" ]; do
      [ "$(cut -d. -f1 /proc/uptime)" -gt "$deadline" ] && break
      pid=$(systemctl show -p MainPID --value edgefleet-agent.service)
      if [ "$pid" != 0 ] && [ "$pid" != "$last" -o $kills = 0 ]; then
        kill -9 "$pid" && kills=$((kills+1)); last=$pid
      fi
      sleep 0.2
    done
    say "KILLED $kills $(up)"
    until journalctl -b -u edgefleet-agent-rescue.service | grep -q 'not on trial: nothing to rescue'; do
      [ "$(cut -d. -f1 /proc/uptime)" -gt "$deadline" ] && break
      sleep 0.5
    done
    if ! waitfor 120 2.0.0 rolled-back; then say "FAIL $(up) after a start limit hit for another reason the agent is not running hello again"; fi
    say "OTHERDONE $(up)"
    report STATUS3
  fi
  # A self-update to an agent that hangs at start (3.5.0; pc.hang=1, the
  # long run: about 8 minutes). After the re-exec it never pings: the
  # watchdog (WatchdogSec) kills it; at each start it never says READY:
  # each start times out (TimeoutStartSec); after StartLimitBurst starts
  # the rescue unit restores 2.0.0.
  if [ "$(arg hang)" = 1 ]; then
    rolled() { journalctl -b -u edgefleet-agent-rescue.service | grep -c 'rolled back to 2.0.0'; }
    n0=$(rolled)
    say "HANG $(up)"
    $A sideload $C --no-wait $L/agent-3.5.0.efb; say "SIDELOAD3 $? $(up)"
    deadline=$(( $(cut -d. -f1 /proc/uptime) + 900 ))
    until [ "$(rolled)" -gt "$n0" ]; do
      unitwatch
      [ "$(cut -d. -f1 /proc/uptime)" -gt "$deadline" ] && break
      sleep 1
    done
    if ! waitfor 120 2.0.0 rolled-back; then say "FAIL $(up) no rescue of the agent that hangs: the agent is not back at 2.0.0 with hello running"; report STATUS4; journal; end; fi
    say "HANGDONE $(up)"
    report STATUS4
  fi
  journal
  # Then a good self-update, 2.0.0 -> 4.0.0, during which the host cuts
  # the power (pc.phase=check is the next boot).
  say "CUT $(up)"
  $A sideload $C --no-wait $L/agent-4.0.0.efb; say "SIDELOAD2 $? $(up)"
  waitfor 120 4.0.0 committed
  say "DONE $(up)"
  end ;;
check)
  if ! waitfor 240 '' 'committed|rolled-back'; then say "FAIL $(up) the agent did not settle with hello running"; fi
  unitwatch
  say "SETTLED $(up)"
  report STATUS
  # systemctl stop (KillMode=mixed): SIGTERM to the agent only, which
  # stops hello itself before it exits.
  hp=$($A status $C 2>/dev/null | grep -A1 '^hello ' | sed -n 's/.*running, pid \([0-9]*\).*/\1/p')
  systemctl stop edgefleet-agent.service; say "STOPPED $? $(systemctl show -p Result --value edgefleet-agent.service)"
  if [ -n "$hp" ] && [ -d "/proc/$hp" ]; then say "HELLOAFTERSTOP running $hp"; else say "HELLOAFTERSTOP gone $hp"; fi
  sleep 1
  journal
  end ;;
esac
say "NOPHASE $PHASE"
end
