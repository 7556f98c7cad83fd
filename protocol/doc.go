// Package protocol is the wire contract between the edgefleet packer and the
// edgefleet agent: the release manifest, the minisign signature over it, the
// keyring of trusted public keys and the bundle (.efb) container.
//
// SPEC.md in this directory is the normative description; the test vectors
// under testdata/vectors are run by the tests of this package and by the
// agent's.
//
// # Promises about untrusted input
//
//   - A manifest is parsed strictly (unknown fields, unknown schema versions
//     and absurd sizes are errors) and only after its signature verified
//     against a trusted key.
//   - Every JSON message (manifest, envelope, status) is read with
//     StrictUnmarshal: a key twice in one object, or one that differs from
//     a field name only in case, is refused, so a text has one meaning to
//     every reader. Every string field has a documented maximum.
//   - The bundle reader is a stream. It never hands out a payload byte before
//     the manifest signature has verified, and it hands out a chunk only after
//     that chunk's bytes matched the signed chunk hash, so memory is bounded
//     by one chunk (at most MaxChunkSize), not by the payload.
//   - A bundle's optional first entry keyset.json (at most 256 KiB, read
//     before allocating more) is not covered by the manifest signature: it
//     is handed to the caller unparsed (OpenOptions.KeySet) and trusted only
//     through root threshold signatures (TrustState.Advance).
//   - The reader refuses more bytes than the manifest declares and fails at
//     the end on any size or hash mismatch, including trailing data.
//   - The decoded executable stream checks the signed executable size and
//     sha256; it refuses to produce more bytes than declared.
//
// Every error is wrapped around one of the sentinels in errors.go, so callers
// can tell a security failure (bad signature, unknown key, tampered payload)
// from a malformed or truncated file with errors.Is.
package protocol
