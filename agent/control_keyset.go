package agent

// The keyset control op: `edgefleet-agent keyset FILE` hands a key set
// chain message (protocol/SPEC.md §8.12) to the running daemon, which
// verifies it against its roots (AcceptKeySet) exactly as one from the
// broker.

import (
	"errors"
	"fmt"

	"github.com/edgefleet/edgefleet/protocol"
)

// ReadKeySetFile reads a key set message file, refusing one above the
// protocol limit before reading it whole (protocol.ReadKeySetFile).
func ReadKeySetFile(path string) ([]byte, error) { return protocol.ReadKeySetFile(path) }

// KeySetMessage is the sentence both the daemon and the direct path print
// for an accepted (or already held) key set.
func KeySetMessage(from, to uint64, err error) string {
	if errors.Is(err, protocol.ErrRollback) {
		return fmt.Sprintf("nothing changed: %v", err)
	}
	return fmt.Sprintf("key set version %d accepted (was %d)", to, from)
}

func (d *Daemon) opKeySet(req Request) Response {
	a := d.agent()
	if a == nil {
		return errResult(errors.New("the state database cannot be read; run `edgefleet-agent reset` first"))
	}
	b, err := ReadKeySetFile(req.Bundle)
	if err != nil {
		return errResult(err)
	}
	from := a.Trust().KeySet
	v, err := a.AcceptKeySet(b)
	if err != nil && !errors.Is(err, protocol.ErrRollback) {
		return errResult(err)
	}
	return Response{Type: TypeResult, OK: true, Message: KeySetMessage(from, v, err)}
}
