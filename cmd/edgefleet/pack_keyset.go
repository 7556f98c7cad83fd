package main

// A key set in every bundle (edgefleet pack --keyset, protocol/SPEC.md §2):
// read the message bounded, and say what devices will make of it.

import (
	"fmt"

	"github.com/edgefleet/edgefleet/protocol"
)

// readKeySetMessage reads a key set chain message file, refusing one above
// the protocol limit before reading it whole, and parses it.
func readKeySetMessage(path string) ([]byte, error) {
	b, err := protocol.ReadKeySetFile(path)
	if err != nil {
		return nil, err
	}
	if _, _, err := protocol.ParseKeySetChain(b); err != nil {
		return nil, fmt.Errorf("%s is not a key set message (make one with edgefleet keyset chain): %w", path, err)
	}
	return b, nil
}

// describeKeySetForPack says what goes into the bundles and warns when the
// newest key set does not name the signing key.
func describeKeySetForPack(msg []byte, key protocol.PrivateKey) string {
	_, docs, err := protocol.ParseKeySetChain(msg)
	if err != nil {
		return ""
	}
	ks := docs[len(docs)-1]
	s := fmt.Sprintf("every bundle carries key set version %d (%d in the chain, %d bytes) as its first entry keyset.json; agents older than this entry refuse such bundles, so use --keyset only once the fleet runs an agent that reads it", ks.Version, len(docs), len(msg))
	if key.ID() == 0 {
		return s
	}
	line := protocol.PublicKeyLine(key.Public().(protocol.PublicKey))
	for _, r := range ks.Release {
		if r.Key == line {
			return s
		}
	}
	var ids []string
	for _, r := range ks.Release {
		if k, err := protocol.ParsePublicKeyLine(r.Key); err == nil {
			ids = append(ids, protocol.KeyID(k.ID()))
		}
	}
	return s + fmt.Sprintf("\nedgefleet pack: warning: key set version %d does not name the signing key %s as a release key (it names %s): devices holding it install these bundles only if %s is in their trusted_keys",
		ks.Version, protocol.KeyID(key.ID()), orNoneList(ids), protocol.KeyID(key.ID()))
}
