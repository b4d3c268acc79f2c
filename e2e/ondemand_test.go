package e2e

import (
	"bufio"
	"bytes"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/switchboard-dev/switchboard/internal/pki"
)

// The on-demand timings of this suite: a wake-up must be answered within 5s,
// and a woken agent hangs up 2s after its last circuit closed.
const (
	wakeTimeout = 5 * time.Second
	idleTimeout = 2 * time.Second
)

// ---------------------------------------------------------------------------
// A server with a broker, an operator, and a real sshd for the devices.

// onDemandOpts configures newOnDemandRig.
type onDemandOpts struct {
	stateDir   string   // a prepared state dir (default: a fresh one)
	mqttURL    string   // an external broker's mqtts:// URL; "" runs the embedded broker on a free port
	serverArgs []string // more serve flags (for an external broker: --mqtt and its TLS files)
}

// onDemandRig is a server with --public-addr and a broker, an operator key
// allowed everywhere, and a real sshd that enrolled devices forward to.
type onDemandRig struct {
	srv     *server
	so      serverOpts // to start the server again on the same ports and state dir
	mqttURL string     // mqtts:// URL devices are enrolled with
	broker  string     // the embedded broker's --mqtt-listen address, "" for an external one
	op      key
	cfg     string // the operator's ssh_config
	sshd    *sshd
	entries int // authorized_keys entries so far
}

// newOnDemandRig starts the server with --public-addr on a port that was
// free a moment ago (the address wake-ups name must be known before it
// starts), --wake-timeout 5s, and the embedded broker on another free port
// unless opts names an external one.
func newOnDemandRig(t testing.TB, o onDemandOpts) *onDemandRig {
	t.Helper()
	r := &onDemandRig{op: newKey(t, "operator"), entries: 1}
	listen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	args := append([]string{"--public-addr", listen, "--wake-timeout", wakeTimeout.String()}, fastServerFlags...)
	if o.mqttURL == "" {
		r.broker = fmt.Sprintf("127.0.0.1:%d", freePort(t))
		args = append(args, "--mqtt-listen", r.broker)
		r.mqttURL = "mqtts://" + r.broker
	} else {
		r.mqttURL = o.mqttURL
	}
	args = append(args, o.serverArgs...)
	r.so = serverOpts{authorizedKeys: []string{authLine(`access="initiate"`, r.op)}, args: args, stateDir: o.stateDir, listen: listen}
	r.srv = startServer(t, r.so)
	r.so.stateDir, r.so.authorizedKeys = r.srv.stateDir, nil // a restart keeps both
	if r.broker != "" {
		r.awaitBroker(t, r.broker)
	}
	r.sshd = startSSHD(t, r.op)
	r.cfg = r.srv.sshConfig(t, r.op)
	return r
}

// awaitBroker waits for the embedded broker's listening line on addr.
func (r *onDemandRig) awaitBroker(t testing.TB, addr string) {
	t.Helper()
	e := r.srv.waitLog(t, logMsg("mqtt broker listening"), startTimeout)
	if e.str("addr") != addr {
		t.Errorf("mqtt broker listening on %q, want --mqtt-listen %s: %v", e.str("addr"), addr, e)
	}
}

// restart stops the server with SIGTERM and starts it again on the same
// ports with the same state dir and flags.
func (r *onDemandRig) restart(t testing.TB) {
	t.Helper()
	if code := r.srv.stop(t); code != 0 {
		t.Errorf("switchboard exited with status %d after SIGTERM, want 0", code)
	}
	knownHosts := r.srv.knownHosts
	r.srv = startServer(t, r.so)
	if r.broker != "" {
		r.awaitBroker(t, r.broker)
	}
	// Same host key, same port: the operator's pins still hold.
	b, err := os.ReadFile(knownHosts)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(r.srv.knownHosts, b, 0o600); err != nil {
		t.Fatal(err)
	}
	r.cfg = r.srv.sshConfig(t, r.op)
}

// ssh runs the operator's ssh -F cfg args… to completion.
func (r *onDemandRig) ssh(t testing.TB, args ...string) result {
	t.Helper()
	return runSSH(t, r.cfg, args...)
}

// enrolled is a device enrolled with --on-demand: its files are in dir.
type enrolled struct{ name, dir string }

