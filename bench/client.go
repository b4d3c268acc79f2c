package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// A sshRun is what one operator ssh did, and when: it started, first took
// bytes from stdin (after the handshakes, once its session or -W channel
// was open), first wrote to stdout, and exited.
type sshRun struct {
	out                  int64 // bytes written to stdout
	start, fed, got, end time.Time
}

// runSSH runs one operator ssh with the config cfg, feeds it stdin (nil:
// stdin is empty) and counts its stdout. It runs in its own process group,
// killed with its jump-hop ssh when ctx ends.
func runSSH(ctx context.Context, cfg string, stdin *zeros, args ...string) (sshRun, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ssh", append([]string{"-F", cfg}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	if stdin != nil {
		cmd.Stdin = stdin
	} else {
		stdin = &zeros{}
	}
	var stdout counter
	cmd.Stdout = &stdout
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	r := sshRun{start: time.Now()}
	err := cmd.Run()
	r.out, r.fed, r.got, r.end = stdout.n, stdin.fed, stdout.first, time.Now()
	if r.fed.IsZero() {
		r.fed = r.start
	}
	if err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return r, fmt.Errorf("ssh %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return r, nil
}

// pipeBuf is Linux's default pipe capacity: a write larger than it returns
// only once the reader has taken bytes.
const pipeBuf = 64 << 10

// zeros reads as left zero bytes, and notes when ssh first took some. gate,
// if set, is called then, and holds the rest until it returns.
type zeros struct {
	left int64
	gate func()
	fed  time.Time
}

func (z *zeros) Read(p []byte) (int, error) {
	if z.left <= 0 {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), z.left))
	clear(p[:n])
	z.left -= int64(n)
	return n, nil
}

// WriteTo writes in large chunks (io.Copy's are 32 KiB); the first is twice
// the pipe's capacity, so that the time it returns is when ssh began to read.
func (z *zeros) WriteTo(w io.Writer) (int64, error) {
	buf := make([]byte, max(ioBuf, 2*pipeBuf))
	chunk := int64(2 * pipeBuf)
	var total int64
	for z.left > 0 {
		n, err := w.Write(buf[:min(chunk, z.left)])
		total += int64(n)
		z.left -= int64(n)
		if err != nil {
			return total, err
		}
		if z.fed.IsZero() && n > pipeBuf {
			z.fed = time.Now()
			if z.gate != nil {
				z.gate()
			}
		}
		chunk = int64(len(buf))
	}
	return total, nil
}

// counter counts and discards what is written to it, noting when the first
// byte came.
type counter struct {
	n     int64
	first time.Time
}

func (c *counter) Write(p []byte) (int, error) {
	if c.first.IsZero() && len(p) > 0 {
		c.first = time.Now()
	}
	c.n += int64(len(p))
	return len(p), nil
}

// ReadFrom reads in large chunks (io.Copy's are 32 KiB).
func (c *counter) ReadFrom(r io.Reader) (int64, error) {
	buf := make([]byte, ioBuf)
	var total int64
	for {
		n, err := r.Read(buf)
		c.Write(buf[:n])
		total += int64(n)
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// A barrier holds n writers after their first bytes until every one has had
// them taken, so that n circuits carry their data at the same time.
type barrier struct {
	mu     sync.Mutex
	left   int
	open   chan struct{}
	opened time.Time
}

func newBarrier(n int) *barrier { return &barrier{left: n, open: make(chan struct{})} }

// arrive counts one writer in; each must arrive exactly once, also when its
// ssh failed before taking any bytes, or the others wait forever.
func (b *barrier) arrive() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.left--; b.left == 0 {
		b.opened = time.Now()
		close(b.open)
	}
}
