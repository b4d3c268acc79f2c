package e2e

import (
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Timings that make a dead link show within seconds on both sides.
var (
	// fastAgentFlags: keepalive every second, reconnect within a second.
	fastAgentFlags = []string{"--keepalive-interval", "1s", "--keepalive-count", "2", "--backoff-min", "100ms", "--backoff-max", "1s"}
	// fastServerFlags: the server drops a silent client after about 3s.
	fastServerFlags = []string{"--keepalive-interval", "1s", "--keepalive-count", "2"}
)

// ---------------------------------------------------------------------------
// The agent.

// agent is a running `switchboard agent`.
type agent struct {
	name    string
	proc    *proc
	log     *jsonLog
	stopped bool // the test ended it on purpose: its exit is no failure
}

// agentOpts configures startAgent. Empty fields add no flag.
type agentOpts struct {
	netns      string   // run inside this network namespace
	config     string   // --config FILE
	server     string   // --server HOST:PORT
	name       string   // --name
	device     string   // the device name the test expects (default name), e.g. with only config
	identity   string   // --identity KEYFILE
	knownHosts string   // --known-hosts FILE
	forwards   []string // --forward SPEC, each
	args       []string // more flags, e.g. fastAgentFlags
}

// startAgent starts the agent and waits for nothing. Cleanup kills it and
// reports it if it exited on its own: an agent is meant to run forever.
func startAgent(t testing.TB, o agentOpts) *agent {
	t.Helper()
	var args []string
	for _, f := range [][2]string{
		{"--config", o.config}, {"--server", o.server}, {"--name", o.name},
		{"--identity", o.identity}, {"--known-hosts", o.knownHosts},
	} {
		if f[1] != "" {
			args = append(args, f[0], f[1])
		}
	}
	for _, f := range o.forwards {
		args = append(args, "--forward", f)
	}
	args = append(args, o.args...)
	a := &agent{name: o.device}
	if a.name == "" {
		a.name = o.name
	}
	a.proc = nsCommand(o.netns, "agent "+a.name, switchboardBin, append([]string{"agent"}, args...)...)
	a.log = &jsonLog{buf: a.proc.stderr}
	a.proc.start(t)
	t.Cleanup(func() {
		if a.proc.exited() && !a.stopped {
			t.Errorf("agent %s exited during the test: %v\n%s", a.name, a.proc.err, tail(a.proc.stderr.String(), 30))
		}
	})
	return a
}

// deviceAgent starts an agent named name for s with key k, pinning s's host
// key, with the fast timings and forwards.
func deviceAgent(t testing.TB, s *server, k key, name string, forwards ...string) *agent {
	t.Helper()
	return startAgent(t, agentOpts{
		server: s.addr, name: name, identity: k.path, knownHosts: agentKnownHosts(t, s, s.hostKey),
		forwards: forwards, args: fastAgentFlags,
	})
}

// agentKnownHosts writes a known_hosts file that pins s's address to hostKey
// ("ssh-ed25519 AAAA…"), and nothing else.
func agentKnownHosts(t testing.TB, s *server, hostKey string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "known_hosts")
	if err := os.WriteFile(path, []byte(s.knownHostsName()+" "+hostKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func (a *agent) mark() int                               { return len(a.log.all()) }
func (a *agent) logsFrom(from int, p logPred) []logEntry { return a.log.from(from, p) }

// waitLogFrom waits for a matching agent log line at index from or later.
func (a *agent) waitLogFrom(t testing.TB, from int, p logPred, timeout time.Duration, watch ...*proc) logEntry {
	t.Helper()
	return waitJSON(t, "agent "+a.name, a.log, func() error {
		if a.proc.exited() && !a.stopped {
			return fmt.Errorf("agent %s exited: %v\n%s", a.name, a.proc.err, tail(a.proc.stderr.String(), 30))
		}
		return nil
	}, from, p, timeout, watch...)
}

// awaitRegistered waits until the server has registered vport for the
// agent's device, from server log index from on.
func (a *agent) awaitRegistered(t testing.TB, s *server, from, vport int) logEntry {
	t.Helper()
	return s.waitLogFrom(t, from, logMsg("device registered", "device", a.name, "port", vport), startTimeout, a.proc)
}

// signal sends sig to the agent process.
func (a *agent) signal(t testing.TB, sig syscall.Signal) {
	t.Helper()
	if err := a.proc.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("%v to agent %s: %v (it exited: %v)", sig, a.name, err, a.proc.err)
	}
}

// logTime is the time attribute of a log line.
func logTime(t testing.TB, e logEntry) time.Time {
	t.Helper()
	ts, err := time.Parse(time.RFC3339Nano, e.str("time"))
	if err != nil {
		t.Fatalf("log line without a valid time: %v: %v", err, e)
	}
	return ts
}

// loadKey reads the private key file path (as enroll writes it) into a key.
func loadKey(t testing.TB, path string) key {
	t.Helper()
	out, err := exec.Command("ssh-keygen", "-y", "-f", path).Output()
	if err != nil {
		t.Fatalf("ssh-keygen -y -f %s: %v", path, err)
	}
	k := key{name: filepath.Base(filepath.Dir(path)), path: path, pub: strings.TrimSpace(string(out))}
	k.fp = fingerprint(t, k.pub)
	return k
}

// ---------------------------------------------------------------------------
// A cast for the fault tests: server, operator, and dev42's agent in front of
// a real sshd, optionally spread over a lab's namespaces.

type agentRig struct {
	srv    *server
	op     key
	devKey key
	sshd   *sshd
	agent  *agent
	cfg    string // the operator's ssh_config
	opNS   string // where the operator's commands run
}

// newAgentRig starts the cast. With a lab, the server runs in lab.pub, the
// sshd and the agent on the device (lab.lan), the operator in lab.op.
func newAgentRig(t testing.TB, lab *natLab, sshdOpts sshdOpts) *agentRig {
	t.Helper()
	r := &agentRig{op: newKey(t, "operator"), devKey: newKey(t, "dev42")}
	so := serverOpts{
		authorizedKeys: []string{
			authLine(`access="initiate"`, r.op),
			authLine(`access="listen",hostname="dev42"`, r.devKey),
		},
		args: fastServerFlags,
	}
	var devNS string
	if lab != nil {
		so.netns, so.listen = lab.pub, labServerIP+":0"
		devNS, r.opNS = lab.lan, lab.op
		sshdOpts.netns = lab.lan
	}
	r.srv = startServer(t, so)
	r.sshd = startSSHDOpts(t, sshdOpts, r.op)
	r.srv.pinHost(t, "dev42", r.sshd.hostKey)
	r.cfg = r.srv.sshConfig(t, r.op)
	mark := r.srv.mark()
	r.agent = startAgent(t, agentOpts{
		netns: devNS, server: r.srv.addr, name: "dev42", identity: r.devKey.path,
		knownHosts: agentKnownHosts(t, r.srv, r.srv.hostKey),
		forwards:   []string{fwd(22, r.sshd.port)}, args: fastAgentFlags,
	})
	r.agent.awaitRegistered(t, r.srv, mark, 22)
	return r
}

// ssh runs the operator's ssh -F cfg args… to completion.
func (r *agentRig) ssh(t testing.TB, args ...string) result {
	t.Helper()
	return runIn(t, r.opNS, nil, runTimeout, "ssh", append([]string{"-F", r.cfg}, args...)...)
}

// reachable checks that the operator reaches dev42's sshd through the server.
func (r *agentRig) reachable(t testing.TB, what string) {
	t.Helper()
	reached(t, what, r.ssh(t, "-J", "pivot", "dev42", remoteCmd), r.sshd.port)
}

// ---------------------------------------------------------------------------
// A checksummed upload in flight.

// transfer is size bytes of a fixed pseudo-random stream, fed at a limited
// rate into ssh -J pivot dev42 'cat > FILE && sha256sum FILE'.
type transfer struct {
	proc *proc
	file string // on the device (the same file system here)
	want string // hex SHA-256 of the stream
	size int64
	sent atomic.Int64 // bytes handed to ssh so far
}

// Sizes and pace of the in-flight transfers: slow enough that a fault lands
// mid-way, fast enough to keep the suite short.
const (
	transferSize = 64 << 20
	transferRate = 16 << 20 // bytes per second
	transferAt   = 12 << 20 // inject the fault once this much was sent
)

// startTransfer starts the upload from namespace ns with ssh_config cfg.
func startTransfer(t testing.TB, ns, cfg string, size, rate int64) *transfer {
	t.Helper()
	x := &transfer{file: filepath.Join(t.TempDir(), "upload.bin"), size: size}
	h := sha256.New()
	if _, err := io.Copy(h, io.LimitReader(newStream(), size)); err != nil {
		t.Fatal(err)
	}
	x.want = fmt.Sprintf("%x", h.Sum(nil))
	x.proc = nsCommand(ns, "upload", "ssh", "-F", cfg, "-J", "pivot", "dev42", "cat > "+x.file+" && sha256sum "+x.file)
	x.proc.quiet = true // check reports the outcome
	x.proc.cmd.Stdin = &pacedReader{r: io.LimitReader(newStream(), size), rate: rate, sent: &x.sent}
	x.proc.start(t)
	return x
}

// newStream is the transfers' data: the same pseudo-random bytes every time.
func newStream() io.Reader { return rand.NewChaCha8([32]byte{'s', 'b'}) }

// awaitSent waits until n bytes went into ssh.
func (x *transfer) awaitSent(t testing.TB, n int64) {
	t.Helper()
	await(t, runTimeout, fmt.Sprintf("%d MiB of the upload to be sent", n>>20), func() (bool, error) {
		if x.proc.exited() {
			return false, fmt.Errorf("the upload ended after %d bytes, before the fault: %v\n%s", x.sent.Load(), x.proc.err, tail(x.proc.stderr.String(), 20))
		}
		return x.sent.Load() >= n, nil
	})
}

// check waits for the upload to end and fails the test if it claims success
// while the data on the device is not what was sent: an interrupted transfer
// may fail, but only loudly. It reports whether the upload completed.
func (x *transfer) check(t testing.TB, timeout time.Duration) bool {
	t.Helper()
	code := x.proc.waitExit(t, timeout)
	if code != 0 {
		t.Logf("the upload in flight failed loudly (exit %d after %d of %d MiB sent): %s", code, x.sent.Load()>>20, x.size>>20,
			strings.TrimSpace(tail(x.proc.stderr.String(), 3)))
		return false
	}
	out := x.proc.stdout.String()
	f := strings.Fields(out)
	if len(f) != 2 || f[0] != x.want {
		t.Errorf("the upload exited 0 but the device's sha256sum printed %q, want %s: silent corruption", out, x.want)
	}
	if got := sha256File(t, x.file); got != x.want {
		t.Errorf("the upload exited 0 but the file on the device has sha256 %s, want %s: silent corruption", got, x.want)
	}
	t.Logf("the upload in flight completed: %d MiB, sha256 matches", x.size>>20)
	return true
}

// pacedReader reads r at no more than rate bytes per second, counting in sent.
type pacedReader struct {
	r     io.Reader
	rate  int64
	sent  *atomic.Int64
	start time.Time
}

func (p *pacedReader) Read(b []byte) (int, error) {
	if p.start.IsZero() {
		p.start = time.Now()
	}
	// This paces the data source; it synchronises nothing.
	due := p.start.Add(time.Duration(float64(p.sent.Load()) / float64(p.rate) * float64(time.Second)))
	if d := time.Until(due); d > 0 {
		<-time.After(d)
	}
	n, err := p.r.Read(b[:min(len(b), 64<<10)])
	p.sent.Add(int64(n))
	return n, err
}

// ---------------------------------------------------------------------------
// Enrolment.

// enroll runs switchboard enroll NAME --role ROLE --out DIR for server s.
func enroll(t testing.TB, s *server, name, role, dir string, more ...string) {
	t.Helper()
	args := append([]string{"enroll", name, "--role", role, "--out", dir, "--state-dir", s.stateDir, "--server", s.addr}, more...)
	r := run(t, nil, runTimeout, switchboardBin, args...)
	if r.code != 0 {
		t.Fatalf("switchboard enroll failed: %v", r)
	}
	first, _, _ := strings.Cut(strings.TrimSpace(r.stdout+r.stderr), "\n")
	t.Logf("%s: %s", strings.Join(r.args[1:], " "), first)
}

// mustFile fails unless path can be read, and returns its content.
func mustFile(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		entries, _ := os.ReadDir(filepath.Dir(path))
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Fatalf("%v (the directory holds %v)", err, names)
	}
	return string(b)
}

// circuitAtLeast matches an agent's circuit line that carried at least n
// bytes to its target.
func circuitAtLeast(vport int, n int64) logPred {
	return logPred{msgs: []string{"circuit"}, desc: fmt.Sprintf("circuit vport=%d result=ok bytes_to_target>=%d", vport, n), ok: func(e logEntry) bool {
		return e.str("msg") == "circuit" && e.str("result") == "ok" && e.int("vport") == int64(vport) && e.int("bytes_to_target") >= n
	}}
}

// TestAgentEnrol enrols an operator and a device into a running server with
// `switchboard enroll`, runs the agent from the written agent.yaml in front of
// a real sshd, and reaches the device with stock ssh -J and scp -J.
func TestAgentEnrol(t *testing.T) {
	t.Parallel()
	needOpenSSH(t, "scp")
	srv := startServer(t, serverOpts{authorizedKeys: []string{"# keys added by switchboard enroll"}, args: fastServerFlags})

	akMark := srv.mark()
	opDir := filepath.Join(t.TempDir(), "alice")
	enroll(t, srv, "alice", "operator", opDir)
	op := loadKey(t, filepath.Join(opDir, "id_ed25519"))
	mustMatch(t, `(?m)^`+regexp.QuoteMeta(srv.knownHostsName())+`\s+`+regexp.QuoteMeta(srv.hostKey)+`\b`,
		mustFile(t, filepath.Join(opDir, "known_hosts")), "the operator's known_hosts pins the server")
	sshd := startSSHD(t, op)
	devDir := filepath.Join(t.TempDir(), "dev42")
	enroll(t, srv, "dev42", "device", devDir, "--device-dir", devDir, "--forward", fwd(22, sshd.port))

	// What enroll wrote for the device, and into the server's authorized_keys.
	devKeyPath := filepath.Join(devDir, "id_ed25519")
	devKey := loadKey(t, devKeyPath)
	if fi, err := os.Stat(devKeyPath); err != nil {
		t.Fatal(err)
	} else if fi.Mode().Perm()&0o077 != 0 {
		t.Errorf("the device's private key has mode %v; want no access for group and others", fi.Mode().Perm())
	}
	mustMatch(t, `(?m)^`+regexp.QuoteMeta(srv.knownHostsName())+`\s+`+regexp.QuoteMeta(srv.hostKey)+`\b`,
		mustFile(t, filepath.Join(devDir, "known_hosts")), "the device's known_hosts pins the server")
	conf := mustFile(t, filepath.Join(devDir, "agent.yaml"))
	for _, want := range []string{devKeyPath, filepath.Join(devDir, "known_hosts"), srv.addr, "dev42", fwd(22, sshd.port)} {
		mustContain(t, conf, want, "agent.yaml")
	}
	ak := mustFile(t, srv.akPath)
	mustContain(t, ak, devKey.typeAndBlob(), "authorized_keys after enrolling dev42")
	mustContain(t, ak, op.typeAndBlob(), "authorized_keys after enrolling alice")
	// The running server picked both up, without a restart.
	srv.waitLogFrom(t, akMark, logMsg("authorized_keys loaded", "entries", 2), logTimeout)

	mark := srv.mark()
	a := startAgent(t, agentOpts{device: "dev42", config: filepath.Join(devDir, "agent.yaml"), args: fastAgentFlags})
	a.awaitRegistered(t, srv, mark, 22)
	if e := a.waitLogFrom(t, 0, logMsg("connected"), logTimeout); e.str("server") == "" || e.str("host_key") == "" {
		t.Errorf("agent's connected line: want server and host_key: %v", e)
	}
	a.waitLogFrom(t, 0, logMsg("forward registered", "vport", 22), logTimeout)

	srv.pinHost(t, "dev42", sshd.hostKey)
	cfg := srv.sshConfig(t, op)
	reached(t, "ssh -J pivot dev42", runSSH(t, cfg, "-J", "pivot", "dev42", remoteCmd), sshd.port)

	const size = 16 << 20
	src := randomFile(t, t.TempDir(), "payload.bin", size)
	want := sha256File(t, src)
	onDevice := filepath.Join(t.TempDir(), "payload.bin")
	back := filepath.Join(t.TempDir(), "back.bin")
	amark := a.mark()
	r := mustSucceed(t, "scp -J to dev42", run(t, nil, runTimeout, "scp", "-F", cfg, "-J", "pivot", src, "dev42:"+onDevice))
	t.Logf("scp -J of %d MiB to the device: %v", size>>20, r.dur.Round(time.Millisecond))
	if got := sha256File(t, onDevice); got != want {
		t.Fatalf("scp to dev42: sha256 %s on the device, want %s", got, want)
	}
	mustSucceed(t, "scp -J from dev42", run(t, nil, runTimeout, "scp", "-F", cfg, "-J", "pivot", "dev42:"+onDevice, back))
	if got := sha256File(t, back); got != want {
		t.Fatalf("scp from dev42: sha256 %s, want %s", got, want)
	}
	e := a.waitLogFrom(t, amark, circuitAtLeast(22, size), logTimeout)
	if e.str("target") != fmt.Sprintf("127.0.0.1:%d", sshd.port) || e.int("bytes_from_target") <= 0 || e.int("duration_ms") < 0 {
		t.Errorf("agent's circuit line: want target 127.0.0.1:%d, bytes_from_target and duration_ms: %v", sshd.port, e)
	}
}

// TestAgentEnrolForce rotates an enrolled device's key with enroll --force
// while its agent is connected: the old key stops working at once (the live
// device is hung up and cannot come back), and the new key gets in.
func TestAgentEnrolForce(t *testing.T) {
	t.Parallel()
	needOpenSSH(t)
	srv := startServer(t, serverOpts{authorizedKeys: []string{"# keys added by switchboard enroll"}, args: fastServerFlags})
	echo := echoService(t)
	opDir := filepath.Join(t.TempDir(), "alice")
	enroll(t, srv, "alice", "operator", opDir)
	op := loadKey(t, filepath.Join(opDir, "id_ed25519"))
	cfg := srv.sshConfig(t, op)
	echoed := func(what string) {
		t.Helper()
		r := mustSucceed(t, what, run(t, strings.NewReader("ping\n"), runTimeout, "ssh", "-F", cfg, "-W", "dev42:7", "pivot"))
		if r.stdout != "ping\n" {
			t.Fatalf("%s: got %q through the echo service, want \"ping\\n\"", what, r.stdout)
		}
	}

	oldDir := filepath.Join(t.TempDir(), "old")
	enroll(t, srv, "dev42", "device", oldDir, "--device-dir", oldDir, "--forward", fwd(7, echo))
	oldKey := loadKey(t, filepath.Join(oldDir, "id_ed25519"))
	mark := srv.mark()
	old := startAgent(t, agentOpts{device: "dev42", config: filepath.Join(oldDir, "agent.yaml"), args: fastAgentFlags})
	old.awaitRegistered(t, srv, mark, 7)
	echoed("dev42:7 with the first key")

	smark, amark := srv.mark(), old.mark()
	newDir := filepath.Join(t.TempDir(), "new")
	enroll(t, srv, "dev42", "device", newDir, "--device-dir", newDir, "--forward", fwd(7, echo), "--force")
	newKey := loadKey(t, filepath.Join(newDir, "id_ed25519"))
	if newKey.fp == oldKey.fp {
		t.Fatalf("enroll --force kept the key %s", oldKey.fp)
	}
	ak := mustFile(t, srv.akPath)
	mustContain(t, ak, newKey.typeAndBlob(), "authorized_keys after enroll --force")
	if strings.Contains(ak, oldKey.typeAndBlob()) {
		t.Errorf("authorized_keys still holds the rotated-out key:\n%s", ak)
	}

	// The old key stops working at once: hung up, and refused when it retries.
	e := srv.waitLogFrom(t, smark, logMsg("device disconnected", "device", "dev42"), logTimeout)
	t.Logf("the device with the old key was hung up: %v", e)
	srv.waitLogFrom(t, smark, logMsg("auth", "result", "deny", "fingerprint", oldKey.fp), logTimeout)
	old.waitLogFrom(t, amark, logMsg("waiting"), logTimeout)

	nmark := srv.mark()
	fresh := startAgent(t, agentOpts{device: "dev42", config: filepath.Join(newDir, "agent.yaml"), args: fastAgentFlags})
	fresh.awaitRegistered(t, srv, nmark, 7)
	echoed("dev42:7 with the rotated key")
	if got := srv.logsFrom(smark, logMsg("device registered", "fingerprint", oldKey.fp)); len(got) != 0 {
		t.Errorf("the rotated-out key registered again: %v", got)
	}
}

// TestAgentFaults breaks one thing at a time under a connected agent with an
// upload in flight, and expects the device to be reachable again afterwards
// and the upload either to fail loudly or to arrive intact.
func TestAgentFaults(t *testing.T) {
	t.Parallel()
	needOpenSSH(t)

	t.Run("server killed and restarted", func(t *testing.T) {
		t.Parallel()
		r := newAgentRig(t, nil, sshdOpts{})
		x := startTransfer(t, "", r.cfg, transferSize, transferRate)
		x.awaitSent(t, transferAt)

		amark := r.agent.mark()
		r.srv.kill(t)
		r.agent.waitLogFrom(t, amark, logMsg("disconnected"), logTimeout)
		x.check(t, runTimeout)
		// Keep the server down until the agent has retried twice into the
		// closed port, so the restart meets an agent in backoff.
		r.agent.waitLogFrom(t, amark, logMsg("waiting"), logTimeout)
		r.agent.waitLogFrom(t, r.agent.mark(), logMsg("waiting"), logTimeout)

		amark = r.agent.mark()
		srv2 := startServer(t, serverOpts{stateDir: r.srv.stateDir, listen: r.srv.addr, args: fastServerFlags})
		listening := srv2.waitLog(t, sshListening, logTimeout)
		reg := srv2.waitLogFrom(t, 0, logMsg("device registered", "device", "dev42", "port", 22), 20*time.Second, r.agent.proc)
		back := logTime(t, reg).Sub(logTime(t, listening))
		t.Logf("reconnect after a server restart: device registered %v after the new server listened (backoff-max 1s)", back.Round(time.Millisecond))
		if back > 5*time.Second {
			t.Errorf("the agent came back %v after the server restarted, want within a few seconds with --backoff-max 1s", back)
		}
		r.agent.waitLogFrom(t, amark, logMsg("connected"), logTimeout)
		r.reachable(t, "dev42 after the server restart")
	})

	t.Run("network cut", func(t *testing.T) {
		t.Parallel()
		lab := newNATLab(t)
		r := newAgentRig(t, lab, sshdOpts{})
		x := startTransfer(t, r.opNS, r.cfg, transferSize, transferRate)
		x.awaitSent(t, transferAt)

		smark, amark := r.srv.mark(), r.agent.mark()
		lab.cut(t)
		cut := time.Now()
		e := r.srv.waitLogFrom(t, smark, logMsg("device disconnected", "device", "dev42"), 20*time.Second)
		t.Logf("the server dropped the cut-off device %v after the cut: %v", logTime(t, e).Sub(cut).Round(time.Millisecond), e)
		ae := r.agent.waitLogFrom(t, amark, logMsg("disconnected"), 20*time.Second)
		t.Logf("the agent noticed %v after the cut: %v", logTime(t, ae).Sub(cut).Round(time.Millisecond), ae)
		x.check(t, runTimeout)

		smark = r.srv.mark()
		lab.restore(t)
		restored := time.Now()
		r.agent.awaitRegistered(t, r.srv, smark, 22)
		t.Logf("reconnect after the network came back: %v", time.Since(restored).Round(time.Millisecond))
		r.reachable(t, "dev42 after the network came back")
	})

	t.Run("agent frozen", func(t *testing.T) {
		t.Parallel()
		r := newAgentRig(t, nil, sshdOpts{})
		x := startTransfer(t, "", r.cfg, transferSize, transferRate)
		x.awaitSent(t, transferAt)

		smark := r.srv.mark()
		r.agent.signal(t, syscall.SIGSTOP)
		t.Cleanup(func() { r.agent.proc.signal(syscall.SIGCONT) })
		stopped := time.Now()
		e := r.srv.waitLogFrom(t, smark, logMsg("device disconnected", "device", "dev42"), 20*time.Second)
		t.Logf("the server dropped the frozen agent after %v: %v", time.Since(stopped).Round(time.Millisecond), e)
		x.check(t, runTimeout)

		smark = r.srv.mark()
		r.agent.signal(t, syscall.SIGCONT)
		resumed := time.Now()
		e = r.srv.waitLogFrom(t, smark, anyOf(
			logMsg("device takeover", "device", "dev42"),
			logMsg("device registered", "device", "dev42", "port", 22),
		), 20*time.Second, r.agent.proc)
		t.Logf("the agent took its name back %v after SIGCONT: %v", time.Since(resumed).Round(time.Millisecond), e)
		r.reachable(t, "dev42 after SIGCONT")
	})

	t.Run("target down", func(t *testing.T) {
		t.Parallel()
		r := newAgentRig(t, nil, sshdOpts{})
		x := startTransfer(t, "", r.cfg, transferSize, transferRate)
		x.awaitSent(t, transferAt)

		amark := r.agent.mark()
		r.sshd.stop(t)
		res := r.ssh(t, "-J", "pivot", "dev42", "true")
		if res.code == 0 {
			t.Fatalf("ssh -J pivot dev42 succeeded with the device's sshd down: %v", res)
		}
		mustMatch(t, `switchboard: device "dev42" could not connect to its port 22: .*(?i:connection refused)`, res.stderr, "the operator's ssh with the target down")
		e := r.agent.waitLogFrom(t, amark, logMsg("circuit", "vport", 22, "result", "refused"), logTimeout)
		if !strings.Contains(strings.ToLower(e.str("error")), "connection refused") || e.str("target") == "" {
			t.Errorf("agent's circuit line for the refused target: want target and an error naming the refusal: %v", e)
		}
		// The upload's session was accepted before the sshd went: it runs on.
		x.check(t, runTimeout)

		r.sshd.restart(t)
		r.reachable(t, "dev42 with its sshd back")
	})
}

// TestAgentRefusals: an agent that distrusts the server's host key, an agent
// with a key the server does not know, and an agent with an operator's key
// never register a device, and each says why.
func TestAgentRefusals(t *testing.T) {
	t.Parallel()
	need(t, "ssh-keygen")
	op := newKey(t, "operator")
	devKey := newKey(t, "dev42")
	stranger := newKey(t, "stranger")
	srv := startServer(t, serverOpts{
		authorizedKeys: []string{
			authLine(`access="initiate"`, op),
			authLine(`access="listen",hostname="dev42"`, devKey),
		},
		args: fastServerFlags,
	})
	echo := echoService(t)

	t.Run("host key mismatch", func(t *testing.T) {
		t.Parallel()
		impostor := newKey(t, "impostor")
		smark := srv.mark()
		a := startAgent(t, agentOpts{
			server: srv.addr, name: "dev42", identity: devKey.path, knownHosts: agentKnownHosts(t, srv, impostor.typeAndBlob()),
			forwards: []string{fwd(22, echo)}, args: fastAgentFlags,
		})
		e := a.waitLogFrom(t, 0, logMsg("server host key mismatch"), logTimeout)
		if e.str("level") != "ERROR" || e.str("server") != srv.addr || e.str("error") == "" {
			t.Errorf("host key mismatch line: want level ERROR, server %s and an error: %v", srv.addr, e)
		}
		// It waits and tries again, and fails the same way again.
		from := a.mark()
		a.waitLogFrom(t, from, logMsg("server host key mismatch"), logTimeout)
		if got := a.logsFrom(0, logMsg("waiting")); len(got) == 0 {
			t.Errorf("no waiting line between two attempts")
		}
		if got := srv.logsFrom(smark, logMsg("device registered", "device", "dev42")); len(got) != 0 {
			t.Errorf("the device registered although the agent distrusts the server: %v", got)
		}
		if got := a.logsFrom(0, anyOf(logMsg("connected"), logMsg("forward registered"))); len(got) != 0 {
			t.Errorf("the agent went on with a server whose host key it does not trust: %v", got)
		}
		if got := srv.logsFrom(smark, logMsg("auth", "fingerprint", devKey.fp)); len(got) != 0 {
			t.Errorf("the agent offered its key to a server it does not trust: %v", got)
		}
	})

	t.Run("unenrolled key", func(t *testing.T) {
		t.Parallel()
		smark := srv.mark()
		a := deviceAgent(t, srv, stranger, "dev43", fwd(22, echo))
		e := srv.waitLogFrom(t, smark, logMsg("auth", "result", "deny", "fingerprint", stranger.fp), logTimeout, a.proc)
		t.Logf("server: %v", e)
		w := a.waitLogFrom(t, 0, logMsg("waiting"), logTimeout)
		if w.str("reason") == "" || w.str("backoff") == "" {
			t.Errorf("agent's waiting line: want reason and backoff: %v", w)
		}
		if got := srv.logsFrom(smark, logMsg("device registered", "device", "dev43")); len(got) != 0 {
			t.Errorf("an unenrolled key registered a device: %v", got)
		}
	})

	t.Run("operator key", func(t *testing.T) {
		t.Parallel()
		smark := srv.mark()
		a := deviceAgent(t, srv, op, "dev44", fwd(22, echo))
		e := a.waitLogFrom(t, 0, logMsg("forward refused", "vport", 22), logTimeout)
		if e.str("reason") == "" {
			t.Errorf("agent's forward refused line: no reason: %v", e)
		}
		srv.waitLogFrom(t, smark, logMsg("forward refused", "port", 22), logTimeout)
		if got := srv.logsFrom(smark, logMsg("device registered")); len(got) != 0 {
			t.Errorf("an operator key registered a device: %v", got)
		}
	})
}

// TestAgentLifecycle: SIGTERM stops the agent cleanly and the server sees the
// device go; SIGHUP re-reads the config file and registers a new forward.
func TestAgentLifecycle(t *testing.T) {
	t.Parallel()
	needOpenSSH(t)

	t.Run("SIGTERM", func(t *testing.T) {
		t.Parallel()
		r := newAgentRig(t, nil, sshdOpts{})
		smark, amark := r.srv.mark(), r.agent.mark()
		r.agent.stopped = true
		r.agent.signal(t, syscall.SIGTERM)
		sent := time.Now()
		if code := r.agent.proc.waitExit(t, 5*time.Second); code != 0 {
			t.Errorf("agent exited with status %d after SIGTERM, want 0:\n%s", code, tail(r.agent.proc.stderr.String(), 10))
		}
		t.Logf("agent exited %v after SIGTERM", time.Since(sent).Round(time.Millisecond))
		if got := r.agent.logsFrom(amark, logMsg("stopping")); len(got) == 0 {
			t.Errorf("no stopping line after SIGTERM; log tail:\n%s", tail(r.agent.proc.stderr.String(), 10))
		}
		r.srv.waitLogFrom(t, smark, logMsg("device disconnected", "device", "dev42"), logTimeout)
		res := r.ssh(t, "-J", "pivot", "dev42", "true")
		mustMatch(t, `switchboard: device "dev42" is offline`, res.stderr, "ssh -J pivot dev42 after the agent stopped")
	})

	t.Run("SIGHUP", func(t *testing.T) {
		t.Parallel()
		op := newKey(t, "operator")
		devKey := newKey(t, "dev42")
		srv := startServer(t, serverOpts{
			authorizedKeys: []string{authLine(`access="initiate"`, op), authLine(`access="listen",hostname="dev42"`, devKey)},
			args:           fastServerFlags,
		})
		sshd := startSSHD(t, op)
		srv.pinHost(t, "dev42", sshd.hostKey)
		cfg := srv.sshConfig(t, op)
		echo := echoService(t)

		conf := filepath.Join(t.TempDir(), "agent.yaml")
		knownHosts := agentKnownHosts(t, srv, srv.hostKey)
		writeConf := func(forwards ...string) {
			t.Helper()
			var b strings.Builder
			fmt.Fprintf(&b, "server: %q\nname: \"dev42\"\nidentity: %q\nknown_hosts: %q\nforwards:\n",
				srv.addr, devKey.path, knownHosts)
			for _, f := range forwards {
				fmt.Fprintf(&b, "  - %q\n", f)
			}
			b.WriteString("keepalive_interval: 1s\nkeepalive_count: 2\nbackoff_min: 100ms\nbackoff_max: 1s\n")
			tmp := conf + ".tmp"
			if err := os.WriteFile(tmp, []byte(b.String()), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(tmp, conf); err != nil {
				t.Fatal(err)
			}
		}
		writeConf(fwd(22, sshd.port))
		smark := srv.mark()
		a := startAgent(t, agentOpts{device: "dev42", config: conf})
		a.awaitRegistered(t, srv, smark, 22)
		reached(t, "dev42 before the reload", runSSH(t, cfg, "-J", "pivot", "dev42", remoteCmd), sshd.port)

		writeConf(fwd(22, sshd.port), fwd(7, echo))
		smark, amark := srv.mark(), a.mark()
		a.signal(t, syscall.SIGHUP)
		a.waitLogFrom(t, amark, logMsg("reloaded"), logTimeout)
		a.waitLogFrom(t, amark, logMsg("forward registered", "vport", 7), logTimeout)
		a.awaitRegistered(t, srv, smark, 7)
		res := mustSucceed(t, "ssh -W dev42:7 pivot", run(t, strings.NewReader("ping\n"), runTimeout, "ssh", "-F", cfg, "-W", "dev42:7", "pivot"))
		if res.stdout != "ping\n" {
			t.Errorf("the new forward to the echo service: got %q, want \"ping\\n\"", res.stdout)
		}
		reached(t, "dev42:22 after the reload", runSSH(t, cfg, "-J", "pivot", "dev42", remoteCmd), sshd.port)
		if got := srv.logsFrom(smark, logMsg("device disconnected", "device", "dev42")); len(got) != 0 {
			t.Logf("note: the reload reconnected the device: %v", got)
		}
	})
}