// enroll runs switchboard enroll NAME --role device --on-demand for the
// rig's broker, forwarding port 22 to the rig's sshd, checks what it wrote,
// and waits until the server has reloaded authorized_keys.
func (r *onDemandRig) enroll(t testing.TB, name string) enrolled {
	t.Helper()
	d := enrolled{name: name, dir: filepath.Join(t.TempDir(), name)}
	mark := r.srv.mark()
	enroll(t, r.srv, name, "device", d.dir, "--on-demand", "--mqtt-url", r.mqttURL, "--device-dir", d.dir, "--forward", fwd(22, r.sshd.port))
	r.entries++
	r.srv.waitLogFrom(t, mark, logMsg("authorized_keys loaded", "entries", r.entries), logTimeout)

	conf := mustFile(t, filepath.Join(d.dir, "agent.yaml"))
	for _, re := range []string{
		`(?m)^on_demand:\s*true\s*$`,
		`(?m)^mqtt:\s*"?` + regexp.QuoteMeta(r.mqttURL) + `"?\s*$`,
		`(?m)^mqtt_ca:\s*"?` + regexp.QuoteMeta(filepath.Join(d.dir, "mqtt-ca.pem")) + `"?\s*$`,
		`(?m)^mqtt_cert:\s*"?` + regexp.QuoteMeta(filepath.Join(d.dir, "mqtt.crt")) + `"?\s*$`,
		`(?m)^mqtt_key:\s*"?` + regexp.QuoteMeta(filepath.Join(d.dir, "mqtt.key")) + `"?\s*$`,
	} {
		mustMatch(t, re, conf, "agent.yaml of an on-demand device")
	}
	if cn := certCN(t, filepath.Join(d.dir, "mqtt.crt")); cn != name {
		t.Errorf("%s/mqtt.crt has CN %q, want the device's name %q", d.dir, cn, name)
	}
	if fi, err := os.Stat(filepath.Join(d.dir, "mqtt.key")); err != nil {
		t.Fatal(err)
	} else if fi.Mode().Perm()&0o077 != 0 {
		t.Errorf("%s/mqtt.key has mode %v; want no access for group and others", d.dir, fi.Mode().Perm())
	}
	caPEM := mustFile(t, filepath.Join(d.dir, "mqtt-ca.pem"))
	if !strings.Contains(caPEM, "BEGIN CERTIFICATE") {
		t.Errorf("%s/mqtt-ca.pem is not a PEM certificate:\n%s", d.dir, caPEM)
	}
	r.srv.pinHost(t, name, r.sshd.hostKey) // the operator's view of the device's sshd
	return d
}

