// Package e2e drives the real switchboard binary with stock OpenSSH clients and servers.
package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
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
)

// switchboardBin is the server binary TestMain builds once for the whole suite.
var switchboardBin string

// Timeouts shared by the suite. They bound waits; nothing sleeps for them.
const (
	startTimeout = 20 * time.Second // a process is up and logged what we wait for
	logTimeout   = 15 * time.Second // a log line follows the action that causes it
	runTimeout   = 60 * time.Second // one short client command (ssh, scp, curl)
)

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "switchboard-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "switchboard")
	build := exec.Command(goTool(), "build", "-o", bin, "./cmd/switchboard")
	build.Dir = ".." // the module root; tests run in e2e/
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: go build ./cmd/switchboard failed: %v\n%s", err, out)
		return 1
	}
	switchboardBin = bin
	sweepStaleNamespaces()
	return m.Run()
}

// goTool finds the go command that runs this test.
func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	if root := os.Getenv("GOROOT"); root != "" {
		return filepath.Join(root, "bin", "go")
	}
	return "go"
}

// need skips the test when one of bins is missing, or fails it when CI=true.
func need(t testing.TB, bins ...string) {
	t.Helper()
	for _, b := range bins {
		if _, err := exec.LookPath(b); err != nil {
			msg := fmt.Sprintf("e2e: %s is not installed (or not on PATH), and this test drives it.", b)
			if os.Getenv("CI") == "true" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
}

// needOpenSSH is need for the binaries almost every test uses.
func needOpenSSH(t testing.TB, more ...string) {
	t.Helper()
	need(t, append([]string{"ssh", "ssh-keygen", "/usr/sbin/sshd"}, more...)...)
}

// ---------------------------------------------------------------------------
// Output buffers and waiting.

// logBuf is an append-only, goroutine-safe buffer for a child's output.
type logBuf struct {
	mu sync.Mutex
	b  []byte
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	l.b = append(l.b, p...)
	l.mu.Unlock()
	return len(p), nil
}

// bytes returns what was written so far. The prefix is never modified.
func (l *logBuf) bytes() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b[:len(l.b):len(l.b)]
}

func (l *logBuf) String() string { return string(l.bytes()) }

// pollInterval is how often await re-checks a condition.
const pollInterval = 20 * time.Millisecond

// await re-checks cond until it reports done, and fails the test when cond
// returns an error or timeout passes. what names the awaited condition.
func await(t testing.TB, timeout time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		done, err := cond()
		if err != nil {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		if done {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: not done after %v", what, timeout)
		}
		<-tick.C
	}
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("[... %d lines left out]", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}

// ---------------------------------------------------------------------------
// Child processes.

// proc is one child process in its own process group, killed at cleanup.
type proc struct {
	name   string
	cmd    *exec.Cmd
	stdout *logBuf
	stderr *logBuf
	done   chan struct{} // closed when Wait returned
	err    error         // Wait's result, valid once done is closed
	quiet  bool          // no stderr dump at cleanup: the caller reports the output
}

// nsCommand is command for bin run inside network namespace ns ("" means the
// test's own). ip netns exec execs bin in place, so signals to the process
// (SIGSTOP, SIGKILL) reach bin itself.
func nsCommand(ns, name, bin string, args ...string) *proc {
	if ns == "" {
		return command(name, bin, args...)
	}
	return command(name, "ip", append([]string{"netns", "exec", ns, bin}, args...)...)
}

// command prepares bin with args; set fields of p.cmd before start.
func command(name, bin string, args ...string) *proc {
	p := &proc{name: name, cmd: exec.Command(bin, args...), stdout: &logBuf{}, stderr: &logBuf{}, done: make(chan struct{})}
	p.cmd.Stdout = p.stdout
	p.cmd.Stderr = p.stderr
	p.cmd.Env = childEnv()
	// Own process group, so cleanup reaches ProxyCommand and jump children too;
	// Pdeathsig so nothing outlives a crashed test binary.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	// sshd's per-connection children call setsid and keep stderr open a little
	// longer than sshd itself: do not let them hold Wait.
	p.cmd.WaitDelay = 3 * time.Second
	return p
}

// childEnv is the environment of every child: no agent, no proxies, C locale.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch strings.ToLower(k) {
		case "ssh_auth_sock", "ssh_agent_pid", "http_proxy", "https_proxy", "all_proxy", "no_proxy", "lc_all", "lang", "language":
			continue
		}
		env = append(env, kv)
	}
	return append(env, "LC_ALL=C")
}

