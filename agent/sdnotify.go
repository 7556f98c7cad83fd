package agent

// The daemon as a systemd notify service (docs/systemd's unit:
// Type=notify, WatchdogSec=). Through coreos/go-systemd's daemon package,
// which needs only the standard library and x/sys (the agent grows by
// 16 KiB on amd64, by nothing on armv7):
//
//   - READY=1 once recovery is done and the apps are started (the moment
//     status stops saying "starting"), so systemd's start timeout catches
//     an agent that hangs before it;
//   - WATCHDOG=1 every half of WATCHDOG_USEC while the daemon's state
//     mutex can be taken, so a wedged daemon is killed and restarted, and
//     a self-update whose new binary hangs after the in-place re-exec (same
//     PID, no new start for systemd to time) stops the pings: the watchdog
//     fires, and the unit's start limit hands over to the rescue unit;
//   - STOPPING=1 when it stops, and STATUS= lines for systemctl status.
//
// Outside systemd (no NOTIFY_SOCKET) every call is a no-op. The variables
// stay in the agent's own environment (the re-exec needs them) but are
// taken out of the apps', health commands' and probes' (childEnv): they
// are not the agent's main process and must not feed its watchdog.

import (
	"context"
	"os"
	"strings"
	"time"

	sddaemon "github.com/coreos/go-systemd/v22/daemon"
)

// notifyVars are the service manager's variables for the main process.
var notifyVars = []string{"NOTIFY_SOCKET=", "WATCHDOG_USEC=", "WATCHDOG_PID="}

// childEnv is the agent's environment without notifyVars, plus extra.
func childEnv(extra []string) []string {
	env := os.Environ()
	out := make([]string, 0, len(env)+len(extra))
	for _, kv := range env {
		keep := true
		for _, p := range notifyVars {
			if strings.HasPrefix(kv, p) {
				keep = false
				break
			}
		}
		if keep {
			out = append(out, kv)
		}
	}
	return append(out, extra...)
}

// notify sends state to the service manager, if there is one. A failure is
// logged once: the agent and its apps keep running without it (systemd
// then times the start out or fires the watchdog, which is the point).
func (d *Daemon) notify(state string) {
	if _, err := sddaemon.SdNotify(false, state); err != nil && d.notifyFailed.CompareAndSwap(false, true) {
		d.logf("cannot notify the service manager (%s): %v", strings.ReplaceAll(state, "\n", " "), err)
	}
}

// watchdog pings the service manager's watchdog until ctx is done, when
// it asks for one (WATCHDOG_USEC, for this PID). Each ping first takes
// the daemon's state mutex: a daemon stuck holding it gets no pings.
func (d *Daemon) watchdog(ctx context.Context) {
	every, err := sddaemon.SdWatchdogEnabled(false)
	if err != nil {
		d.logf("the service manager's watchdog settings: %v (no watchdog pings)", err)
		return
	}
	if every <= 0 {
		return
	}
	every /= 2
	d.logf("systemd watchdog: pinging every %s", every)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		d.mu.Lock()
		//lint:ignore SA2001 taking the lock is the liveness check
		d.mu.Unlock()
		d.notify(sddaemon.SdNotifyWatchdog)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