// certCN returns the subject CN of the PEM certificate in path.
func certCN(t testing.TB, path string) string {
	t.Helper()
	block, _ := pem.Decode([]byte(mustFile(t, path)))
	if block == nil || block.Type != "CERTIFICATE" {
		t.Fatalf("%s: no PEM certificate", path)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return c.Subject.CommonName
}

// startAgent runs the enrolled device's agent from its agent.yaml with the
// suite's fast timings and waits until it says it is asleep.
func (r *onDemandRig) startAgent(t testing.TB, d enrolled, more ...string) *agent {
	t.Helper()
	args := append([]string{"--idle-timeout", idleTimeout.String()}, fastAgentFlags...)
	a := startAgent(t, agentOpts{device: d.name, config: filepath.Join(d.dir, "agent.yaml"), args: append(args, more...)})
	e := a.waitLogFrom(t, 0, logMsg("asleep"), startTimeout)
	if want := "switchboard/" + d.name + "/wake"; e.str("topic") != want {
		t.Errorf("agent's asleep line: topic %q, want %q: %v", e.str("topic"), want, e)
	}
	return a
}

// identity is the enrolled device's MQTT identity, from its enrolment files.
func (r *onDemandRig) identity(d enrolled) mqttIdentity {
	return mqttIdentity{url: r.mqttURL, ca: filepath.Join(d.dir, "mqtt-ca.pem"), cert: filepath.Join(d.dir, "mqtt.crt"),
		key: filepath.Join(d.dir, "mqtt.key"), id: d.name}
}

// serverIdentity issues a client certificate with CN switchboard-server from
// the state dir's CA: whoever holds the CA key can speak for the server.
func (r *onDemandRig) serverIdentity(t testing.TB) mqttIdentity {
	t.Helper()
	ca := loadStateCA(t, r.srv.stateDir)
	cert, key := issueFiles(t, ca, serverIdentity, pki.ClientCert)
	return mqttIdentity{url: r.mqttURL, ca: filepath.Join(r.srv.stateDir, "mqtt-ca.pem"), cert: cert, key: key, id: serverIdentity}
}

// mqttPort is the broker's port.
func (r *onDemandRig) mqttPort(t testing.TB) int {
	t.Helper()
	u, err := url.Parse(r.mqttURL)
	if err != nil {
		t.Fatal(err)
	}
	p, err := strconv.Atoi(u.Port())
	if err != nil {
		t.Fatalf("MQTT URL %q: %v", r.mqttURL, err)
	}
	return p
}

// odRow is one object of `ls --json`, with the on-demand fields.
type odRow struct {
	Name     string `json:"name"`
	State    string `json:"state"`
	Since    string `json:"since"`
	OnDemand bool   `json:"on_demand"`
}

// ls runs ls --json and returns the rows by name.
func (r *onDemandRig) ls(t testing.TB) map[string]odRow {
	t.Helper()
	res := mustSucceed(t, "ssh pivot ls --json", r.ssh(t, "pivot", "ls", "--json"))
	var rows []odRow
	if err := json.Unmarshal([]byte(res.stdout), &rows); err != nil {
		t.Fatalf("ls --json: %v\n%s", err, res.stdout)
	}
	out := map[string]odRow{}
	for _, row := range rows {
		out[strings.ToLower(row.Name)] = row
	}
	return out
}

// awaitState polls ls --json until name's state is state, and returns the row.
func (r *onDemandRig) awaitState(t testing.TB, name, state string) odRow {
	t.Helper()
	return r.awaitStateWithin(t, name, state, logTimeout)
}

func (r *onDemandRig) awaitStateWithin(t testing.TB, name, state string, timeout time.Duration) odRow {
	t.Helper()
	var row odRow
	deadline := time.Now().Add(timeout)
	await(t, timeout+runTimeout, fmt.Sprintf("ls --json to show %s %s", name, state), func() (bool, error) {
		row = r.ls(t)[name]
		if row.State == state {
			return true, nil
		}
		if time.Now().After(deadline) {
			return false, fmt.Errorf("after %v it shows %+v", timeout, row)
		}
		return false, nil
	})
	if !row.OnDemand {
		t.Errorf("ls --json: %s is %+v: want \"on_demand\": true", name, row)
	}
	if _, err := time.Parse(time.RFC3339, row.Since); err != nil {
		t.Errorf("ls --json: %s since %q: want an RFC 3339 time: %v", name, row.Since, err)
	}
	return row
}

// hangups returns the agent's hanging up lines from log index from on, and
// for each how long the agent had been idle: the time since the last circuit
// closed, or since its forward was registered if no circuit came.
func hangups(t testing.TB, a *agent, from int) (lines []logEntry, idle []time.Duration) {
	t.Helper()
	var last logEntry
	for _, e := range a.logsFrom(from, anyOf(logMsg("circuit"), logMsg("forward registered"), logMsg("hanging up"))) {
		if e.str("msg") != "hanging up" {
			last = e
			continue
		}
		d := time.Duration(-1)
		if last != nil {
			d = logTime(t, e).Sub(logTime(t, last))
		}
		lines, idle = append(lines, e), append(idle, d)
		last = nil
	}
	return lines, idle
}

// checkIdle reports an error unless the agent hung up after about
// --idle-timeout without a circuit.
func checkIdle(t testing.TB, hang logEntry, idle time.Duration) {
	t.Helper()
	if want := "no circuit for " + idleTimeout.String(); hang.str("reason") != want {
		t.Errorf("the agent's hanging up reason is %q, want %q: %v", hang.str("reason"), want, hang)
	}
	switch {
	case idle < 0:
		t.Errorf("the agent hung up with neither a circuit nor a registered forward before: %v", hang)
	case idle < idleTimeout-100*time.Millisecond || idle > idleTimeout+3*time.Second:
		t.Errorf("the agent hung up after %v without a circuit, want about --idle-timeout %v: %v", idle, idleTimeout, hang)
	default:
		t.Logf("the agent hung up after %v without a circuit (--idle-timeout %v)", idle.Round(time.Millisecond), idleTimeout)
	}
}

// checkedHangups checks every hang-up of the agent from log index from on,
// and returns how many there were.
func checkedHangups(t testing.TB, a *agent, from int) int {
	t.Helper()
	lines, idle := hangups(t, a, from)
	for i := range lines {
		checkIdle(t, lines[i], idle[i])
	}
	return len(lines)
}

// awaitHangup waits for the agent's hang-up number nth (from 0) from log
// index from on, checks that it came after --idle-timeout without a
// circuit, and that the agent went back to sleep and said so.
func (r *onDemandRig) awaitHangup(t testing.TB, a *agent, from, nth int) {
	t.Helper()
	await(t, logTimeout, fmt.Sprintf("hang-up %d of agent %s", nth+1, a.name), func() (bool, error) {
		if a.proc.exited() {
			return false, fmt.Errorf("agent %s exited: %v\n%s", a.name, a.proc.err, tail(a.proc.stderr.String(), 20))
		}
		lines, _ := hangups(t, a, from)
		return len(lines) > nth, nil
	})
	lines, idle := hangups(t, a, from)
	checkIdle(t, lines[nth], idle[nth])
	r.awaitState(t, a.name, "asleep")
	if lines := a.logsFrom(from, anyOf(logMsg("hanging up"), logMsg("asleep"))); lines[len(lines)-1].str("msg") != "asleep" {
		t.Errorf("the agent published asleep after hanging up but did not log it (want \"hanging up\", then \"asleep\" again): %v", lines)
	}
}

// awaitCircuits waits for n ok circuit lines of the server for device from
// log index from on, and returns them.
func (r *onDemandRig) awaitCircuits(t testing.TB, from int, device string, n int) []logEntry {
	t.Helper()
	var got []logEntry
	await(t, logTimeout, fmt.Sprintf("%d circuits to %s in the server's log", n, device), func() (bool, error) {
		got = r.srv.logsFrom(from, logMsg("circuit", "device", device, "result", "ok"))
		return len(got) >= n, nil
	})
	return got
}

// shouldMatch reports an error unless re matches s.
func shouldMatch(t testing.TB, re, s, what string) {
	t.Helper()
	if !regexp.MustCompile(re).MatchString(s) {
		t.Errorf("%s: want a match for %q in:\n%s", what, re, s)
	}
}

// ---------------------------------------------------------------------------
// Payloads, as design.md fixes them.

func wakeJSON(id, server string, expires time.Time) string {
	return fmt.Sprintf(`{"v":1,"id":%q,"server":%q,"expires":%q}`, id, server, expires.UTC().Format(time.RFC3339))
}

func stateJSON(state string, since time.Time) string {
	return fmt.Sprintf(`{"v":1,"state":%q,"since":%q,"agent":"e2e"}`, state, since.UTC().Format(time.RFC3339))
}

var regexpWakeID = regexp.MustCompile(`^[A-Za-z0-9_-]{8,64}$`)

// checkWakePayload checks a wake-up the server published: version 1, an id,
// the server's public address, and an expiry within the wake timeout.
func checkWakePayload(t testing.TB, payload, server string) {
	t.Helper()
	var m struct {
		V       int    `json:"v"`
		ID      string `json:"id"`
		Server  string `json:"server"`
		Expires string `json:"expires"`
	}
	dec := json.NewDecoder(strings.NewReader(payload))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		t.Errorf("wake-up payload %s: %v", payload, err)
		return
	}
	exp, err := time.Parse(time.RFC3339, m.Expires)
	switch {
	case m.V != 1 || !regexpWakeID.MatchString(m.ID) || m.Server != server:
		t.Errorf("wake-up payload %s: want v 1, an id of 8-64 [A-Za-z0-9_-] and server %s", payload, server)
	case err != nil:
		t.Errorf("wake-up payload %s: expires: %v", payload, err)
	case exp.After(time.Now().Add(wakeTimeout + time.Second)):
		t.Errorf("wake-up payload %s: expires later than the wake timeout (%v)", payload, wakeTimeout)
	}
}