// start starts p and registers its cleanup: SIGKILL to the group, then Wait.
func (p *proc) start(t testing.TB) *proc {
	t.Helper()
	if !p.quiet {
		t.Logf("start %s: %s", p.name, strings.Join(p.cmd.Args, " "))
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", p.name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.signal(syscall.SIGKILL)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			t.Errorf("%s (pid %d) did not exit 10s after SIGKILL", p.name, p.cmd.Process.Pid)
		}
		if t.Failed() && !p.quiet {
			if s := p.stderr.String(); s != "" {
				t.Logf("%s stderr:\n%s", p.name, tail(s, 60))
			}
		}
	})
	return p
}

// signal sends sig to p's process group, as long as p has not been reaped
// (until then its pid, which is the group id, cannot be reused).
func (p *proc) signal(sig syscall.Signal) {
	if p.cmd.Process != nil && !p.exited() {
		_ = syscall.Kill(-p.cmd.Process.Pid, sig)
	}
}

// exited reports whether p has exited.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// exitCode returns p's exit status, -1 if a signal ended it; p must have exited.
func (p *proc) exitCode() int { return p.cmd.ProcessState.ExitCode() }

// waitExit waits up to timeout for p to exit and returns its exit status.
func (p *proc) waitExit(t testing.TB, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
		return p.exitCode()
	case <-time.After(timeout):
		// A Go program prints every goroutine on SIGQUIT: show where it is stuck.
		p.cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
		}
		t.Fatalf("%s did not exit within %v; stderr:\n%s", p.name, timeout, tail(p.stderr.String(), 300))
		return 0
	}
}

// result is what a finished client command produced.
type result struct {
	args           []string
	stdout, stderr string
	code           int
	dur            time.Duration
}

func (r result) String() string {
	return fmt.Sprintf("%s\nexit %d after %v\nstdout:\n%s\nstderr:\n%s", strings.Join(r.args, " "), r.code, r.dur.Round(time.Millisecond), tail(r.stdout, 40), tail(r.stderr, 40))
}

// run runs bin to completion with stdin (nil: /dev/null), failing the test after timeout.
func run(t testing.TB, stdin io.Reader, timeout time.Duration, bin string, args ...string) result {
	t.Helper()
	return runIn(t, "", stdin, timeout, bin, args...)
}

// runIn is run inside network namespace ns ("" for the test's own).
func runIn(t testing.TB, ns string, stdin io.Reader, timeout time.Duration, bin string, args ...string) result {
	t.Helper()
	p := nsCommand(ns, filepath.Base(bin), bin, args...)
	p.cmd.Stdin = stdin
	p.quiet = true // the caller reports the result
	start := time.Now()
	p.start(t)
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.signal(syscall.SIGKILL)
		<-p.done
		t.Fatalf("%s did not finish within %v\nstdout:\n%s\nstderr:\n%s", strings.Join(p.cmd.Args, " "), timeout, tail(p.stdout.String(), 20), tail(p.stderr.String(), 20))
	}
	return result{args: p.cmd.Args, stdout: p.stdout.String(), stderr: p.stderr.String(), code: p.exitCode(), dur: time.Since(start)}
}

// runSSH runs ssh -F cfg args... to completion.
func runSSH(t testing.TB, cfg string, args ...string) result {
	t.Helper()
	return run(t, nil, runTimeout, "ssh", append([]string{"-F", cfg}, args...)...)
}

// mustSucceed fails the test unless r exited 0.
func mustSucceed(t testing.TB, what string, r result) result {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("%s failed: %v", what, r)
	}
	return r
}

