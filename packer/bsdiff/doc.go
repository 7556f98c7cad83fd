// Package bsdiff makes BSDIFF40 patches (daemonology.net/bsdiff's format,
// as kr/binarydist and minio/selfupdate read it) in pure Go, for the
// packer's delta bundles (protocol/SPEC.md §8.10). The algorithm is
// kr/binarydist's port of bsdiff 4 (MIT licence, Copyright 2012 Keith
// Rarick; see LICENSE.binarydist), with int32 suffix arrays and a pure-Go
// bzip2 writer (github.com/dsnet/compress) instead of running `bzip2`.
//
// # Promises
//
//   - Memory: the whole base and result are held in memory, plus 8 bytes
//     per base byte for the suffix sort and 2 bytes per result byte for the
//     diff and extra blocks (about 100 MB for an 8 MB binary). This runs on
//     the operator's host, never on a device.
//   - Input is trusted (the operator's own builds); sizes above 2^31-1
//     bytes are refused.
//   - Output is deterministic: the same inputs give byte-identical patches.
//   - Device memory: the diff and extra streams use bzip2 level 5 by
//     default (DefaultDataLevel), so a device's three decoders need about
//     4.4 MiB; the level is signed in the delta manifest.
package bsdiff