// ---------------------------------------------------------------------------
// Small observers.

// sshConnected matches the agent's "connected" line for its SSH connection
// to the server (with server and host_key), not its MQTT client's.
var sshConnected = logPred{msgs: []string{"connected"}, desc: `msg="connected" with server and host_key`, ok: func(e logEntry) bool {
	return e.str("msg") == "connected" && e.str("component") != "mqtt" && e.str("host_key") != ""
}}

// establishedTo reports whether process pid has an established TCP
// connection to port (IPv4 or IPv6), from /proc.
func establishedTo(pid, port int) bool {
	inodes := map[string]bool{}
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, fd := range fds {
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if inode, ok := strings.CutPrefix(link, "socket:["); err == nil && ok {
			inodes[strings.TrimSuffix(inode, "]")] = true
		}
	}
	for _, table := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, table))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
			f := strings.Fields(sc.Text())
			if len(f) < 10 || f[3] != "01" || !inodes[f[9]] {
				continue
			}
			_, remPort, _ := strings.Cut(f[2], ":")
			if p, err := strconv.ParseInt(remPort, 16, 32); err == nil && int(p) == port {
				return true
			}
		}
	}
	return false
}

// decoy listens on 127.0.0.1 and counts the connections it is offered.
func decoy(t testing.TB) (addr string, accepted *atomic.Int64) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted = &atomic.Int64{}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	t.Cleanup(func() { l.Close() })
	return l.Addr().String(), accepted
}

// setupTimes describes the setup_ms of the server's circuit lines: the time
// from the operator's request to the device's channel, wake-up included.
func setupTimes(circuits []logEntry) string {
	var ms []string
	for _, e := range circuits {
		ms = append(ms, e.str("setup_ms")+" ms")
	}
	return "circuit setup in the server: " + strings.Join(ms, ", ")
}

// concurrently runs fns at the same time and returns when all have returned.
func concurrently(fns ...func()) {
	done := make(chan struct{}, len(fns))
	for _, fn := range fns {
		go func() {
			defer func() { done <- struct{}{} }()
			fn()
		}()
	}
	for range fns {
		<-done
	}
}

// refusedWith checks that r failed with ssh's "open failed" line carrying
// the sentence re, and returns the submatches of re.
func refusedWith(t testing.TB, what string, r result, re string) []string {
	t.Helper()
	if r.code == 0 {
		t.Fatalf("%s: want a refusal, got success: %v", what, r)
	}
	m := mustMatch(t, `(?m)open failed: [^:\n]+: (`+re+`)\r?$`, r.stderr, what)
	return m[1:]
}

// ---------------------------------------------------------------------------
// The tests.