// ---------------------------------------------------------------------------
// Keys.

// key is an ed25519 key pair made by ssh-keygen.
type key struct {
	name string // comment and file name
	path string // private key file; public key at path+".pub"
	pub  string // "ssh-ed25519 AAAA… name"
	fp   string // "SHA256:…", as ssh-keygen -l prints it
}

// newKey makes a key pair without passphrase in a fresh temp dir.
func newKey(t testing.TB, name string) key {
	t.Helper()
	return newKeyAt(t, filepath.Join(t.TempDir(), name), name)
}

func newKeyAt(t testing.TB, path, comment string) key {
	t.Helper()
	out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path).CombinedOutput()
	if err != nil {
		t.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
	pub, err := os.ReadFile(path + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	k := key{name: filepath.Base(path), path: path, pub: strings.TrimSpace(string(pub))}
	k.fp = fingerprint(t, k.pub)
	return k
}

// fingerprint computes the SHA256 fingerprint of an authorized_keys-style public key.
func fingerprint(t testing.TB, pub string) string {
	t.Helper()
	f := strings.Fields(pub)
	if len(f) < 2 {
		t.Fatalf("not a public key: %q", pub)
	}
	blob, err := base64.StdEncoding.DecodeString(f[1])
	if err != nil {
		t.Fatalf("public key %q: %v", pub, err)
	}
	sum := sha256.Sum256(blob)
	return "SHA256:" + base64.RawStdEncoding.EncodeToString(sum[:])
}

// typeAndBlob returns "ssh-ed25519 AAAA…" without the comment.
func (k key) typeAndBlob() string {
	f := strings.Fields(k.pub)
	return f[0] + " " + f[1]
}

// authLine is an authorized_keys line: options (may be empty) then k's public key.
func authLine(options string, k key) string {
	if options == "" {
		return k.pub
	}
	return options + " " + k.pub
}

// ---------------------------------------------------------------------------
// The switchboard server.

// logEntry is one decoded JSON log line of the server.
type logEntry map[string]any

// str returns attribute k as text ("" if absent); numbers keep their JSON spelling.
func (e logEntry) str(k string) string {
	switch v := e[k].(type) {
	case nil:
		return ""
	case string:
		return v
	case json.Number:
		return v.String()
	default:
		b, _ := json.Marshal(v)
		return string(b)
	}
}

// int returns attribute k as an integer, -1 if it is not one.
func (e logEntry) int(k string) int64 {
	n, err := strconv.ParseInt(e.str(k), 10, 64)
	if err != nil {
		return -1
	}
	return n
}

func (e logEntry) String() string {
	b, _ := json.Marshal(map[string]any(e))
	return string(b)
}

// logPred selects server log lines; desc says which, for failure messages.
type logPred struct {
	msgs []string // the msg values it can match: such lines are shown on a miss
	desc string
	ok   func(logEntry) bool
}

// logMsg matches lines with msg and, for each key/value pair in kv, that
// attribute (compared as text, case-insensitively: names are case-insensitive).
func logMsg(msg string, kv ...any) logPred {
	if len(kv)%2 != 0 {
		panic("logMsg: odd number of key/value arguments")
	}
	desc := fmt.Sprintf("msg=%q", msg)
	for i := 0; i < len(kv); i += 2 {
		desc += fmt.Sprintf(" %s=%v", kv[i], kv[i+1])
	}
	return logPred{msgs: []string{msg}, desc: desc, ok: func(e logEntry) bool {
		if e.str("msg") != msg {
			return false
		}
		for i := 0; i < len(kv); i += 2 {
			if !strings.EqualFold(e.str(kv[i].(string)), fmt.Sprint(kv[i+1])) {
				return false
			}
		}
		return true
	}}
}

// anyOf matches a line that one of ps matches.
func anyOf(ps ...logPred) logPred {
	var descs, msgs []string
	for _, p := range ps {
		descs = append(descs, "("+p.desc+")")
		msgs = append(msgs, p.msgs...)
	}
	return logPred{msgs: msgs, desc: strings.Join(descs, " or "), ok: func(e logEntry) bool {
		for _, p := range ps {
			if p.ok(e) {
				return true
			}
		}
		return false
	}}
}

// jsonLog decodes the server's stderr, one JSON object per line, as it arrives.
type jsonLog struct {
	buf     *logBuf
	mu      sync.Mutex
	off     int
	entries []logEntry
}

// all returns every complete line so far. Lines that are not JSON (a panic)
// come back as {"msg": "", "raw": line}.
func (j *jsonLog) all() []logEntry {
	j.mu.Lock()
	defer j.mu.Unlock()
	data := j.buf.bytes()
	for {
		i := bytes.IndexByte(data[j.off:], '\n')
		if i < 0 {
			break
		}
		line := data[j.off : j.off+i]
		j.off += i + 1
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		dec := json.NewDecoder(bytes.NewReader(line))
		dec.UseNumber()
		e := logEntry{}
		if err := dec.Decode(&e); err != nil {
			e = logEntry{"msg": "", "raw": string(line)}
		}
		j.entries = append(j.entries, e)
	}
	return j.entries[:len(j.entries):len(j.entries)]
}

// server is a running `switchboard serve`.
type server struct {
	proc       *proc
	log        *jsonLog
	dir        string // scratch dir: ssh configs, known_hosts
	stateDir   string
	akPath     string // authorized_keys
	addr       string // HOST:PORT it listens on, 127.0.0.1:PORT unless serverOpts.listen says otherwise
	host       string // HOST of addr
	port       int
	hostKey    string // "ssh-ed25519 AAAA…"
	knownHosts string // pinned known_hosts file for every client of this test
	stopped    bool
}

// serverOpts configures startServer.
type serverOpts struct {
	authorizedKeys []string // lines of DIR/authorized_keys
	args           []string // extra flags after serve --listen --state-dir
	stateDir       string   // reuse this state dir (default: a fresh one)
	listen         string   // --listen HOST:PORT (default 127.0.0.1:0); a restarted server passes the old addr to keep its port
	netns          string   // run inside this network namespace (see natLab)
}

// startServer runs switchboard serve on 127.0.0.1:0 (or opts.listen) and waits
// for "listening". Cleanup stops it with SIGTERM and reports a crash or a
// non-zero exit.
func startServer(t testing.TB, opts serverOpts) *server {
	t.Helper()
	s := &server{dir: t.TempDir(), stateDir: opts.stateDir}
	if s.stateDir == "" {
		s.stateDir = filepath.Join(s.dir, "state")
		if err := os.Mkdir(s.stateDir, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	s.akPath = filepath.Join(s.stateDir, "authorized_keys")
	if opts.authorizedKeys != nil {
		s.setAuthorizedKeys(t, opts.authorizedKeys...)
	}
	listen := opts.listen
	if listen == "" {
		listen = "127.0.0.1:0"
	}
	wantHost, wantPort, err := net.SplitHostPort(listen)
	if err != nil {
		t.Fatalf("serverOpts.listen %q: %v", listen, err)
	}
	args := append([]string{"serve", "--listen", listen, "--state-dir", s.stateDir}, opts.args...)
	if !slices.ContainsFunc(opts.args, func(a string) bool { return strings.HasPrefix(a, "--mqtt") }) {
		// The embedded broker is on by default, on :8883: give each of the
		// suite's parallel servers its own port.
		args = append(args, "--mqtt-listen", "127.0.0.1:0")
	}
	s.proc = nsCommand(opts.netns, "switchboard", switchboardBin, args...)
	s.log = &jsonLog{buf: s.proc.stderr}
	s.proc.start(t)
	t.Cleanup(func() {
		if s.stopped {
			return
		}
		if s.proc.exited() {
			t.Errorf("switchboard exited during the test: %v\n%s", s.proc.err, tail(s.proc.stderr.String(), 30))
			return
		}
		if code := s.stop(t); code != 0 {
			t.Errorf("switchboard exited with status %d after SIGTERM, want 0", code)
		}
	})

	e := s.waitLog(t, sshListening, startTimeout)
	s.addr = e.str("addr")
	host, port, err := net.SplitHostPort(s.addr)
	if err != nil || host != wantHost {
		t.Fatalf("listening line has addr %q, want %s:PORT: %v", s.addr, wantHost, err)
	}
	s.host = host
	s.port, _ = strconv.Atoi(port)
	if s.port == 0 || (wantPort != "0" && port != wantPort) {
		t.Fatalf("listening line has addr %q: want the actual port, asked for %s", s.addr, wantPort)
	}

	pub, err := os.ReadFile(filepath.Join(s.stateDir, "ssh_host_ed25519_key.pub"))
	if err != nil {
		t.Fatalf("reading the server's host key: %v", err)
	}
	f := strings.Fields(string(pub))
	if len(f) < 2 || f[0] != "ssh-ed25519" {
		t.Fatalf("ssh_host_ed25519_key.pub: want an ed25519 public key, got %q", pub)
	}
	s.hostKey = f[0] + " " + f[1]
	s.knownHosts = filepath.Join(s.dir, "known_hosts")
	s.pinHost(t, s.knownHostsName(), s.hostKey)
	return s
}

// sshListening matches the SSH listener's "listening" line; other components
// (the embedded MQTT broker) may log a "listening" line of their own.
var sshListening = logPred{msgs: []string{"listening"}, desc: `msg="listening" component="sshd" (or none)`, ok: func(e logEntry) bool {
	return e.str("msg") == "listening" && (e.str("component") == "" || e.str("component") == "sshd")
}}

// knownHostsName is the server's name in known_hosts: [HOST]:PORT.
func (s *server) knownHostsName() string { return fmt.Sprintf("[%s]:%d", s.host, s.port) }

// kill sends SIGKILL, as a crash or the OOM killer would, and waits for the
// process to go; cleanup then expects nothing more of it.
func (s *server) kill(t testing.TB) {
	t.Helper()
	s.stopped = true
	s.proc.signal(syscall.SIGKILL)
	s.proc.waitExit(t, 10*time.Second)
}

// stop sends SIGTERM and returns the exit status.
func (s *server) stop(t testing.TB) int {
	t.Helper()
	s.stopped = true
	if err := s.proc.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM to switchboard: %v (it exited first: %v)", err, s.proc.err)
	}
	// The server bounds its own shutdown at --shutdown-grace (5s) + 10s.
	return s.proc.waitExit(t, 20*time.Second)
}

// pinHost appends a known_hosts line for host pattern(s) with pub.
func (s *server) pinHost(t testing.TB, hosts, pub string) {
	t.Helper()
	f, err := os.OpenFile(s.knownHosts, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := fmt.Fprintf(f, "%s %s\n", hosts, pub); err != nil {
		t.Fatal(err)
	}
}

// setAuthorizedKeys replaces authorized_keys atomically (write a temp file, rename).
func (s *server) setAuthorizedKeys(t testing.TB, lines ...string) {
	t.Helper()
	tmp := filepath.Join(s.stateDir, ".authorized_keys.tmp")
	if err := os.WriteFile(tmp, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, s.akPath); err != nil {
		t.Fatal(err)
	}
}

// mark returns the number of log lines so far, to wait for lines after it.
func (s *server) mark() int { return len(s.log.all()) }

// logsFrom returns the log lines from index from on that match.
func (s *server) logsFrom(from int, p logPred) []logEntry { return s.log.from(from, p) }

// waitLog waits for a log line that matches, from the start of the log.
func (s *server) waitLog(t testing.TB, p logPred, timeout time.Duration) logEntry {
	t.Helper()
	return s.waitLogFrom(t, 0, p, timeout)
}

// waitLogFrom waits for a matching log line at index from or later. It fails
// at once if the server or one of watch exits meanwhile.
func (s *server) waitLogFrom(t testing.TB, from int, p logPred, timeout time.Duration, watch ...*proc) logEntry {
	t.Helper()
	return waitJSON(t, "server", s.log, func() error {
		if s.proc.exited() && !s.stopped {
			return fmt.Errorf("switchboard exited: %v\n%s", s.proc.err, tail(s.proc.stderr.String(), 30))
		}
		return nil
	}, from, p, timeout, watch...)
}

// from returns the lines from index from on that p matches.
func (j *jsonLog) from(from int, p logPred) []logEntry {
	var out []logEntry
	all := j.all()
	for _, e := range all[min(from, len(all)):] {
		if p.ok(e) {
			out = append(out, e)
		}
	}
	return out
}

// waitJSON waits for a line of l, at index from or later, that p matches.
// who names the log's writer; gone reports why waiting is pointless (its
// writer exited), and any of watch exiting ends the wait too.
func waitJSON(t testing.TB, who string, l *jsonLog, gone func() error, from int, p logPred, timeout time.Duration, watch ...*proc) logEntry {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var found logEntry
	await(t, timeout+time.Second, who+" log line "+p.desc, func() (bool, error) {
		if m := l.from(from, p); len(m) > 0 {
			found = m[0]
			return true, nil
		}
		if err := gone(); err != nil {
			return false, err
		}
		for _, w := range watch {
			if w.exited() {
				return false, fmt.Errorf("%s exited (%v) first; stderr:\n%s", w.name, w.err, tail(w.stderr.String(), 30))
			}
		}
		if time.Now().After(deadline) {
			var near []string
			for _, e := range l.from(from, logPred{ok: func(e logEntry) bool { return slices.Contains(p.msgs, e.str("msg")) }}) {
				near = append(near, e.String())
			}
			return false, fmt.Errorf("none after %v; lines with msg %q: %d\n%s", timeout, p.msgs, len(near), strings.Join(near, "\n"))
		}
		return false, nil
	})
	return found
}

// sshConfig writes an ssh_config for a client using k: Host pivot is the
// server; every other host (a device's sshd, reached through pivot) logs in
// as the current user. Use it as ssh -F FILE.
func (s *server) sshConfig(t testing.TB, k key) string {
	t.Helper()
	path := filepath.Join(s.dir, "ssh_config."+k.name)
	cfg := fmt.Sprintf(`Host pivot
	HostName %s
	Port %d
	User operator
Host *
	User %s
%s`, s.host, s.port, currentUser(t), indent(clientOptions(k, s.knownHosts)))
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// clientOptions are the ssh options every client of the suite uses, as
// "Name value" pairs.
func clientOptions(k key, knownHosts string) [][2]string {
	return [][2]string{
		{"IdentityFile", k.path},
		{"IdentitiesOnly", "yes"},
		{"UserKnownHostsFile", knownHosts},
		{"GlobalKnownHostsFile", "/dev/null"},
		{"StrictHostKeyChecking", "yes"},
		{"UpdateHostKeys", "no"},
		{"BatchMode", "yes"},
		{"ConnectTimeout", "10"},
		{"ControlMaster", "no"},
		{"ControlPath", "none"},
	}
}

func indent(opts [][2]string) string {
	var b strings.Builder
	for _, o := range opts {
		fmt.Fprintf(&b, "\t%s %s\n", o[0], o[1])
	}
	return b.String()
}

// sshArgs is -F /dev/null and clientOptions as -o flags.
func sshArgs(k key, knownHosts string) []string {
	args := []string{"-F", "/dev/null"}
	for _, o := range clientOptions(k, knownHosts) {
		args = append(args, "-o", o[0]+"="+o[1])
	}
	return args
}

var currentUserOnce = sync.OnceValues(user.Current)

// currentUser is the login the device-side sshd accepts (root here).
func currentUser(t testing.TB) string {
	t.Helper()
	u, err := currentUserOnce()
	if err != nil {
		t.Fatalf("current user: %v", err)
	}
	return u.Username
}

// ---------------------------------------------------------------------------
// The device side: a real sshd as the target, and ssh -R as the device.

// sshd is a running OpenSSH server, the local target of a device.
type sshd struct {
	proc    *proc
	port    int
	hostKey string // "ssh-ed25519 AAAA…"
	netns   string
	addr    string // listen address
	cfg     string // sshd_config
}

// sshdOpts configures startSSHDOpts; the zero value is startSSHD's.
type sshdOpts struct {
	netns string // run inside this network namespace
	addr  string // ListenAddress host (default 127.0.0.1)
	port  int    // default: a port free a moment ago
}

// startSSHD runs /usr/sbin/sshd -D -e on 127.0.0.1 with its own host key,
// accepting the given keys for the current user.
func startSSHD(t testing.TB, authorized ...key) *sshd {
	t.Helper()
	return startSSHDOpts(t, sshdOpts{}, authorized...)
}

// startSSHDOpts is startSSHD with a namespace, address or port.
func startSSHDOpts(t testing.TB, o sshdOpts, authorized ...key) *sshd {
	t.Helper()
	need(t, "/usr/sbin/sshd", "ssh-keygen")
	_ = os.MkdirAll("/run/sshd", 0o755) // privilege separation dir; exists on a normal install
	dir := t.TempDir()
	hk := newKeyAt(t, filepath.Join(dir, "ssh_host_ed25519_key"), "sshd")
	ak := filepath.Join(dir, "authorized_keys")
	var lines []string
	for _, k := range authorized {
		lines = append(lines, k.pub)
	}
	if err := os.WriteFile(ak, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := &sshd{hostKey: hk.typeAndBlob(), netns: o.netns, addr: o.addr, cfg: filepath.Join(dir, "sshd_config")}
	if d.addr == "" {
		d.addr = "127.0.0.1"
	}
	for attempt := 0; ; attempt++ {
		d.port = o.port
		if d.port == 0 {
			d.port = freePort(t)
		}
		conf := fmt.Sprintf(`ListenAddress %s
HostKey %s
AuthorizedKeysFile %s
StrictModes no
UsePAM no
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
PidFile none
PrintMotd no
PrintLastLog no
UseDNS no
MaxStartups 100
MaxSessions 100
LogLevel INFO
Subsystem sftp internal-sftp
`, net.JoinHostPort(d.addr, strconv.Itoa(d.port)), hk.path, ak)
		if err := os.WriteFile(d.cfg, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		if !d.launch(t, o.port == 0 && attempt < 5) {
			return d
		}
	}
}

// launch starts sshd with d.cfg and waits until it listens. It returns true
// if the port was taken and retry allows trying another.
func (d *sshd) launch(t testing.TB, retry bool) (inUse bool) {
	t.Helper()
	p := nsCommand(d.netns, "sshd", "/usr/sbin/sshd", "-D", "-e", "-f", d.cfg).start(t)
	ready := fmt.Sprintf("Server listening on %s port %d", d.addr, d.port)
	await(t, startTimeout, "sshd to listen", func() (bool, error) {
		if strings.Contains(p.stderr.String(), ready) {
			return true, nil
		}
		if p.exited() {
			if strings.Contains(p.stderr.String(), "Address already in use") && retry {
				inUse = true
				return true, nil
			}
			return false, fmt.Errorf("sshd exited: %v\n%s", p.err, p.stderr.String())
		}
		return false, nil
	})
	d.proc = p
	return inUse
}

// stop kills the listening sshd. Sessions it already accepted run on: each
// is its own process, in its own session.
func (d *sshd) stop(t testing.TB) {
	t.Helper()
	d.proc.signal(syscall.SIGKILL)
	d.proc.waitExit(t, 10*time.Second)
}

// restart starts the stopped sshd again on the same port with the same host key.
func (d *sshd) restart(t testing.TB) {
	t.Helper()
	if !d.proc.exited() {
		t.Fatal("sshd.restart: the sshd is still running")
	}
	d.launch(t, false)
}

// device is a running `ssh -N -R …` connected to the server.
type device struct {
	name string // the device name the server should register
	proc *proc
	mark int // server log index before the device started
	fwds []string
	srv  *server
}

// deviceOpts configures launchDevice.
type deviceOpts struct {
	key      key
	user     string   // SSH user name
	name     string   // expected device name; default user
	forwards []string // -R specs, see fwd
	args     []string // extra ssh arguments
}

// fwd is the -R spec VPORT:127.0.0.1:PORT.
func fwd(vport, port int) string { return fmt.Sprintf("%d:127.0.0.1:%d", vport, port) }

// startDevice runs ssh -N -R forwards… as user with k and waits until the server
// has registered every forward under the device name user.
func startDevice(t testing.TB, s *server, k key, user string, forwards ...string) *device {
	t.Helper()
	d := launchDevice(t, s, deviceOpts{key: k, user: user, forwards: forwards})
	d.awaitRegistered(t)
	return d
}

// launchDevice starts the device's ssh and does not wait for anything.
func launchDevice(t testing.TB, s *server, o deviceOpts) *device {
	t.Helper()
	if o.name == "" {
		o.name = o.user
	}
	args := sshArgs(o.key, s.knownHosts)
	args = append(args, "-N",
		"-o", "ExitOnForwardFailure=yes",
		"-o", "ServerAliveInterval=10",
		"-o", "ServerAliveCountMax=3",
		"-p", strconv.Itoa(s.port))
	for _, f := range o.forwards {
		args = append(args, "-R", f)
	}
	args = append(args, o.args...)
	args = append(args, o.user+"@"+s.host)
	d := &device{name: o.name, fwds: o.forwards, srv: s, mark: s.mark()}
	d.proc = command("device "+o.name, "ssh", args...).start(t)
	return d
}

// awaitRegistered waits for a "device registered" line per forward (any port for 0).
func (d *device) awaitRegistered(t testing.TB) {
	t.Helper()
	for _, f := range d.fwds {
		parts := strings.Split(f, ":")
		vport := parts[len(parts)-3]
		kv := []any{"device", d.name}
		if vport != "0" {
			kv = append(kv, "port", vport)
		}
		d.srv.waitLogFrom(t, d.mark, logMsg("device registered", kv...), startTimeout, d.proc)
	}
}

func (d *device) kill()          { d.proc.signal(syscall.SIGKILL) }
func (d *device) stop()          { d.proc.signal(syscall.SIGSTOP) }
func (d *device) cont()          { d.proc.signal(syscall.SIGCONT) }
func (d *device) stderr() string { return d.proc.stderr.String() }

// ---------------------------------------------------------------------------
// Network helpers and small TCP services behind devices.

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

// serveTCP listens on 127.0.0.1:0 and runs handle per connection until cleanup.
func serveTCP(t testing.TB, handle func(net.Conn)) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns = map[net.Conn]bool{}
		wg    sync.WaitGroup
	)
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Go(func() {
				defer func() {
					c.Close()
					mu.Lock()
					delete(conns, c)
					mu.Unlock()
				}()
				handle(c)
			})
		}
	})
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return l.Addr().(*net.TCPAddr).Port
}

// echoService copies what it reads back until EOF, then closes.
func echoService(t testing.TB) int {
	return serveTCP(t, func(c net.Conn) {
		io.Copy(c, c)
	})
}

// digestService reads to EOF, then writes the hex SHA-256 of what it read and a newline, then closes.
func digestService(t testing.TB) int {
	return serveTCP(t, func(c net.Conn) {
		h := sha256.New()
		if _, err := io.Copy(h, c); err != nil {
			return
		}
		fmt.Fprintf(c, "%x\n", h.Sum(nil))
	})
}

// sha256File returns the hex SHA-256 of a file.
func sha256File(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

// mustMatch fails unless re matches s, and returns the submatches.
func mustMatch(t testing.TB, re, s, what string) []string {
	t.Helper()
	m := regexp.MustCompile(re).FindStringSubmatch(s)
	if m == nil {
		t.Fatalf("%s: want a match for %q in:\n%s", what, re, s)
	}
	return m
}

// mustContain fails unless s contains sub.
func mustContain(t testing.TB, s, sub, what string) {
	t.Helper()
	if !strings.Contains(s, sub) {
		t.Fatalf("%s: want %q in:\n%s", what, sub, s)
	}
}
