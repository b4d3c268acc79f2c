// Copyright 2026 The switchboard authors. This file is part of
// switchboard's patch to golang.org/x/crypto (see third_party/README.md)
// and is under the same BSD-style license, in the LICENSE file.

package ssh

import (
	"net"
	"syscall"
)

// waitReadable blocks until r, if it is a TCP or Unix socket, has data (or
// EOF, or an error) to read, without holding a buffer: the idle reader of an
// idle connection parks in the network poller with nothing allocated. Other
// readers return at once and are read through a pooled buffer as usual.
// Only concrete socket types are trusted: a wrapper may have buffered data
// of its own that the socket does not show.
func waitReadable(r any) {
	var raw syscall.RawConn
	var err error
	switch c := r.(type) {
	case *net.TCPConn:
		raw, err = c.SyscallConn()
	case *net.UnixConn:
		raw, err = c.SyscallConn()
	default:
		return
	}
	if err != nil {
		return
	}
	_ = raw.Read(func(fd uintptr) bool {
		var b [1]byte
		for {
			_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			switch err {
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				return false // nothing yet: the poller waits for readability
			}
			return true // data, EOF or an error, all for the read to report
		}
	})
}