// TestOnDemandWake enrols a device with --on-demand and runs its agent from
// the written agent.yaml in front of a real sshd, with the embedded broker.
// The device is asleep (MQTT only, no SSH connection) until an operator asks
// for it; then stock ssh -J and scp -J just work, after a short pause; with
// no circuit for --idle-timeout it hangs up and is asleep again.
func TestOnDemandWake(t *testing.T) {
	t.Parallel()
	needOpenSSH(t, "scp")
	r := newOnDemandRig(t, onDemandOpts{})
	d := r.enroll(t, "dev42")
	a := r.startAgent(t, d)

	// Asleep: the broker knows it, the SSH side has never seen it.
	row := r.awaitState(t, "dev42", "asleep")
	t.Logf("ls --json: %+v", row)
	st := mustSucceed(t, "ssh pivot status dev42", r.ssh(t, "pivot", "status", "dev42"))
	mustMatch(t, `(?m)^on demand:\s+asleep since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ`, st.stdout, "ssh pivot status dev42 (asleep)")
	if got := r.srv.logsFrom(0, logMsg("device registered", "device", "dev42")); len(got) != 0 {
		t.Fatalf("an on-demand device registered before anyone asked for it: %v", got)
	}
	if got := a.logsFrom(0, sshConnected); len(got) != 0 {
		t.Fatalf("the on-demand agent connected over SSH before it was woken: %v", got)
	}

	for round := 1; round <= 2; round++ {
		smark, amark := r.srv.mark(), a.mark()
		cold := r.ssh(t, "-J", "pivot", "dev42", remoteCmd)
		reached(t, fmt.Sprintf("round %d: ssh -J pivot dev42 (asleep)", round), cold, r.sshd.port)
		warm := r.ssh(t, "-J", "pivot", "dev42", remoteCmd)
		reached(t, fmt.Sprintf("round %d: ssh -J pivot dev42 (connected)", round), warm, r.sshd.port)
		circuits := r.awaitCircuits(t, smark, "dev42", 2)
		// On a loaded machine the second circuit may come more than
		// --idle-timeout after the first ended: the device then rightly
		// hung up in between, and the second circuit woke it again.
		between := checkedHangups(t, a, amark)
		if between == 0 {
			t.Logf("round %d: ssh -J pivot dev42 took %v asleep, %v connected: the wake-up added %v (target: at most 1.5s); %s",
				round, cold.dur.Round(time.Millisecond), warm.dur.Round(time.Millisecond), (cold.dur - warm.dur).Round(time.Millisecond), setupTimes(circuits))
		} else {
			t.Logf("round %d: the second ssh -J came more than --idle-timeout after the first (a loaded machine: %v, then %v): the device hung up in between, no connected figure; %s",
				round, cold.dur.Round(time.Millisecond), warm.dur.Round(time.Millisecond), setupTimes(circuits))
		}

		// One wake-up per time the device was asleep, answered by dialling
		// the public address.
		wakes := r.srv.logsFrom(smark, logMsg("wake sent", "device", "dev42"))
		if len(wakes) != 1+between {
			t.Fatalf("round %d: %d wake sent lines for two circuits and %d hang-ups between them, want %d: %v", round, len(wakes), between, 1+between, wakes)
		}
		if wakes[0].str("state") != "asleep" || wakes[0].str("id") == "" {
			t.Errorf("round %d: wake sent line: want state asleep and an id: %v", round, wakes[0])
		}
		woken := a.waitLogFrom(t, amark, logMsg("woken", "id", wakes[0].str("id")), logTimeout)
		if woken.str("server") != r.srv.addr {
			t.Errorf("round %d: the agent was told to dial %q, want --public-addr %s: %v", round, woken.str("server"), r.srv.addr, woken)
		}
		a.waitLogFrom(t, amark, sshConnected, logTimeout)
		a.waitLogFrom(t, amark, logMsg("forward registered", "vport", 22), logTimeout)
		if got := r.srv.logsFrom(smark, logMsg("device registered", "device", "dev42", "port", 22)); len(got) != 1+between {
			t.Errorf("round %d: %d registrations of dev42:22, want %d: %v", round, len(got), 1+between, got)
		}

		if round == 1 {
			const size = 8 << 20
			src := randomFile(t, t.TempDir(), "payload.bin", size)
			onDevice := filepath.Join(t.TempDir(), "payload.bin")
			back := filepath.Join(t.TempDir(), "back.bin")
			up := mustSucceed(t, "scp -J to dev42", run(t, nil, runTimeout, "scp", "-F", r.cfg, "-J", "pivot", src, "dev42:"+onDevice))
			if got, want := sha256File(t, onDevice), sha256File(t, src); got != want {
				t.Fatalf("scp -J to dev42: sha256 %s on the device, want %s", got, want)
			}
			mustSucceed(t, "scp -J from dev42", run(t, nil, runTimeout, "scp", "-F", r.cfg, "-J", "pivot", "dev42:"+onDevice, back))
			if got, want := sha256File(t, back), sha256File(t, src); got != want {
				t.Fatalf("scp -J from dev42: sha256 %s, want %s", got, want)
			}
			t.Logf("scp -J of %d MiB to the woken device: %v, checksums match both ways", size>>20, up.dur.Round(time.Millisecond))
		}

		// No circuit for --idle-timeout: it hangs up and goes back to sleep.
		r.srv.waitLogFrom(t, smark, logMsg("device disconnected", "device", "dev42"), logTimeout)
		r.awaitHangup(t, a, amark, between)
	}
}

// TestOnDemandConcurrentWake: three operators ask for an asleep device at
// once. One wake-up is sent and all three get through.
func TestOnDemandConcurrentWake(t *testing.T) {
	t.Parallel()
	needOpenSSH(t)
	r := newOnDemandRig(t, onDemandOpts{})
	a := r.startAgent(t, r.enroll(t, "dev42"))
	r.awaitState(t, "dev42", "asleep")

	// Here a wake-up is answered within milliseconds, much less than the
	// spread of three ssh start-ups: hold the agent (its MQTT session stays
	// up) until all three operators are waiting, so that they really share
	// one wake-up.
	a.signal(t, syscall.SIGSTOP)
	t.Cleanup(func() { a.proc.signal(syscall.SIGCONT) })
	smark, amark := r.srv.mark(), a.mark()
	const n = 3
	results := make([]result, n)
	fns := make([]func(), n)
	for i := range fns {
		fns[i] = func() { results[i] = r.ssh(t, "-J", "pivot", "dev42", remoteCmd) }
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		concurrently(fns...)
	}()
	authed := logMsg("auth", "fingerprint", r.op.fp, "result", "accept")
	r.srv.waitLogFrom(t, smark, logMsg("wake sent", "device", "dev42"), logTimeout)
	await(t, logTimeout, fmt.Sprintf("%d operators to authenticate", n), func() (bool, error) {
		return len(r.srv.logsFrom(smark, authed)) >= n, nil
	})
	// Each ssh asks for its channel right after authenticating: give the
	// last one a second to do so (checked below, from the circuit lines).
	last := logTime(t, r.srv.logsFrom(smark, authed)[n-1])
	await(t, logTimeout, "a second after the last operator authenticated", func() (bool, error) {
		return time.Since(last) > time.Second, nil
	})
	resumed := time.Now()
	a.signal(t, syscall.SIGCONT)
	<-done

	for i, res := range results {
		reached(t, fmt.Sprintf("operator %d: ssh -J pivot dev42", i+1), res, r.sshd.port)
		t.Logf("operator %d: %v", i+1, res.dur.Round(time.Millisecond))
	}
	if got := r.srv.logsFrom(smark, logMsg("wake sent", "device", "dev42")); len(got) != 1 {
		t.Errorf("%d concurrent circuits sent %d wake-ups, want 1: %v", n, len(got), got)
	}
	if got := a.logsFrom(amark, logMsg("woken")); len(got) != 1 {
		t.Errorf("the agent was woken %d times, want 1: %v", len(got), got)
	}
	if got := r.srv.logsFrom(smark, logMsg("device registered", "device", "dev42", "port", 22)); len(got) != 1 {
		t.Errorf("dev42:22 registered %d times, want 1: %v", len(got), got)
	}
	circuits := r.awaitCircuits(t, smark, "dev42", n)
	if len(circuits) != n {
		t.Errorf("%d circuits logged ok, want %d: %v", len(circuits), n, circuits)
	}
	t.Logf("%s", setupTimes(circuits))
	for _, c := range circuits {
		began := logTime(t, c).Add(-time.Duration(c.int("duration_ms")+c.int("setup_ms")) * time.Millisecond)
		if began.After(resumed) {
			t.Errorf("a circuit began after the agent was let go, so it did not wait for the shared wake-up: %v", c)
		}
	}
}

