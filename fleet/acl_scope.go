package fleet

// Least privilege for devices and operators on the embedded broker
// (protocol/SPEC.md §8.6): on top of the role's ACL patterns,
//
//   - a device subscribes to chunks only by a concrete app and payload
//     sha256 (edgefleet/v1/chunks/<app>/<sha>/<i> or …/<sha>/+): one
//     SUBSCRIBE can never make the broker send more than the release the
//     device is fetching (before, chunks/# sent every chunk of every
//     release: 3.4 MB for a 60-byte packet), and to deltas only by a
//     concrete app and base sha256 (delta/<app>/+/<base>);
//   - a device whose users-file entry lists `channels:` and/or `apps:`
//     reads releases, rollouts and chunks of those only, by concrete
//     names;
//   - operators' credentials are split: `viewer` (status only: reads
//     statuses, releases, rollouts and the key set, writes only its sync
//     markers), `publisher` (publishes releases, chunks, deltas,
//     assignments, rollouts and key sets; cannot write device topics or statuses) and
//     `operator` (admin: everything under edgefleet/v1/, as before).

import (
	"fmt"
	"slices"
	"strings"

	"github.com/edgefleet/edgefleet/protocol"
)

// Operator roles besides RoleOperator (admin).
const (
	RoleViewer    = "viewer"
	RolePublisher = "publisher"
)

// scopedRoles adds the viewer and publisher rules to an ACL that lacks
// them (DefaultACL, or an --acl file written before the split).
func scopedRoles(a *ACL) {
	p := protocol.TopicPrefix
	if _, ok := a.Roles[RoleViewer]; !ok {
		a.Roles[RoleViewer] = RoleRules{
			Read:  []string{p + "device/+/status", p + "device/+/online", p + "device/+/desired/#", p + "release/#", p + "rollout/#", p + "driver", p + "keyset", p + "sync/#"},
			Write: []string{p + "sync/#"},
		}
	}
	if _, ok := a.Roles[RolePublisher]; !ok {
		a.Roles[RolePublisher] = RoleRules{
			Read:  []string{p + "#"},
			Write: []string{p + "release/#", p + "chunks/#", p + "delta/#", p + "device/+/desired/#", p + "rollout/#", p + "keyset", p + "sync/#"},
		}
	}
}

// validRole reports whether role is one a users file may name.
func validRole(role string) bool {
	return role == RoleOperator || role == RoleDevice || role == RoleViewer || role == RolePublisher
}

// checkScope validates a device's channels and apps lists.
func checkScope(u User) error {
	if u.Role != RoleDevice && (len(u.Channels) > 0 || len(u.Apps) > 0) {
		return fmt.Errorf("user %s: channels and apps restrict devices only", u.Name)
	}
	for _, c := range u.Channels {
		if !protocol.ValidChannel(c) {
			return fmt.Errorf("user %s: channel %q is not a valid channel name", u.Name, c)
		}
	}
	for _, a := range u.Apps {
		if !protocol.ValidApp(a) {
			return fmt.Errorf("user %s: app %q is not a valid app name", u.Name, a)
		}
	}
	return nil
}

// deviceScopeAllows applies the device rules above to a topic (or, for
// reads, a subscription filter) that the role's ACL already allows.
func deviceScopeAllows(channels, apps []string, topic string, write bool) (bool, string) {
	if write || !strings.HasPrefix(topic, protocol.TopicPrefix) {
		return true, ""
	}
	lv := strings.Split(strings.TrimPrefix(topic, protocol.TopicPrefix), "/")
	concrete := func(s string) bool { return s != "+" && s != "#" }
	inList := func(list []string, s string) bool { return len(list) == 0 || slices.Contains(list, s) }
	switch lv[0] {
	case "chunks":
		// chunks/<app>/<sha>/<i|+>
		if len(lv) != 4 || !concrete(lv[1]) || !concrete(lv[2]) || lv[3] == "#" {
			return false, "a device subscribes to chunks by app and payload sha256 only (chunks/<app>/<sha>/<i>)"
		}
		if !inList(apps, lv[1]) {
			return false, "app " + lv[1] + " is not among the device's apps"
		}
	case "delta":
		// delta/<app>/<result sha256|+>/<base sha256>: the deltas from the
		// executable the device runs, never a sweep of every base.
		if len(lv) != 4 || !concrete(lv[1]) || !concrete(lv[3]) || lv[2] == "#" {
			return false, "a device subscribes to deltas by app and its own base sha256 only (delta/<app>/+/<base sha256>)"
		}
		if !inList(apps, lv[1]) {
			return false, "app " + lv[1] + " is not among the device's apps"
		}
	case "release", "rollout":
		// release/<channel>/<app>/<profile>/manifest, rollout/<channel>/<app>[/…]
		if len(channels) == 0 && len(apps) == 0 {
			return true, ""
		}
		if len(lv) < 3 || !concrete(lv[1]) || !concrete(lv[2]) {
			return false, "this device may read the releases of its channels and apps only, by name"
		}
		if !inList(channels, lv[1]) {
			return false, "channel " + lv[1] + " is not among the device's channels"
		}
		if !inList(apps, lv[2]) {
			return false, "app " + lv[2] + " is not among the device's apps"
		}
	}
	return true, ""
}
