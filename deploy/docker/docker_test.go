// Package docker_test tests deploy/docker without Docker: this project's machines and CI have
// no Docker engine, so the images are never built here. What the images run is run for real:
// entrypoint.sh starts a real sshd and the real agent against a real `switchboard serve`, an
// operator reaches that sshd with stock `ssh -J`, and enroll-demo.sh (the compose file's
// enrolment job) writes the credentials. The Dockerfiles and the compose file are checked
// statically: what they copy and mount exists, and the devices' network has no way in.
package docker_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// Files under test, relative to this package's directory (deploy/docker), where go test runs.
const (
	entrypoint  = "device/entrypoint.sh"
	enrollDemo  = "enroll-demo.sh"
	composeFile = "docker-compose.yml"
	repoRoot    = "../.." // every Dockerfile's build context
)

var dockerfiles = []string{
	"server/Dockerfile",
	"device/Dockerfile.ubuntu",
	"device/Dockerfile.fedora",
	"device/Dockerfile.arch",
}

// Bounds for waits; nothing sleeps for them.
const (
	startTimeout = 15 * time.Second // a process is up and did what we wait for
	runTimeout   = 20 * time.Second // one short command
)

// need skips the test when a program it drives is missing, or fails it when CI=true.
func need(t testing.TB, programs ...string) {
	t.Helper()
	for _, p := range programs {
		if _, err := exec.LookPath(p); err != nil {
			msg := fmt.Sprintf("%s is not installed (or not on PATH), and this test drives it (scripts/test-deps.sh installs it)", p)
			if os.Getenv("CI") == "true" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
}

// ---------------------------------------------------------------------------
// The switchboard binary, built once for the tests that run it.

var (
	buildOnce sync.Once
	binDir    string
	binPath   string
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

func switchboardBin(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "switchboard-docker-test-")
		if buildErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "switchboard")
		gobin := "go"
		if p, err := exec.LookPath("go"); err == nil {
			gobin = p
		} else if root := os.Getenv("GOROOT"); root != "" {
			gobin = filepath.Join(root, "bin", "go")
		}
		cmd := exec.Command(gobin, "build", "-o", binPath, "./cmd/switchboard")
		cmd.Dir = repoRoot
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/switchboard: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// ---------------------------------------------------------------------------
// Processes.

// childEnv is the environment of every child: the test's, without an ssh agent or proxies,
// in the C locale, plus extra (NAME=VALUE).
func childEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch strings.ToUpper(k) {
		case "SSH_AUTH_SOCK", "SSH_AGENT_PID", "SSH_ASKPASS", "DISPLAY", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "LC_ALL", "LANG", "LANGUAGE":
			continue
		}
		env = append(env, kv)
	}
	return append(append(env, "LC_ALL=C"), extra...)
}

// proc is a long-running child in its own process group, its output in a file. The file
// (not a pipe) lets Wait return as soon as the child exits, even while a grandchild it left
// behind (entrypoint.sh's sshd) still holds the output open.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{} // closed when Wait returned
}

// start starts name with args and env in its own process group. Cleanup kills the group.
func start(t testing.TB, dir, name string, env []string, bin string, args ...string) *proc {
	t.Helper()
	logPath := filepath.Join(dir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p := &proc{name: name, cmd: exec.Command(bin, args...), log: logPath, done: make(chan struct{})}
	p.cmd.Env = env
	p.cmd.Stdout, p.cmd.Stderr = f, f
	// Setpgid: the group is what cleanup kills, sshd included. Pdeathsig: nothing of the
	// group's leader outlives a crashed test binary.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			t.Errorf("%s (pid %d) did not exit after SIGKILL", name, p.cmd.Process.Pid)
		}
		if t.Failed() {
			t.Logf("%s's output:\n%s", name, tail(p.output(), 40))
		}
	})
	return p
}

func (p *proc) output() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// run runs a short command to its end and returns its exit code, stdout and stderr.
func run(t testing.TB, env []string, bin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = env
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	// Setsid: no controlling terminal, so that ssh can never stop to ask for anything.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 2 * time.Second
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit):
		code = exit.ExitCode()
	default:
		t.Fatalf("%s %s: %v\nstderr: %s", bin, strings.Join(args, " "), err, e.String())
	}
	return code, o.String(), e.String()
}