// TestOnDemandRefusals: what an operator reads when the device cannot be
// woken: an unknown name, a device that said it is offline, and a device
// that is asleep but does not answer.
func TestOnDemandRefusals(t *testing.T) {
	t.Parallel()
	needOpenSSH(t, "mosquitto_pub")
	r := newOnDemandRig(t, onDemandOpts{})
	devs := map[string]enrolled{}
	for _, name := range []string{"dev42", "dev43", "dev44"} {
		devs[name] = r.enroll(t, name)
	}
	q := regexp.QuoteMeta
	timeoutSentence := func(name string) string {
		return q(fmt.Sprintf(`switchboard: device %q did not answer the wake-up within %s`, name, wakeTimeout))
	}

	t.Run("unknown name", func(t *testing.T) {
		t.Parallel()
		mark := r.srv.mark()
		res := r.ssh(t, "-J", "pivot", "nosuch", "true")
		refusedWith(t, "ssh -J pivot nosuch", res, q(`switchboard: no device named "nosuch"`))
		t.Logf("refused after %v", res.dur.Round(time.Millisecond))
		if res.dur > wakeTimeout {
			t.Errorf("an unknown name took %v to refuse, more than the wake timeout", res.dur)
		}
		if got := r.srv.logsFrom(mark, logMsg("wake sent", "device", "nosuch")); len(got) != 0 {
			t.Errorf("a wake-up was sent for an unknown name: %v", got)
		}
	})

	t.Run("offline after SIGTERM", func(t *testing.T) {
		t.Parallel()
		a := r.startAgent(t, devs["dev42"])
		r.awaitState(t, "dev42", "asleep")
		before := time.Now().UTC().Add(-time.Second)
		a.stopped = true
		a.signal(t, syscall.SIGTERM)
		if code := a.proc.waitExit(t, 5*time.Second); code != 0 {
			t.Errorf("agent exited with status %d after SIGTERM, want 0", code)
		}
		r.awaitState(t, "dev42", "offline")
		mark := r.srv.mark()
		res := r.ssh(t, "-J", "pivot", "dev42", "true")
		m := refusedWith(t, "ssh -J pivot dev42 (offline)", res,
			q(`switchboard: device "dev42" is offline (last seen `)+`(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ), ([^()]*[0-9][^()]*) ago\)`)
		checkLastSeen(t, m[1], before)
		if got := r.srv.logsFrom(mark, logMsg("wake sent", "device", "dev42")); len(got) != 0 {
			t.Errorf("a wake-up was sent to a device that said it is offline: %v", got)
		}
	})

	t.Run("frozen agent", func(t *testing.T) {
		t.Parallel()
		a := r.startAgent(t, devs["dev43"])
		r.awaitState(t, "dev43", "asleep")
		// Its MQTT session stays up (the keepalive is 30s): the broker says
		// asleep, the wake-up is delivered, nobody acts on it.
		a.signal(t, syscall.SIGSTOP)
		t.Cleanup(func() { a.proc.signal(syscall.SIGCONT) })
		mark := r.srv.mark()
		res := r.ssh(t, "-J", "pivot", "dev43", "true")
		refusedWith(t, "ssh -J pivot dev43 (frozen)", res, timeoutSentence("dev43"))
		t.Logf("refused after %v", res.dur.Round(time.Millisecond))
		if res.dur < wakeTimeout-time.Second {
			t.Errorf("refused after %v, before the wake timeout %v", res.dur, wakeTimeout)
		}
		w := r.srv.waitLogFrom(t, mark, logMsg("wake sent", "device", "dev43"), logTimeout)

		// Thawed after the wake-up's expiry, the agent ignores it, and the
		// next operator wakes it normally.
		amark := a.mark()
		a.signal(t, syscall.SIGCONT)
		ig := a.waitLogFrom(t, amark, logMsg("wake ignored", "id", w.str("id")), logTimeout)
		mustMatch(t, `(?i)expired`, ig.str("reason"), "the thawed agent's wake ignored reason")
		if got := a.logsFrom(amark, logMsg("woken", "id", w.str("id"))); len(got) != 0 {
			t.Errorf("the agent acted on an expired wake-up: %v", got)
		}
		reached(t, "ssh -J pivot dev43 after SIGCONT", r.ssh(t, "-J", "pivot", "dev43", remoteCmd), r.sshd.port)
		r.awaitHangup(t, a, amark, 0)
	})

	t.Run("no agent", func(t *testing.T) {
		t.Parallel()
		// A retained asleep state and nobody behind it.
		r.identity(devs["dev44"]).mustPublish(t, "switchboard/dev44/state", stateJSON("asleep", time.Now()), true)
		r.awaitState(t, "dev44", "asleep")
		res := r.ssh(t, "-J", "pivot", "dev44", "true")
		refusedWith(t, "ssh -J pivot dev44 (no agent)", res, timeoutSentence("dev44"))
		t.Logf("refused after %v", res.dur.Round(time.Millisecond))
	})
}

