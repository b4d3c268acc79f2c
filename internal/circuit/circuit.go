// Package circuit joins two byte streams (an operator's channel and a device's
// channel) so that bytes flow both ways, half-close passes through, and the
// bytes are counted.
package circuit

import (
	"io"
	"sync"
	"time"
)

// Stream is one end of a circuit: an SSH channel, or anything that can be
// half-closed the way an SSH channel can.
type Stream interface {
	io.Reader
	io.Writer
	// CloseWrite signals EOF to the peer while still reading from it.
	CloseWrite() error
	// Close tears down both directions.
	Close() error
}

// Stats describes a finished circuit.
type Stats struct {
	// AToB and BToA count the bytes copied in each direction.
	AToB, BToA int64
	Duration   time.Duration
	// Reason says why the circuit ended: "eof" when both sides half-closed
	// cleanly, otherwise the first copy error.
	Reason string
}

// bufSize matches the SSH maximum packet payload of x/crypto/ssh, so one
// read fills at most one packet and no write is split needlessly.
const bufSize = 32 * 1024

var bufPool = sync.Pool{New: func() any { b := make([]byte, bufSize); return &b }}

// Join copies a→b and b→a until both directions reach EOF or either fails,
// then closes both streams. It returns when both copies have finished, so the
// caller owns the two goroutines it runs for their whole life.
func Join(a, b Stream) Stats {
	start := time.Now()
	type result struct {
		n   int64
		err error
	}
	aToB := make(chan result, 1)
	go func() {
		n, err := pipe(b, a)
		aToB <- result{n, err}
	}()
	n, errBA := pipe(a, b)
	r := <-aToB
	a.Close()
	b.Close()
	return Stats{
		AToB:     r.n,
		BToA:     n,
		Duration: time.Since(start),
		Reason:   reason(r.err, errBA),
	}
}

// pipe copies src into dst and half-closes dst when src reaches EOF. On a
// write or read failure it closes both, so that the opposite direction ends
// too instead of waiting forever.
func pipe(dst, src Stream) (int64, error) {
	bp := bufPool.Get().(*[]byte)
	n, err := io.CopyBuffer(onlyWriter{dst}, onlyReader{src}, *bp)
	bufPool.Put(bp)
	if err != nil {
		// A failed direction can never complete; closing both unblocks the
		// other copy, which may be waiting on a peer that will never send.
		src.Close()
		dst.Close()
		return n, err
	}
	// A CloseWrite error means dst is already closed: nothing is left to tell.
	_ = dst.CloseWrite()
	return n, nil
}

func reason(errs ...error) string {
	for _, err := range errs {
		if err != nil {
			return err.Error()
		}
	}
	return "eof"
}

// onlyWriter and onlyReader hide ReadFrom/WriteTo so that io.CopyBuffer uses
// the pooled buffer instead of allocating one per call.
type onlyWriter struct{ io.Writer }
type onlyReader struct{ io.Reader }
