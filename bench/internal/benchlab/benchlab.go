// Package benchlab is what the benchmark programs share: processes in a
// temporary lab directory, waiting for conditions, and reading a process's
// memory and CPU time from /proc.
package benchlab

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Lab is a temporary directory and the processes started in it; Close ends
// them (each in its own process group) and removes the directory.
type Lab struct {
	Dir   string
	procs []*exec.Cmd
}

// New makes a lab in a fresh temporary directory.
func New(prefix string) (*Lab, error) {
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		return nil, err
	}
	return &Lab{Dir: dir}, nil
}

// Path joins p under the lab's directory.
func (l *Lab) Path(p ...string) string { return filepath.Join(append([]string{l.Dir}, p...)...) }

// Start runs name in the background with its stderr to stderr (nil: a log
// file in the lab named after the program).
func (l *Lab) Start(stderr io.Writer, name string, args ...string) (*exec.Cmd, error) {
	cmd := exec.Command(name, args...)
	if stderr == nil {
		f, err := os.Create(l.Path(fmt.Sprintf("%s-%d.log", filepath.Base(name), len(l.procs))))
		if err != nil {
			return nil, err
		}
		stderr = f
	}
	cmd.Stderr = stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	l.procs = append(l.procs, cmd)
	return cmd, nil
}

// Stop ends one process started by Start.
func Stop(cmd *exec.Cmd) {
	syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	cmd.Wait()
}

// Close ends every process and removes the directory.
func (l *Lab) Close() {
	for _, p := range l.procs {
		if p.ProcessState == nil {
			Stop(p)
		}
	}
	os.RemoveAll(l.Dir)
}

// Sh runs a command and fails with its output.
func Sh(name string, args ...string) error {
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, out)
	}
	return nil
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// WaitFor polls cond until it holds or d passes.
func WaitFor(d time.Duration, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v", d)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return nil
}

// WaitPort waits until something accepts on 127.0.0.1:port.
func WaitPort(port int) error {
	err := WaitFor(10*time.Second, func() bool {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	if err != nil {
		return fmt.Errorf("nothing listens on port %d", port)
	}
	return nil
}

// Read returns a file's contents, or "" if it cannot be read.
func Read(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

// Memory returns a process's VmRSS and VmHWM in KiB.
func Memory(pid int) (rss, hwm int) {
	for line := range strings.SplitSeq(Read(fmt.Sprintf("/proc/%d/status", pid)), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "VmRSS:" {
			rss, _ = strconv.Atoi(f[1])
		}
		if len(f) >= 2 && f[0] == "VmHWM:" {
			hwm, _ = strconv.Atoi(f[1])
		}
	}
	return rss, hwm
}

// CPUTime is a process's user+system CPU time, from /proc/PID/stat.
func CPUTime(pid int) time.Duration {
	b := []byte(Read(fmt.Sprintf("/proc/%d/stat", pid)))
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 > len(b) {
		return 0
	}
	f := strings.Fields(string(b[i+2:]))
	if len(f) < 13 {
		return 0
	}
	utime, _ := strconv.Atoi(f[11])
	stime, _ := strconv.Atoi(f[12])
	return time.Duration(utime+stime) * (time.Second / 100) // USER_HZ
}

// Log is a concurrency-safe buffer for a process's JSON log lines.
type Log struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *Log) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *Log) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// Count is how many lines so far have msg as their message.
func (l *Log) Count(msg string) int { return strings.Count(l.String(), `"msg":"`+msg+`"`) }