// TestOnDemandForgedWake: wake-ups the agent must not act on, published
// with the server's own MQTT identity (anyone holding the CA key could):
// one naming a server whose host key the agent does not know, an expired
// one, a malformed one, and one whose id was already handled.
func TestOnDemandForgedWake(t *testing.T) {
	t.Parallel()
	needOpenSSH(t, "mosquitto_pub")
	r := newOnDemandRig(t, onDemandOpts{})
	a := r.startAgent(t, r.enroll(t, "dev42"))
	r.awaitState(t, "dev42", "asleep")
	forger := r.serverIdentity(t)
	const topic = "switchboard/dev42/wake"
	elsewhere, dialled := decoy(t)
	smark := r.srv.mark()

	// Another server, not in the agent's known_hosts: refused, never dialled.
	amark := a.mark()
	forger.mustPublish(t, topic, wakeJSON("forged-elsewhere-1", elsewhere, time.Now().Add(time.Minute)), false)
	e := a.waitLogFrom(t, amark, logMsg("wake refused", "server", elsewhere), logTimeout)
	mustMatch(t, `(?i)known.?hosts`, e.str("reason"), "the agent's wake refused reason")

	// Expired.
	amark = a.mark()
	forger.mustPublish(t, topic, wakeJSON("forged-expired-1", r.srv.addr, time.Now().Add(-time.Minute)), false)
	e = a.waitLogFrom(t, amark, logMsg("wake ignored", "id", "forged-expired-1"), logTimeout)
	mustMatch(t, `(?i)expired`, e.str("reason"), "the agent's wake ignored reason for an expired wake-up")

	// Malformed.
	amark = a.mark()
	forger.mustPublish(t, topic, `{"v":1,"id":"forged-malformed-1","server":"`+r.srv.addr+`"}`, false)
	e = a.waitLogFrom(t, amark, logMsg("wake ignored"), logTimeout)
	shouldMatch(t, `(?i)malformed`, e.str("reason"), "the agent's wake ignored reason for a wake-up without expiry")

	if got := a.logsFrom(0, logMsg("woken")); len(got) != 0 {
		t.Fatalf("the agent acted on a refused wake-up: %v", got)
	}

	// A valid wake-up (right server, fresh id) is acted on once; the same id
	// again, after the agent went back to sleep, is not.
	amark = a.mark()
	repeat := wakeJSON("forged-repeat-1", r.srv.addr, time.Now().Add(time.Minute))
	forger.mustPublish(t, topic, repeat, false)
	a.waitLogFrom(t, amark, logMsg("woken", "id", "forged-repeat-1"), logTimeout)
	r.srv.waitLogFrom(t, smark, logMsg("device registered", "device", "dev42", "port", 22), logTimeout)
	r.awaitHangup(t, a, amark, 0)
	amark = a.mark()
	forger.mustPublish(t, topic, repeat, false)
	e = a.waitLogFrom(t, amark, logMsg("wake ignored", "id", "forged-repeat-1"), logTimeout)
	mustMatch(t, `(?i)already handled`, e.str("reason"), "the agent's wake ignored reason for a repeated id")
	if got := a.logsFrom(amark, logMsg("woken")); len(got) != 0 {
		t.Errorf("the agent acted on a repeated wake-up id: %v", got)
	}
	if got := r.srv.logsFrom(smark, logMsg("device registered", "device", "dev42")); len(got) != 1 {
		t.Errorf("dev42 registered %d times, want once (for the one valid wake-up): %v", len(got), got)
	}
	if n := dialled.Load(); n != 0 {
		t.Errorf("the agent opened %d connections to %s, named by a wake-up it refused", n, elsewhere)
	}

	// The server's own MQTT session survived another client using its
	// identity, and operators still wake the device.
	r.awaitState(t, "dev42", "asleep")
	reached(t, "ssh -J pivot dev42 after the forgeries", r.ssh(t, "-J", "pivot", "dev42", remoteCmd), r.sshd.port)
}

