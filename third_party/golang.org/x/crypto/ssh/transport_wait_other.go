// Copyright 2026 The switchboard authors. This file is part of
// switchboard's patch to golang.org/x/crypto (see third_party/README.md)
// and is under the same BSD-style license, in the LICENSE file.

//go:build !linux

package ssh

// waitReadable returns at once where peeking at a socket is not wired up:
// the reader then waits in its read, holding a pooled buffer.
func waitReadable(any) {}
