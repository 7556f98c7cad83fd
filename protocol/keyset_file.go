package protocol

import (
	"fmt"
	"io"
	"os"
)

// ReadKeySetFile reads a key set message file (a sideload, pack --keyset,
// keyset verify|publish), refusing one above MaxKeySetMessage before
// reading it whole. It does not parse or verify the message.
func ReadKeySetFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxKeySetMessage+1))
	if err != nil {
		return nil, err
	}
	if len(b) > MaxKeySetMessage {
		return nil, fmt.Errorf("%s is larger than a key set message may be (%d bytes): %w", path, MaxKeySetMessage, ErrTooLarge)
	}
	return b, nil
}