// await polls cond until it holds, and fails the test after timeout; what names it.
func await(t testing.TB, timeout time.Duration, what string, cond func() bool, procs ...*proc) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		for _, p := range procs {
			if p.exited() {
				t.Fatalf("waiting for %s: %s exited (%v)", what, p.name, p.cmd.ProcessState)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: not done after %v", what, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// logLine reports whether the server's JSON log has a line with msg and every key=value of kv.
func logLine(log, msg string, kv ...string) bool {
	for _, line := range strings.Split(log, "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) != nil || m["msg"] != msg {
			continue
		}
		ok := true
		for i := 0; i+1 < len(kv); i += 2 {
			if fmt.Sprint(m[kv[i]]) != kv[i+1] {
				ok = false
			}
		}
		if ok {
			return true
		}
	}
	return false
}

// groupMembers lists the live (not zombie) processes in process group pgid.
func groupMembers(t testing.TB, pgid int) []int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue // gone meanwhile
		}
		// "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
		s := string(stat)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) < 3 || f[0] == "Z" || f[0] == "X" {
			continue
		}
		if g, _ := strconv.Atoi(f[2]); g == pgid {
			pids = append(pids, pid)
		}
	}
	return pids
}

// ---------------------------------------------------------------------------
// entrypoint.sh and enroll-demo.sh, for real.