// TestOnDemandACL: with its own certificate, a device may publish only its
// own state and read only its own wake-ups on the embedded broker.
func TestOnDemandACL(t *testing.T) {
	t.Parallel()
	needOpenSSH(t, "mosquitto_pub", "mosquitto_sub")
	r := newOnDemandRig(t, onDemandOpts{})
	dev42 := r.enroll(t, "dev42") // the intruder: its certificate, no agent
	dev43 := r.enroll(t, "dev43") // the victim, asleep
	r.startAgent(t, dev43)
	r.awaitState(t, "dev43", "asleep")
	intruder := r.identity(dev42)

	// Its own state gets through (so the identity works), another's does not.
	intruder.mustPublish(t, "switchboard/dev42/state", stateJSON("asleep", time.Now()), true)
	r.awaitState(t, "dev42", "asleep")
	intruder.publish(t, "switchboard/dev43/state", stateJSON("offline", time.Now()), true)
	if row := r.ls(t)["dev43"]; row.State != "asleep" {
		t.Errorf("after dev42 published a retained offline state for dev43, ls --json shows dev43 %+v, want still asleep", row)
	}

	// Its own wake topic is granted, another's refused.
	sub := intruder.subscribe(t, "switchboard/dev42/wake", "switchboard/dev43/wake")
	codes := sub.subacks(t)
	t.Logf("dev42 subscribing to switchboard/dev42/wake and switchboard/dev43/wake: SUBACK %v", codes)
	if len(codes) != 2 || codes[0] >= 0x80 || codes[1] < 0x80 {
		t.Errorf("dev42 subscribing to switchboard/dev42/wake and switchboard/dev43/wake: SUBACK %v, want [granted, refused (128 or more)]", codes)
	}

	// Wake both: dev42's wake-up reaches dev42's subscription (nobody
	// answers it), dev43's reaches only dev43.
	var own, other result
	concurrently(
		func() { own = r.ssh(t, "-J", "pivot", "dev42", "true") },
		func() { other = r.ssh(t, "-J", "pivot", "dev43", remoteCmd) },
	)
	reached(t, "ssh -J pivot dev43", other, r.sshd.port)
	refusedWith(t, "ssh -J pivot dev42 (no agent)", own, regexp.QuoteMeta(`switchboard: device "dev42" did not answer the wake-up within 5s`))
	checkWakePayload(t, sub.awaitMessage(t, "switchboard/dev42/wake", logTimeout).payload, r.srv.addr)
	if got := sub.on("switchboard/dev43/wake"); len(got) != 0 {
		t.Errorf("dev42 read dev43's wake-ups: %v", got)
	}
}

// TestOnDemandRestarts: the embedded broker restarts with the server, and
// the agent comes back to it by itself; an agent killed outright is offline
// (its will message), and asleep again once restarted.
func TestOnDemandRestarts(t *testing.T) {
	t.Parallel()
	needOpenSSH(t)

	t.Run("server restarted", func(t *testing.T) {
		t.Parallel()
		r := newOnDemandRig(t, onDemandOpts{})
		a := r.startAgent(t, r.enroll(t, "dev42"))
		r.awaitState(t, "dev42", "asleep")

		r.restart(t)
		restarted := time.Now()
		pid, port := a.proc.cmd.Process.Pid, r.mqttPort(t)
		await(t, 30*time.Second, "the agent to reconnect to the restarted broker", func() (bool, error) {
			if a.proc.exited() {
				return false, fmt.Errorf("the agent exited: %v\n%s", a.proc.err, tail(a.proc.stderr.String(), 20))
			}
			return establishedTo(pid, port), nil
		})
		t.Logf("the agent reconnected to the broker %v after the server restarted", time.Since(restarted).Round(time.Millisecond))
		r.awaitStateWithin(t, "dev42", "asleep", 30*time.Second)
		t.Logf("and the server sees it asleep %v after the restart", time.Since(restarted).Round(time.Millisecond))

		smark, amark := r.srv.mark(), a.mark()
		reached(t, "ssh -J pivot dev42 after the server restarted", r.ssh(t, "-J", "pivot", "dev42", remoteCmd), r.sshd.port)
		w := r.srv.waitLogFrom(t, smark, logMsg("wake sent", "device", "dev42"), logTimeout)
		a.waitLogFrom(t, amark, logMsg("woken", "id", w.str("id")), logTimeout)
	})

	t.Run("agent killed", func(t *testing.T) {
		t.Parallel()
		r := newOnDemandRig(t, onDemandOpts{})
		d := r.enroll(t, "dev42")
		before := time.Now().UTC().Add(-time.Second)
		a := r.startAgent(t, d)
		r.awaitState(t, "dev42", "asleep")

		a.stopped = true
		a.signal(t, syscall.SIGKILL)
		a.proc.waitExit(t, 5*time.Second)
		r.awaitState(t, "dev42", "offline") // its will message
		res := r.ssh(t, "-J", "pivot", "dev42", "true")
		m := refusedWith(t, "ssh -J pivot dev42 (agent killed)", res,
			regexp.QuoteMeta(`switchboard: device "dev42" is offline (last seen `)+`(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ), ([^()]*[0-9][^()]*) ago\)`)
		checkLastSeen(t, m[1], before)

		a2 := r.startAgent(t, d)
		r.awaitState(t, "dev42", "asleep")
		smark := r.srv.mark()
		reached(t, "ssh -J pivot dev42 after the agent restarted", r.ssh(t, "-J", "pivot", "dev42", remoteCmd), r.sshd.port)
		w := r.srv.waitLogFrom(t, smark, logMsg("wake sent", "device", "dev42"), logTimeout)
		a2.waitLogFrom(t, 0, logMsg("woken", "id", w.str("id")), logTimeout)
	})
}

// TestServerWithBrokerHostsAndAddress: the server's own MQTT client must
// reach its embedded broker whatever names the certificate is given and
// wherever the broker listens (it once always dialled "localhost").
func TestServerWithBrokerHostsAndAddress(t *testing.T) {
	t.Parallel()
	need(t, "ssh", "ssh-keygen")
	srv := startServer(t, serverOpts{args: []string{
		"--mqtt-listen", "127.0.0.1:0", "--mqtt-hosts", "pivot.example.test,192.0.2.1",
	}})
	srv.waitLog(t, logMsg("connected", "client_id", "switchboard-server"), logTimeout)
}
