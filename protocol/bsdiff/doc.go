// Package bsdiff applies BSDIFF40 patches (the format of
// daemonology.net/bsdiff, kr/binarydist and minio/selfupdate's patcher) as
// a stream, for the edgefleet agent's delta updates (SPEC.md §8.10).
//
// # Promises
//
//   - Memory: bounded by fixed buffers (about 64 KiB) plus the three bzip2
//     decoders, each of which allocates 400 KB × its stream's declared
//     block-size level (1..9); Options.MaxBzip2Level caps that level before
//     any decoder is made. Memory does not grow with the size of the base,
//     the patch or the result: the base is read with ReadAt at the offsets
//     the patch names, the result is written sequentially.
//   - Untrusted input: a patch is treated as hostile even when its delta
//     manifest verified (a validly signed patch may still be made by a
//     compromised or buggy packer). Every control entry is checked before
//     it is acted on: no read outside [0, base size), no byte written past
//     the declared result size, no negative or overflowing lengths, at most
//     Options.MaxControlEntries entries, streams that must end exactly where
//     the result ends (trailing data, truncated or corrupt streams are
//     refused). Every refusal wraps protocol.ErrMalformed,
//     protocol.ErrTruncated or protocol.ErrTooLarge and says what was wrong.
//   - Crashes: Apply writes only to the io.Writer it is given (the caller's
//     staging file); on error the caller discards it. Apply has no state.
//
// The diff side (making patches) lives in packer/bsdiff; the device binary
// never links it.
package bsdiff
