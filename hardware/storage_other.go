//go:build !linux

package hardware

import "errors"

var errNotLinux = errors.New("device facts need Linux; devices run Linux")

// ReadStorage is only implemented on Linux.
func ReadStorage(path string) (StorageFacts, error) { return StorageFacts{Path: path}, errNotLinux }

// ReadMemory is only implemented on Linux.
func ReadMemory() (MemoryFacts, error) { return MemoryFacts{}, errNotLinux }

// ReadFacts is only implemented on Linux.
func ReadFacts(paths ...string) (Facts, error) {
	c, _ := ReadCPU()
	return Facts{CPU: c}, errNotLinux
}