// TestEntrypoint runs the demo's flow outside Docker: a server, enroll-demo.sh writing the
// credentials as the compose file's enroll job does, entrypoint.sh as a device container runs
// it, and an operator's ssh -J and scp -J through the server to the sshd entrypoint.sh
// started. Then SIGTERM, which must reach the agent (exec) and end it with status 0.
func TestEntrypoint(t *testing.T) {
	need(t, "ssh", "scp", "ssh-keygen", "/usr/sbin/sshd")
	sb := switchboardBin(t)
	keygen, _ := exec.LookPath("ssh-keygen")
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	out := filepath.Join(dir, "enroll")

	// The server, as in the compose file: --public-addr is what enroll pins and dials, so the
	// port is chosen first (and chosen again should another process take it meanwhile).
	var srv *proc
	var pivot string
	for try := 1; ; try++ {
		pivot = fmt.Sprintf("127.0.0.1:%d", freePort(t))
		srv = start(t, dir, fmt.Sprintf("server-%d", try), childEnv(), sb, "serve", "--listen", pivot,
			"--state-dir", state, "--public-addr", pivot, "--mqtt-listen", "127.0.0.1:0")
		await(t, startTimeout, "the server to listen", func() bool {
			return srv.exited() || logLine(srv.output(), "listening", "component", "sshd")
		})
		if !srv.exited() {
			break
		}
		if try == 3 || !strings.Contains(srv.output(), "address already in use") {
			t.Fatalf("the server exited: %v\n%s", srv.cmd.ProcessState, srv.output())
		}
	}

	// The enrolment job, with the paths of this directory instead of the containers'.
	// DEVICE_DIR is where dev1 finds its files (dev2, on demand, is enrolled but not run).
	enrollEnv := childEnv("SWITCHBOARD="+sb, "STATE_DIR="+state, "OUT_DIR="+out,
		"DEVICE_DIR="+filepath.Join(out, "dev1"), "OPERATOR_SSH_DIR="+filepath.Join(out, "alice"), "WAIT=10")
	demoArgs := []string{"operator:alice", "device:dev1", "on-demand:dev2"}
	code, _, stderr := run(t, enrollEnv, "./"+enrollDemo, demoArgs...)
	if code != 0 {
		t.Fatalf("enroll-demo.sh exited %d:\n%s", code, stderr)
	}
	authKeys, _ := os.ReadFile(filepath.Join(state, "authorized_keys"))
	for _, want := range []string{`access="listen",hostname="dev1"`, `access="listen",hostname="dev2"`, `access="initiate"`} {
		if !strings.Contains(string(authKeys), want) {
			t.Errorf("the server's authorized_keys has no %s line:\n%s", want, authKeys)
		}
	}
	alicePub := readFile(t, filepath.Join(out, "alice", "id_ed25519.pub"))
	for _, dev := range []string{"dev1", "dev2"} {
		if got := readFile(t, filepath.Join(out, dev, "authorized_keys")); got != alicePub {
			t.Errorf("%s/authorized_keys = %q, want alice's public key %q", dev, got, alicePub)
		}
	}
	if y := readFile(t, filepath.Join(out, "dev2", "agent.yaml")); !strings.Contains(y, "on_demand: true") {
		t.Errorf("dev2's agent.yaml is not on demand:\n%s", y)
	}
	// The job runs at every `docker compose up`: a second run keeps what the first wrote.
	dev1Key := readFile(t, filepath.Join(out, "dev1", "id_ed25519"))
	if code, _, stderr := run(t, enrollEnv, "./"+enrollDemo, demoArgs...); code != 0 || !strings.Contains(stderr, "dev1: enrolled before; kept") {
		t.Fatalf("enroll-demo.sh, run again, exited %d:\n%s", code, stderr)
	}
	if readFile(t, filepath.Join(out, "dev1", "id_ed25519")) != dev1Key {
		t.Fatal("enroll-demo.sh, run again, replaced dev1's key")
	}

	// The device. The agent's forward points at the port this sshd got (agent.yaml says 22).
	sshdPort := freePort(t)
	hostKeys, runDir := filepath.Join(dir, "host-keys"), filepath.Join(dir, "run")
	dev := start(t, dir, "entrypoint", childEnv(
		"SWITCHBOARD="+sb, "SWITCHBOARD_ETC="+filepath.Join(out, "dev1"),
		"SSHD=/usr/sbin/sshd", "SSH_KEYGEN="+keygen, "SSHD_HOST_KEY_DIR="+hostKeys, "SSHD_RUN_DIR="+runDir,
		"SSHD_PORT="+strconv.Itoa(sshdPort), "SSHD_LISTEN=127.0.0.1",
		// The temporary directory is under the world-writable /tmp, which StrictModes refuses.
		"SSHD_STRICT_MODES=no",
	), "./"+entrypoint, "--forward", fmt.Sprintf("22:127.0.0.1:%d", sshdPort))
	t.Cleanup(func() {
		// Should a broken entrypoint.sh take sshd out of its process group, which start's
		// cleanup kills, this sshd must still not outlive the test.
		b, err := os.ReadFile(filepath.Join(runDir, "sshd.pid"))
		if pid, _ := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 0 {
			if cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); strings.Contains(string(cmd), runDir) {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})

	hostKey := filepath.Join(hostKeys, "ssh_host_ed25519_key")
	await(t, startTimeout, "the sshd host key", func() bool {
		_, err1 := os.Stat(hostKey)
		_, err2 := os.Stat(hostKey + ".pub")
		return err1 == nil && err2 == nil
	}, dev)
	if fi, err := os.Stat(hostKey); err != nil {
		t.Error(err)
	} else if fi.Mode().Perm() != 0o600 {
		t.Errorf("host key %s has mode %v, want 0600", hostKey, fi.Mode().Perm())
	}
	await(t, startTimeout, "sshd to listen on 127.0.0.1:"+strconv.Itoa(sshdPort), func() bool {
		return strings.HasPrefix(banner(fmt.Sprintf("127.0.0.1:%d", sshdPort)), "SSH-2.0-OpenSSH")
	}, dev)
	await(t, startTimeout, "the server to log dev1's registration", func() bool {
		return logLine(srv.output(), "device registered", "device", "dev1", "port", "22")
	}, dev, srv)

	// exec: the entrypoint's process is now the agent, so docker stop's SIGTERM reaches it.
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", dev.cmd.Process.Pid))
	if args := strings.Split(string(cmdline), "\x00"); len(args) < 2 || args[0] != sb || args[1] != "agent" {
		t.Errorf("the entrypoint's process runs %q, want %s agent … (exec)", args, sb)
	}
	// sshd is in the entrypoint's process group: killing the group ends it too.
	sshdPid, err := strconv.Atoi(strings.TrimSpace(readFile(t, filepath.Join(runDir, "sshd.pid"))))
	if err != nil {
		t.Fatalf("sshd.pid: %v", err)
	}
	if pgid, err := syscall.Getpgid(sshdPid); err != nil || pgid != dev.cmd.Process.Pid {
		t.Errorf("sshd (pid %d) is in process group %d (%v), want the entrypoint's, %d", sshdPid, pgid, err, dev.cmd.Process.Pid)
	}
	if !strings.Contains(dev.output(), "switchboard-device: sshd (pid "+strconv.Itoa(sshdPid)+")") {
		t.Errorf("the entrypoint did not report sshd's pid %d:\n%s", sshdPid, dev.output())
	}

	// The operator: alice's ssh config (written by enroll-demo.sh), and dev1's host key
	// pinned under its name, as an operator would after checking the fingerprint.
	alice := filepath.Join(out, "alice")
	devHosts := filepath.Join(dir, "operator_known_hosts")
	writeFile(t, devHosts, "dev1 "+readFile(t, hostKey+".pub"))
	ssh := []string{"-F", filepath.Join(alice, "config"), "-i", filepath.Join(alice, "id_ed25519"),
		"-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "UserKnownHostsFile=" + devHosts,
		"-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=10",
		"-J", "pivot"}
	code, stdout, stderr := run(t, childEnv(), "ssh", append(ssh, "dev1", "echo reached $(id -un)")...)
	if want := "reached " + me.Username; code != 0 || strings.TrimSpace(stdout) != want {
		t.Fatalf("ssh -J pivot dev1: exit %d, stdout %q, want %q; stderr:\n%s", code, stdout, want, stderr)
	}
	// scp speaks SFTP: the config's "Subsystem sftp internal-sftp".
	payload := filepath.Join(dir, "payload")
	writeFile(t, payload, "through the switchboard\n")
	code, _, stderr = run(t, childEnv(), "scp", append(ssh, "-q", payload, "dev1:"+payload+".copy")...)
	if code != 0 {
		t.Fatalf("scp -J pivot to dev1: exit %d:\n%s", code, stderr)
	}
	if got := readFile(t, payload+".copy"); got != "through the switchboard\n" {
		t.Fatalf("scp copied %q", got)
	}

	// Keys only: without one, the device's sshd offers nothing else to try.
	code, _, stderr = run(t, childEnv(), "ssh", append(ssh, "-o", "PubkeyAuthentication=no", "dev1", "true")...)
	if code == 0 || !strings.Contains(stderr, "Permission denied (publickey)") {
		t.Errorf("ssh -J pivot dev1 without a key: exit %d, want 255 and \"Permission denied (publickey)\"; stderr:\n%s", code, stderr)
	}

	// docker stop: SIGTERM to the container's main process, the agent, which exits 0.
	if err := dev.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-dev.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the agent did not exit within 10s of SIGTERM")
	}
	if code := dev.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("the agent exited %d after SIGTERM, want 0:\n%s", code, tail(dev.output(), 20))
	}

	// What Docker does when the main process ends, the test does to the process group: nothing
	// of the device may be left.
	pgid := dev.cmd.Process.Pid
	syscall.Kill(-pgid, syscall.SIGTERM)
	await(t, 5*time.Second, "the entrypoint's process group to be empty", func() bool {
		return len(groupMembers(t, pgid)) == 0
	})
}

