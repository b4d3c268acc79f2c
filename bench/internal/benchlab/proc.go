package benchlab

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// StartCmd starts a command the caller has set up (environment, input,
// output) like Start does: in its own process group, ended by Close. It is
// also killed if this process dies first, so a load generator never
// outlives the benchmark that started it.
func (l *Lab) StartCmd(cmd *exec.Cmd) error {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	l.procs = append(l.procs, cmd)
	return nil
}

// Proc is a helper process (a load generator) that the benchmark watches:
// Done is closed when it exits, so a crash is seen at once rather than as
// a timeout. The caller ends it with Stop.
type Proc struct {
	Cmd  *exec.Cmd
	done chan struct{}
	err  error
	once sync.Once
}

// Spawn starts cmd in its own process group, killed if this process dies
// first, and waits for it in the background.
func Spawn(cmd *exec.Cmd) (*Proc, error) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	p := &Proc{Cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Done is closed once the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Err is how the process ended (nil until Done is closed).
func (p *Proc) Err() error {
	select {
	case <-p.done:
		return p.err
	default:
		return nil
	}
}

// Stop ends the process group (SIGTERM, then SIGKILL after 5 s) and waits
// for the process; it may be called more than once.
func (p *Proc) Stop() {
	p.once.Do(func() {
		syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGKILL)
		}
	})
	<-p.done
}

// Descendants returns the processes below pid (children, their children,
// …), read from /proc. Processes that call setsid, like sshd's
// per-connection ones, are still found.
func Descendants(pid int) []int {
	entries, _ := os.ReadDir("/proc")
	children := map[int][]int{}
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if pp := parentPID(p); pp > 0 {
			children[pp] = append(children[pp], p)
		}
	}
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children[p] {
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	return out
}

// parentPID is field 4 of /proc/PID/stat (after the parenthesised name,
// which may itself contain spaces and parentheses).
func parentPID(pid int) int {
	s := Read(fmt.Sprintf("/proc/%d/stat", pid))
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 2 {
		return 0
	}
	pp, _ := strconv.Atoi(f[1])
	return pp
}

// Rollup returns a process's proportional set size (PSS: each shared page
// divided among the processes mapping it) and RSS in KiB, from
// /proc/PID/smaps_rollup; both 0 if the process is gone.
func Rollup(pid int) (pss, rss int) {
	for line := range strings.SplitSeq(Read(fmt.Sprintf("/proc/%d/smaps_rollup", pid)), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "Pss:":
			pss, _ = strconv.Atoi(f[1])
		case "Rss:":
			rss, _ = strconv.Atoi(f[1])
		}
	}
	return pss, rss
}

// Anonymous returns a process's anonymous memory in KiB (its heap, stacks
// and runtime: RSS less the pages mapped from files such as its binary),
// from /proc/PID/smaps_rollup; 0 if the process is gone.
func Anonymous(pid int) int {
	for line := range strings.SplitSeq(Read(fmt.Sprintf("/proc/%d/smaps_rollup", pid)), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "Anonymous:" {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	return 0
}

// CommandLine is how to run this benchmark again: "go run ./PROGRAM" and
// the arguments it was given, without -json FILE (where the figures went
// does not change them).
func CommandLine(program string) string {
	parts := []string{"go", "run", "./" + program}
	args := os.Args[1:]
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "-json" || a == "--json":
			i++
			continue
		case strings.HasPrefix(a, "-json=") || strings.HasPrefix(a, "--json="):
			continue
		}
		if a == "" || strings.ContainsAny(a, " \t\n'\"\\$*?;&|<>()") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		parts = append(parts, a)
	}
	return strings.Join(parts, " ")
}
