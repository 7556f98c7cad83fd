package protocol

import "errors"

// Sentinel errors. Every error returned by this package wraps exactly one of
// these, so callers classify with errors.Is. All of them are fatal for the
// release at hand: retrying the same bytes gives the same answer.
var (
	// ErrMalformed: the bytes are not a well-formed manifest, signature or
	// bundle (bad JSON, wrong tar layout, missing fields).
	ErrMalformed = errors.New("malformed")

	// ErrSchema: the manifest declares a schema version this code does not
	// understand. The fix is a newer agent or an older packer.
	ErrSchema = errors.New("unsupported schema version")

	// ErrTooLarge: a declared or actual size is beyond the limits in SPEC.md.
	ErrTooLarge = errors.New("size limit exceeded")

	// ErrUnknownKey: the signature was made by a key that is not trusted.
	ErrUnknownKey = errors.New("signed by an untrusted key")

	// ErrBadSignature: the signature does not verify with the key it names.
	ErrBadSignature = errors.New("bad signature")

	// ErrPayloadMismatch: payload bytes do not match the signed hashes or
	// sizes (tampering or corruption).
	ErrPayloadMismatch = errors.New("payload does not match the signed manifest")

	// ErrTruncated: the bundle or payload ended before the declared size.
	ErrTruncated = errors.New("truncated")

	// ErrExpired: the manifest's expiry time has passed.
	ErrExpired = errors.New("manifest expired")
)
