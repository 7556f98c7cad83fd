package fleet

import "testing"

// Remote logs (SPEC.md §8.11): only operators ask; a device reads only its
// own requests and answers only for itself.
func TestACLRemoteLogs(t *testing.T) {
	a := DefaultACL()
	for _, c := range []struct {
		role, id, topic string
		write, want     bool
	}{
		{RoleOperator, "alice", "edgefleet/v1/device/pi-1/logs/request", true, true},
		{RoleOperator, "alice", "edgefleet/v1/device/pi-1/logs", false, true},
		{RoleDevice, "pi-1", "edgefleet/v1/device/pi-1/logs/request", false, true},
		{RoleDevice, "pi-1", "edgefleet/v1/device/pi-1/logs", true, true},
		{RoleDevice, "pi-2", "edgefleet/v1/device/pi-1/logs/request", true, false},
		{RoleDevice, "pi-1", "edgefleet/v1/device/pi-1/logs/request", true, false},
		{RoleDevice, "pi-2", "edgefleet/v1/device/pi-1/logs", false, false},
		{RoleDevice, "pi-2", "edgefleet/v1/device/pi-1/logs", true, false},
	} {
		if got := a.Allowed(c.role, c.id, c.topic, c.write); got != c.want {
			t.Errorf("%s %s write=%v %s: %v, want %v", c.role, c.id, c.write, c.topic, got, c.want)
		}
	}
}