// banner returns the first line a TCP server at addr sends, or "".
func banner(addr string) string {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return ""
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	b := make([]byte, 64)
	n, _ := c.Read(b)
	return string(b[:n])
}

func readFile(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func writeFile(t testing.TB, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestEntrypointRefuses checks that entrypoint.sh stops at once, with one clear line and
// status 1, when the agent could not start, and starts nothing before that. It runs under
// each shell that may be a device image's /bin/sh: dash (Ubuntu), bash (Fedora, Arch).
func TestEntrypointRefuses(t *testing.T) {
	shells := []string{"dash", "bash"}
	if os.Getenv("CI") == "true" {
		need(t, shells...)
	}
	for _, sh := range shells {
		shPath, err := exec.LookPath(sh)
		if err != nil {
			t.Logf("%s is not installed: entrypoint.sh not tried under it", sh)
			continue
		}
		t.Run(sh, func(t *testing.T) {
			dir := t.TempDir()
			config := filepath.Join(dir, "agent.yaml")
			cases := []struct {
				name   string
				config bool   // write agent.yaml
				bin    string // SWITCHBOARD
				want   string
			}{
				{"no config", false, "/bin/true", "switchboard-device: no agent config at " + config + ": mount the directory that 'switchboard enroll NAME --role device' wrote at " + dir + ", or set SWITCHBOARD_CONFIG"},
				{"no binary", true, filepath.Join(dir, "nope"), "switchboard-device: no switchboard binary at " + filepath.Join(dir, "nope") + " (set SWITCHBOARD)"},
			}
			for _, c := range cases {
				os.Remove(config)
				if c.config {
					writeFile(t, config, "server: x:22\n")
				}
				hostKeys, runDir := filepath.Join(dir, "host-keys"), filepath.Join(dir, "run")
				code, stdout, stderr := run(t, childEnv("SWITCHBOARD="+c.bin, "SWITCHBOARD_ETC="+dir,
					"SSHD_HOST_KEY_DIR="+hostKeys, "SSHD_RUN_DIR="+runDir, "SSHD=/bin/false"), shPath, "./"+entrypoint)
				if code != 1 || stdout != "" || stderr != c.want+"\n" {
					t.Errorf("%s: exit %d, stdout %q, stderr %q; want exit 1 and the one line %q", c.name, code, stdout, stderr, c.want)
				}
				for _, d := range []string{hostKeys, runDir} {
					if _, err := os.Stat(d); err == nil {
						t.Errorf("%s: the entrypoint created %s before failing", c.name, d)
					}
				}
			}
		})
	}
}

// TestShellcheck lints both scripts the images and the compose file run.
func TestShellcheck(t *testing.T) {
	need(t, "shellcheck")
	code, stdout, stderr := run(t, childEnv(), "shellcheck", entrypoint, enrollDemo)
	if code != 0 {
		t.Errorf("shellcheck: exit %d\n%s%s", code, stdout, stderr)
	}
}

// ---------------------------------------------------------------------------
// Dockerfiles.

// instruction is one Dockerfile instruction, its continuation lines joined.
type instruction struct {
	line int    // where it starts
	cmd  string // upper case: FROM, COPY, …
	args string
}

func parseDockerfile(t testing.TB, path string) []instruction {
	t.Helper()
	var out []instruction
	var cur strings.Builder
	start := 0
	for i, line := range strings.Split(readFile(t, path), "\n") {
		trimmed := strings.TrimSpace(line)
		if trimmed == "" || strings.HasPrefix(trimmed, "#") {
			continue // comments may sit between continuation lines too
		}
		if cur.Len() == 0 {
			start = i + 1
		}
		if strings.HasSuffix(trimmed, `\`) {
			cur.WriteString(strings.TrimSuffix(trimmed, `\`) + " ")
			continue
		}
		cur.WriteString(trimmed)
		cmd, args, _ := strings.Cut(cur.String(), " ")
		out = append(out, instruction{start, strings.ToUpper(cmd), strings.TrimSpace(args)})
		cur.Reset()
	}
	if cur.Len() != 0 {
		t.Fatalf("%s: ends in a continuation line", path)
	}
	return out
}

// words splits an instruction's arguments: the JSON form, or on white space.
func words(args string) []string {
	var w []string
	if strings.HasPrefix(args, "[") && json.Unmarshal([]byte(args), &w) == nil {
		return w
	}
	return strings.Fields(args)
}

// copyArgs splits COPY/ADD arguments into flags, sources and the destination.
func copyArgs(args string) (flags map[string]string, srcs []string, dest string) {
	flags = map[string]string{}
	w := words(args)
	for len(w) > 0 && strings.HasPrefix(w[0], "--") {
		k, v, _ := strings.Cut(strings.TrimPrefix(w[0], "--"), "=")
		flags[k] = v
		w = w[1:]
	}
	if len(w) == 0 {
		return flags, nil, ""
	}
	return flags, w[:len(w)-1], w[len(w)-1]
}

// stage returns the instructions of the stage named name (FROM … AS name), FROM excluded.
func stage(ins []instruction, name string) []instruction {
	var out []instruction
	in := false
	for _, i := range ins {
		if i.cmd == "FROM" {
			w := strings.Fields(i.args)
			in = len(w) >= 3 && strings.EqualFold(w[len(w)-2], "AS") && w[len(w)-1] == name
			continue
		}
		if in {
			out = append(out, i)
		}
	}
	return out
}

// finalStage returns the last stage's FROM image and instructions.
func finalStage(ins []instruction) (from string, out []instruction) {
	for _, i := range ins {
		if i.cmd == "FROM" {
			w := strings.Fields(i.args)
			from, out = w[0], nil
			if strings.HasPrefix(from, "--platform") && len(w) > 1 {
				from = w[1]
			}
			continue
		}
		out = append(out, i)
	}
	return from, out
}

func TestDockerfiles(t *testing.T) {
	goMod := readFile(t, filepath.Join(repoRoot, "go.mod"))
	m := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindStringSubmatch(goMod)
	if m == nil {
		t.Fatal("go.mod has no go line")
	}
	wantGo := "golang:" + m[1]

	var buildStages []string
	for _, df := range dockerfiles {
		ins := parseDockerfile(t, df)
		if len(ins) == 0 {
			t.Fatalf("%s: no instructions", df)
		}

		// Every COPY/ADD from the build context names something in the repository (the
		// context is the repository root, as README.md and the compose file build them).
		copied := map[string]bool{} // destinations, for ENTRYPOINT
		for _, i := range ins {
			if i.cmd != "COPY" && i.cmd != "ADD" {
				continue
			}
			flags, srcs, dest := copyArgs(i.args)
			if len(srcs) == 0 {
				t.Errorf("%s:%d: %s without a source", df, i.line, i.cmd)
			}
			for _, s := range srcs {
				copied[dest] = true
				copied[strings.TrimSuffix(dest, "/")+"/"+filepath.Base(s)] = true
				if _, fromStage := flags["from"]; fromStage {
					continue
				}
				if filepath.IsAbs(s) || strings.Contains(s, "..") {
					t.Errorf("%s:%d: COPY source %q is outside the build context", df, i.line, s)
					continue
				}
				if matches, _ := filepath.Glob(filepath.Join(repoRoot, s)); len(matches) == 0 {
					t.Errorf("%s:%d: COPY source %q does not exist in the repository", df, i.line, s)
				}
			}
		}

		// The build stage: the Go of go.mod, the same steps in every Dockerfile.
		build := stage(ins, "build")
		if len(build) == 0 {
			t.Errorf("%s: no stage named build", df)
		}
		var b strings.Builder
		for _, i := range build {
			fmt.Fprintf(&b, "%s %s\n", i.cmd, i.args)
		}
		buildStages = append(buildStages, b.String())
		if !slices.ContainsFunc(ins, func(i instruction) bool {
			return i.cmd == "FROM" && strings.Contains(i.args, wantGo+" ") && strings.HasSuffix(i.args, " AS build")
		}) {
			t.Errorf("%s: the build stage is not FROM %s (go.mod's Go)", df, wantGo)
		}
		// go mod download reads every local replacement's go.mod, so each
		// must be in the build stage before it.
		for _, r := range localReplacements(goMod) {
			copiedAt, downloadAt := -1, -1
			for n, i := range build {
				if _, srcs, _ := copyArgs(i.args); i.cmd == "COPY" && slices.Contains(srcs, strings.SplitN(r, "/", 2)[0]) {
					copiedAt = n
				}
				if i.cmd == "RUN" && strings.Contains(i.args, "go mod download") && downloadAt < 0 {
					downloadAt = n
				}
			}
			if copiedAt < 0 || (downloadAt >= 0 && copiedAt > downloadAt) {
				t.Errorf("%s: go.mod replaces a module with ./%s, which the build stage does not COPY before go mod download", df, r)
			}
		}
		if !strings.Contains(b.String(), "CGO_ENABLED=0") || !strings.Contains(b.String(), "-trimpath") ||
			!strings.Contains(b.String(), "-X main.version=${VERSION}") {
			t.Errorf("%s: the build stage does not build a static, trimmed binary with the version:\n%s", df, b.String())
		}

		// The final stage runs something it installed.
		from, final := finalStage(ins)
		var entry []string
		for _, i := range final {
			if i.cmd == "ENTRYPOINT" {
				if err := json.Unmarshal([]byte(i.args), &entry); err != nil {
					t.Errorf("%s:%d: ENTRYPOINT is not in JSON form (exec form passes signals): %v", df, i.line, err)
				}
			}
		}
		if len(entry) == 0 {
			t.Errorf("%s: no ENTRYPOINT", df)
		} else if !copied[entry[0]] {
			t.Errorf("%s: ENTRYPOINT %s is not installed by a COPY", df, entry[0])
		}
		if strings.HasPrefix(df, "server/") {
			checkServerImage(t, df, from, final, entry)
		}
	}
	for i := 1; i < len(buildStages); i++ {
		if buildStages[i] != buildStages[0] {
			t.Errorf("the build stage of %s differs from that of %s:\n%s\nvs\n%s", dockerfiles[i], dockerfiles[0], buildStages[i], buildStages[0])
		}
	}
}

func checkServerImage(t testing.TB, df, from string, final []instruction, entry []string) {
	t.Helper()
	if !strings.HasPrefix(from, "gcr.io/distroless/static") && from != "scratch" {
		t.Errorf("%s: final image %s, want distroless static or scratch", df, from)
	}
	get := func(cmd string) (all []string) {
		for _, i := range final {
			if i.cmd == cmd {
				all = append(all, i.args)
			}
		}
		return all
	}
	users := get("USER")
	if len(users) == 0 {
		t.Errorf("%s: no USER: the server would run as root", df)
	} else if u := users[len(users)-1]; u == "0" || strings.HasPrefix(u, "0:") || strings.HasPrefix(u, "root") {
		t.Errorf("%s: USER %s is root", df, u)
	}
	if v := get("VOLUME"); !slices.Contains(v, "/var/lib/switchboard") {
		t.Errorf("%s: VOLUME %v, want /var/lib/switchboard", df, v)
	}
	if e := strings.Join(get("EXPOSE"), " "); !strings.Contains(e, "2222") || !strings.Contains(e, "8883") {
		t.Errorf("%s: EXPOSE %q, want 2222 and 8883", df, e)
	}
	if want := []string{"/usr/local/bin/switchboard", "serve"}; !slices.Equal(entry, want) {
		t.Errorf("%s: ENTRYPOINT %q, want %q", df, entry, want)
	}
	var cmd []string
	if c := get("CMD"); len(c) > 0 {
		json.Unmarshal([]byte(c[len(c)-1]), &cmd)
	}
	if want := []string{"--listen", ":2222", "--state-dir", "/var/lib/switchboard"}; !slices.Equal(cmd, want) {
		t.Errorf("%s: CMD %q, want %q", df, cmd, want)
	}
	var labels string
	for _, l := range get("LABEL") {
		labels += l
	}
	for _, l := range []string{"org.opencontainers.image.title", "org.opencontainers.image.source", "org.opencontainers.image.version"} {
		if !strings.Contains(labels, l+"=") {
			t.Errorf("%s: no label %s", df, l)
		}
	}
}

// ---------------------------------------------------------------------------
// The compose file.

type composeSpec struct {
	Services map[string]composeService `yaml:"services"`
	Networks map[string]*struct {
		Internal bool `yaml:"internal"`
	} `yaml:"networks"`
	Volumes map[string]any `yaml:"volumes"`
}

type composeService struct {
	Build       *composeBuild  `yaml:"build"`
	Image       string         `yaml:"image"`
	Entrypoint  []string       `yaml:"entrypoint"`
	Command     []string       `yaml:"command"`
	Networks    []string       `yaml:"networks"`
	NetworkMode string         `yaml:"network_mode"`
	Ports       []string       `yaml:"ports"`
	Expose      []string       `yaml:"expose"`
	Volumes     []string       `yaml:"volumes"`
	DependsOn   map[string]any `yaml:"depends_on"`
}

type composeBuild struct {
	Context    string `yaml:"context"`
	Dockerfile string `yaml:"dockerfile"`
}

// mount splits a short-syntax volume SOURCE:TARGET[:MODE].
func mount(v string) (source, target string) {
	parts := strings.Split(v, ":")
	if len(parts) < 2 {
		return "", parts[0]
	}
	return parts[0], parts[1]
}

func TestCompose(t *testing.T) {
	data := readFile(t, composeFile)
	var c composeSpec
	dec := yaml.NewDecoder(strings.NewReader(data))
	dec.KnownFields(false)
	if err := dec.Decode(&c); err != nil {
		t.Fatalf("%s does not parse (or uses a form this test does not read: short syntax, lists): %v", composeFile, err)
	}
	if len(c.Services) == 0 {
		t.Fatalf("%s: no services", composeFile)
	}

	mountedAt := map[string]map[string]string{} // service → target → named volume
	var devices, internal []string
	for name, n := range c.Networks {
		if n != nil && n.Internal {
			internal = append(internal, name)
		}
	}
	if len(internal) == 0 {
		t.Errorf("no network has internal: true")
	}
	for name, s := range c.Services {
		mountedAt[name] = map[string]string{}
		if s.Build != nil {
			ctx := filepath.Join(filepath.Dir(composeFile), s.Build.Context)
			if fi, err := os.Stat(ctx); err != nil || !fi.IsDir() {
				t.Errorf("service %s: build context %s is not a directory", name, s.Build.Context)
			}
			if _, err := os.Stat(filepath.Join(ctx, s.Build.Dockerfile)); err != nil {
				t.Errorf("service %s: dockerfile %s: %v", name, s.Build.Dockerfile, err)
			}
			if s.Image == "" {
				t.Errorf("service %s: built without an image name, so the services that share it build it under different names", name)
			}
		}
		for _, n := range s.Networks {
			if _, ok := c.Networks[n]; !ok {
				t.Errorf("service %s: network %s is not declared", name, n)
			}
		}
		for dep := range s.DependsOn {
			if _, ok := c.Services[dep]; !ok {
				t.Errorf("service %s depends on %s, which is not a service", name, dep)
			}
		}
		for _, v := range s.Volumes {
			src, target := mount(v)
			switch {
			case strings.HasPrefix(src, ".") || strings.HasPrefix(src, "/"):
				if _, err := os.Stat(filepath.Join(filepath.Dir(composeFile), src)); err != nil {
					t.Errorf("service %s: bind mount source %s: %v", name, src, err)
				}
			case src != "":
				if _, ok := c.Volumes[src]; !ok {
					t.Errorf("service %s: volume %s is not declared", name, src)
				}
				mountedAt[name][target] = src
			}
		}
		// A device: a service that runs the device image's own entrypoint.
		if s.Build != nil && strings.HasPrefix(s.Build.Dockerfile, "deploy/docker/device/") && s.Entrypoint == nil {
			devices = append(devices, name)
		}
	}
	slices.Sort(devices)
	if len(devices) < 2 {
		t.Fatalf("device services %v: want an always-on and an on-demand device", devices)
	}

	server, ok := c.Services["server"]
	if !ok || server.Build == nil || server.Build.Dockerfile != "deploy/docker/server/Dockerfile" {
		t.Fatalf("no service server built from deploy/docker/server/Dockerfile")
	}
	for name, s := range c.Services {
		if len(s.Ports) > 0 && name != "server" {
			t.Errorf("service %s publishes ports %v: only the server may", name, s.Ports)
		}
	}
	if len(server.Ports) == 0 {
		t.Error("the server publishes no port")
	}
	public := false
	for _, n := range server.Networks {
		public = public || !slices.Contains(internal, n)
	}
	if !public {
		t.Errorf("the server is only on internal networks %v: its published port would lead nowhere", server.Networks)
	}

	// Devices: on internal networks only, no ports, and the server on each of those networks
	// (they dial out to it, as devices behind NAT do).
	enroll := c.Services["enroll"]
	roles := map[string]bool{}
	for _, name := range devices {
		s := c.Services[name]
		if len(s.Ports) > 0 || len(s.Expose) > 0 || s.NetworkMode != "" {
			t.Errorf("device %s: ports %v, expose %v, network_mode %q; want none", name, s.Ports, s.Expose, s.NetworkMode)
		}
		if len(s.Networks) == 0 {
			t.Errorf("device %s is on no network: it would be on the default one, which is not internal", name)
		}
		for _, n := range s.Networks {
			if !slices.Contains(internal, n) {
				t.Errorf("device %s is on network %s, which is not internal", name, n)
			}
			if !slices.Contains(server.Networks, n) {
				t.Errorf("device %s is on network %s, where the server is not", name, n)
			}
		}
		// Its /etc/switchboard is what the enroll job wrote for it, under its name.
		vol := mountedAt[name]["/etc/switchboard"]
		if vol == "" || mountedAt["enroll"]["/enroll/"+name] != vol {
			t.Errorf("device %s: /etc/switchboard is volume %q, but the enroll job writes /enroll/%s to %q", name, vol, name, mountedAt["enroll"]["/enroll/"+name])
		}
		for _, arg := range enroll.Command {
			if role, n, _ := strings.Cut(arg, ":"); n == name {
				roles[role] = true
			}
		}
	}
	if !roles["device"] || !roles["on-demand"] {
		t.Errorf("the enroll job's arguments %q: want an always-on (device:) and an on-demand (on-demand:) device among %v", enroll.Command, devices)
	}
	if enroll.Entrypoint == nil || !slices.Contains(enroll.Entrypoint, "/"+enrollDemo) {
		t.Errorf("the enroll job runs %q, want enroll-demo.sh", enroll.Entrypoint)
	}

	// The operator: on the public side, ~/.ssh being an operator's enrolment.
	op, ok := c.Services["operator"]
	if !ok {
		t.Fatal("no service operator")
	}
	for _, n := range op.Networks {
		if slices.Contains(internal, n) {
			t.Errorf("the operator is on internal network %s: it should reach devices only through the server", n)
		}
	}
	if vol := mountedAt["operator"]["/root/.ssh"]; vol == "" || !slices.Contains(enroll.Command, "operator:"+strings.TrimPrefix(findKey(mountedAt["enroll"], vol), "/enroll/")) {
		t.Errorf("the operator's ~/.ssh is volume %q, which the enroll job does not write for an operator", vol)
	}
}

// findKey returns the key of m whose value is v.
func findKey(m map[string]string, v string) string {
	for k, x := range m {
		if x == v {
			return k
		}
	}
	return ""
}

// localReplacements lists the directories go.mod replaces modules with.
func localReplacements(goMod string) []string {
	var dirs []string
	for _, m := range regexp.MustCompile(`(?m)^replace\s+\S+(?:\s+\S+)?\s+=>\s+\./(\S+)\s*$`).FindAllStringSubmatch(goMod, -1) {
		dirs = append(dirs, m[1])
	}
	return dirs
}
