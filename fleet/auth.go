package fleet

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/edgefleet/edgefleet/protocol"
	"golang.org/x/crypto/bcrypt"
	"gopkg.in/yaml.v3"
)

// Roles a broker user can have.
const (
	RoleOperator = "operator"
	RoleDevice   = "device"
)

// User is one entry of the broker's users file.
type User struct {
	Name string `yaml:"name"`
	// PasswordHash is a bcrypt hash ("$2a$..."); make one with
	// `edgefleet passwd`.
	PasswordHash string `yaml:"password_hash"`
	// Role is "operator" (admin), "publisher", "viewer" (acl_scope.go) or
	// "device". A device's name is its device id (and must be its MQTT
	// client id).
	Role string `yaml:"role"`
	// Channels and Apps, for a device, restrict what it may read to those
	// channels' and apps' releases, rollouts and chunks (acl_scope.go).
	// Empty: any.
	Channels []string `yaml:"channels,omitempty"`
	Apps     []string `yaml:"apps,omitempty"`
}

// UsersFile is the YAML users file of `edgefleet broker --users`.
type UsersFile struct {
	Users []User `yaml:"users"`
}

// LoadUsers reads and validates a users file (strict: unknown keys are errors).
func LoadUsers(path string) (map[string]User, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("users file: %w", err)
	}
	var f UsersFile
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("users file %s: %w", path, err)
	}
	users := map[string]User{}
	for i, u := range f.Users {
		if !validRole(u.Role) {
			return nil, fmt.Errorf("users file %s: user %q has role %q, want operator, publisher, viewer or device", path, u.Name, u.Role)
		}
		if err := checkScope(u); err != nil {
			return nil, fmt.Errorf("users file %s: %w", path, err)
		}
		// A device's name is its client id (no '.', which NATS refuses);
		// an operator's is only a user name and may keep its dots.
		if u.Role == RoleDevice {
			if err := protocol.CheckDeviceID(u.Name); err != nil {
				return nil, fmt.Errorf("users file %s: user %d: %v", path, i, err)
			}
		} else if !protocol.ValidDeviceID(strings.ReplaceAll(u.Name, ".", "-")) {
			return nil, fmt.Errorf("users file %s: user %d name %q: use letters, digits, . _ - (at most 64)", path, i, u.Name)
		}
		if _, err := bcrypt.Cost([]byte(u.PasswordHash)); err != nil {
			return nil, fmt.Errorf("users file %s: user %s: password_hash is not a bcrypt hash (make one with 'edgefleet passwd'): %w", path, u.Name, err)
		}
		if _, dup := users[u.Name]; dup {
			return nil, fmt.Errorf("users file %s: user %s listed twice", path, u.Name)
		}
		users[u.Name] = u
	}
	return users, nil
}

// HashPassword returns a bcrypt hash for a users file.
func HashPassword(password string) (string, error) {
	if len(password) < 8 {
		return "", errors.New("the password is shorter than 8 characters; pick a longer one")
	}
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.DefaultCost)
	return string(h), err
}

// ACL is the access rules per role. Patterns are MQTT filters in which %u
// stands for the client's identity (user name or certificate CN), as in
// Mosquitto's "pattern" lines.
type ACL struct {
	Roles map[string]RoleRules `yaml:"roles"`
}

// RoleRules lists the filters a role may read (subscribe and receive) and
// write (publish).
type RoleRules struct {
	Read  []string `yaml:"read"`
	Write []string `yaml:"write"`
}

// DefaultACL is the rule set of SPEC.md §MQTT: devices read releases,
// chunks and their own desired releases, and write only their own status;
// operators read everything and write under edgefleet/v1/.
func DefaultACL() *ACL {
	p := protocol.TopicPrefix
	a := &ACL{Roles: map[string]RoleRules{
		RoleDevice: {
			Read:  []string{p + "release/#", p + "rollout/#", p + "chunks/#", p + "delta/#", p + "device/%u/desired/#", p + "device/%u/sync", p + "device/%u/logs/request", p + "keyset"},
			Write: []string{p + "device/%u/status", p + "device/%u/online", p + "device/%u/sync", p + "device/%u/logs"},
		},
		RoleOperator: {
			Read:  []string{"#"},
			Write: []string{p + "#"},
		},
	}}
	scopedRoles(a) // viewer, publisher (acl_scope.go)
	return a
}

// LoadACL reads an ACL file (strict).
func LoadACL(path string) (*ACL, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("acl file: %w", err)
	}
	var a ACL
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&a); err != nil {
		return nil, fmt.Errorf("acl file %s: %w", path, err)
	}
	for role, r := range a.Roles {
		if !validRole(role) {
			return nil, fmt.Errorf("acl file %s: unknown role %q, want operator, publisher, viewer or device", path, role)
		}
		for _, f := range append(append([]string{}, r.Read...), r.Write...) {
			if err := validFilter(f); err != nil {
				return nil, fmt.Errorf("acl file %s: role %s: %w", path, role, err)
			}
		}
	}
	scopedRoles(&a)
	return &a, nil
}

func validFilter(f string) error {
	if f == "" || len(f) > 512 {
		return fmt.Errorf("filter %q is empty or too long", f)
	}
	lv := strings.Split(f, "/")
	for i, l := range lv {
		if strings.Contains(l, "#") && (l != "#" || i != len(lv)-1) {
			return fmt.Errorf("filter %q: '#' must be a whole last level", f)
		}
		if strings.Contains(l, "+") && l != "+" {
			return fmt.Errorf("filter %q: '+' must be a whole level", f)
		}
	}
	return nil
}

// Allowed reports whether identity with role may read or write topic (a
// topic name, or for reads a subscription filter, which must then be
// entirely inside an allowed pattern).
func (a *ACL) Allowed(role, identity, topic string, write bool) bool {
	r, ok := a.Roles[role]
	if !ok {
		return false
	}
	pats := r.Read
	if write {
		pats = r.Write
		if strings.ContainsAny(topic, "+#") {
			return false
		}
	}
	for _, p := range pats {
		if strings.Contains(p, "%u") {
			if strings.ContainsAny(identity, "/+#") || identity == "" {
				continue
			}
			p = strings.ReplaceAll(p, "%u", identity)
		}
		if filterCovers(p, topic) {
			return true
		}
	}
	return false
}

// filterCovers reports whether every topic matched by filter f (or the
// topic name f) is matched by pattern p. Topics starting with '$' are only
// matched by patterns that name the '$' level.
func filterCovers(p, f string) bool {
	pl, fl := strings.Split(p, "/"), strings.Split(f, "/")
	if strings.HasPrefix(f, "$") && (pl[0] == "#" || pl[0] == "+") {
		return false
	}
	for i, x := range pl {
		if x == "#" {
			return true
		}
		if i >= len(fl) {
			return false
		}
		y := fl[i]
		switch {
		case y == "#":
			return false // f reaches deeper than p allows
		case x == "+":
		case x == y:
		default:
			return false
		}
	}
	return len(fl) == len(pl)
}
