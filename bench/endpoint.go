package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// An endpoint is a TCP server in the bench process that the devices forward
// a port to, so that `ssh -W` can move bytes without an inner SSH session: a
// sink counts what it receives until EOF, a source sends a set number of
// bytes and closes.
type endpoint struct {
	ln     net.Listener
	source bool
	send   atomic.Int64  // source: bytes to send on each connection
	done   chan transfer // one per connection that carried bytes
	closed chan struct{}

	mu    sync.Mutex
	conns map[net.Conn]bool
	wg    sync.WaitGroup
}

// A transfer is what one connection carried before EOF or err: the bytes
// a sink received from its first to its last, or those a source sent from
// accepting the connection to closing it.
type transfer struct {
	n           int64
	first, last time.Time
	err         error
}

// ioBuf is the size of the endpoints' reads and writes, and of the clients'
// stdin and stdout copies: large enough that the bench process spends little
// CPU next to the ssh processes it measures.
const ioBuf = 256 << 10

func listen(source bool) (*endpoint, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	e := &endpoint{ln: ln, source: source, done: make(chan transfer, 64),
		closed: make(chan struct{}), conns: map[net.Conn]bool{}}
	e.wg.Add(1)
	go e.serve()
	return e, nil
}

func (e *endpoint) port() int { return e.ln.Addr().(*net.TCPAddr).Port }

func (e *endpoint) serve() {
	defer e.wg.Done()
	for {
		c, err := e.ln.Accept()
		if err != nil {
			return // closed
		}
		e.mu.Lock()
		select {
		case <-e.closed:
			e.mu.Unlock()
			c.Close()
			return
		default:
		}
		e.conns[c] = true
		e.wg.Add(1)
		e.mu.Unlock()
		go func() {
			defer e.wg.Done()
			defer func() {
				e.mu.Lock()
				delete(e.conns, c)
				e.mu.Unlock()
			}()
			c.SetDeadline(time.Now().Add(15 * time.Minute))
			var t transfer
			if e.source {
				t = e.write(c)
			} else {
				t = e.count(c)
			}
			c.Close()
			if t.n == 0 && t.err == nil {
				return // a readiness probe
			}
			select {
			case e.done <- t:
			case <-e.closed:
			}
		}()
	}
}

// count reads c until EOF. A connection that carried nothing is not
// reported: readiness probes open such connections, and a real run always
// sends bytes.
func (e *endpoint) count(c net.Conn) transfer {
	buf := make([]byte, ioBuf)
	var t transfer
	for {
		k, err := c.Read(buf)
		if k > 0 && t.first.IsZero() {
			t.first = time.Now()
		}
		t.n += int64(k)
		if err != nil {
			if !errors.Is(err, io.EOF) {
				t.err = err
			}
			break
		}
	}
	t.last = time.Now()
	return t
}

// write sends e.send zero bytes on c; the caller closes it. The operator
// never sends anything back, so the close cannot discard unread data with a
// reset.
func (e *endpoint) write(c net.Conn) transfer {
	t := transfer{first: time.Now()}
	buf := make([]byte, ioBuf)
	for left := e.send.Load(); left > 0; {
		k, err := c.Write(buf[:min(int64(len(buf)), left)])
		t.n += int64(k)
		left -= int64(k)
		if err != nil {
			t.err = err
			break
		}
	}
	t.last = time.Now()
	return t
}

// wait returns the next n transfers. It is called once the ssh processes
// have exited, so the bytes are already through: it gives up after 30
// seconds.
func (e *endpoint) wait(ctx context.Context, n int) ([]transfer, error) {
	what := "sink"
	if e.source {
		what = "source"
	}
	timeout := time.NewTimer(30 * time.Second)
	defer timeout.Stop()
	var got []transfer
	for len(got) < n {
		select {
		case t := <-e.done:
			if t.err != nil {
				return got, fmt.Errorf("%s: after %d bytes: %w", what, t.n, t.err)
			}
			got = append(got, t)
		case <-timeout.C:
			return got, fmt.Errorf("%s: %d of %d connections never ended, 30s after ssh exited", what, n-len(got), n)
		case <-ctx.Done():
			return got, ctx.Err()
		}
	}
	return got, nil
}

// Close stops accepting, closes open connections and waits for their
// goroutines.
func (e *endpoint) Close() {
	e.mu.Lock()
	close(e.closed)
	for c := range e.conns {
		c.Close()
	}
	e.mu.Unlock()
	e.ln.Close()
	e.wg.Wait()
}
