package e2e

import (
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/switchboard-dev/switchboard/internal/broker/mosquittotest"
	"github.com/switchboard-dev/switchboard/internal/pki"
)

// serverIdentity is the common name (and MQTT client id) of the server's own
// MQTT client.
const serverIdentity = "switchboard-server"

// ---------------------------------------------------------------------------
// MQTT clients: mosquitto_pub and mosquitto_sub with a client certificate.

// mqttIdentity is one MQTT client as the broker knows it: a certificate whose
// CN is also the client id, as the embedded broker, the suite's Mosquitto and
// AWS IoT require.
type mqttIdentity struct {
	url  string // mqtts://HOST:PORT
	ca   string // the CA file that signed the broker's certificate
	cert string // the client certificate
	key  string // its key
	id   string // the certificate's CN
}

// args are mosquitto_pub/mosquitto_sub's flags for the broker and identity.
func (m mqttIdentity) args(t testing.TB) []string {
	t.Helper()
	u, err := url.Parse(m.url)
	if err != nil || u.Scheme != "mqtts" || u.Hostname() == "" || u.Port() == "" {
		t.Fatalf("MQTT URL %q: want mqtts://HOST:PORT (%v)", m.url, err)
	}
	return []string{"-h", u.Hostname(), "-p", u.Port(), "--cafile", m.ca, "--cert", m.cert, "--key", m.key,
		"-i", m.id, "-V", "mqttv311"}
}

// publish sends payload to topic at QoS 1 and returns mosquitto_pub's result:
// a publish the broker refuses may fail (MQTT 3.1.1 brokers often hang up)
// or succeed silently, so callers judge by what arrives, not by this.
func (m mqttIdentity) publish(t testing.TB, topic, payload string, retain bool) result {
	t.Helper()
	need(t, "mosquitto_pub")
	args := append(m.args(t), "-d", "-q", "1", "-t", topic, "-m", payload)
	if retain {
		args = append(args, "-r")
	}
	r := run(t, nil, runTimeout, "mosquitto_pub", args...)
	t.Logf("%s published to %s (retain %v): exit %d %s", m.id, topic, retain, r.code, strings.Join(strings.Fields(tail(r.stdout+r.stderr, 3)), " "))
	return r
}

// mustPublish is publish that fails the test unless mosquitto_pub succeeded.
// It tries up to three times: a client using an identity that is also
// connected elsewhere (the server's, say) is thrown off when the other one
// reconnects, and may be in the middle of its publish.
func (m mqttIdentity) mustPublish(t testing.TB, topic, payload string, retain bool) {
	t.Helper()
	var r result
	for range 3 {
		if r = m.publish(t, topic, payload, retain); r.code == 0 {
			return
		}
	}
	t.Fatalf("%s publishing to %s failed three times; the last: %v", m.id, topic, r)
}

// mqttSub is a running mosquitto_sub.
type mqttSub struct {
	id   string
	proc *proc
}

// subscribe starts mosquitto_sub for topics at QoS 1; it runs until cleanup.
// Only one client per id can be connected: a second connection with the same
// id makes the broker close the first.
func (m mqttIdentity) subscribe(t testing.TB, topics ...string) *mqttSub {
	t.Helper()
	need(t, "mosquitto_sub")
	args := append(m.args(t), "-d", "-q", "1", "-F", "MSG %t %p")
	for _, tp := range topics {
		args = append(args, "-t", tp)
	}
	// mosquitto_sub's stdio buffers a pipe by the block: line-buffer it, or
	// the SUBACK and messages arrive only at exit.
	need(t, "stdbuf")
	args = append([]string{"-oL", "mosquitto_sub"}, args...)
	return &mqttSub{id: m.id, proc: command("mosquitto_sub "+m.id, "stdbuf", args...).start(t)}
}

var regexpSuback = regexp.MustCompile(`Subscribed \(mid: \d+\): ([0-9, ]+)`)

// subacks waits for the SUBACK and returns its return codes, one per topic
// in order: 0–2 is the granted QoS, 128 and up a refusal.
func (s *mqttSub) subacks(t testing.TB) []int {
	t.Helper()
	var codes []int
	await(t, logTimeout, s.id+"'s SUBACK", func() (bool, error) {
		m := regexpSuback.FindStringSubmatch(s.proc.stdout.String())
		if m == nil {
			if s.proc.exited() {
				return false, fmt.Errorf("mosquitto_sub exited first: %v\nstdout:\n%s\nstderr:\n%s", s.proc.err, tail(s.proc.stdout.String(), 20), tail(s.proc.stderr.String(), 20))
			}
			return false, nil
		}
		for _, f := range strings.Split(m[1], ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil {
				return false, fmt.Errorf("SUBACK line %q: %v", m[0], err)
			}
			codes = append(codes, n)
		}
		return true, nil
	})
	return codes
}

// mqttMsg is one message mosquitto_sub printed.
type mqttMsg struct{ topic, payload string }

// messages returns what arrived so far.
func (s *mqttSub) messages() []mqttMsg {
	var out []mqttMsg
	for _, line := range strings.Split(s.proc.stdout.String(), "\n") {
		rest, ok := strings.CutPrefix(line, "MSG ")
		if !ok {
			continue
		}
		topic, payload, _ := strings.Cut(rest, " ")
		out = append(out, mqttMsg{topic, payload})
	}
	return out
}

// on returns the messages that arrived on topic.
func (s *mqttSub) on(topic string) []mqttMsg {
	var out []mqttMsg
	for _, m := range s.messages() {
		if m.topic == topic {
			out = append(out, m)
		}
	}
	return out
}

// awaitMessage waits for a message on topic and returns the first.
func (s *mqttSub) awaitMessage(t testing.TB, topic string, timeout time.Duration) mqttMsg {
	t.Helper()
	var got mqttMsg
	await(t, timeout, s.id+" to receive a message on "+topic, func() (bool, error) {
		if m := s.on(topic); len(m) > 0 {
			got = m[0]
			return true, nil
		}
		if s.proc.exited() {
			return false, fmt.Errorf("mosquitto_sub exited: %v\n%s", s.proc.err, tail(s.proc.stdout.String()+s.proc.stderr.String(), 20))
		}
		return false, nil
	})
	return got
}

// ---------------------------------------------------------------------------
// Certificates from the server's MQTT CA.

// loadStateCA opens the MQTT CA in a server's state dir. It fails the test if
// the CA is not there: it is the server's (or enroll's) to create.
func loadStateCA(t testing.TB, stateDir string) *pki.CA {
	t.Helper()
	for _, f := range []string{pki.CACertFile, pki.CAKeyFile} {
		if _, err := os.Stat(filepath.Join(stateDir, f)); err != nil {
			entries, _ := os.ReadDir(stateDir)
			var names []string
			for _, e := range entries {
				names = append(names, e.Name())
			}
			t.Fatalf("the server's MQTT CA: %v (the state dir holds %v)", err, names)
		}
	}
	ca, created, err := pki.LoadOrCreateCA(stateDir)
	if err != nil || created {
		t.Fatalf("loading the MQTT CA in %s: created %v: %v", stateDir, created, err)
	}
	return ca
}

// issueFiles issues a certificate from ca and writes it and its key into a
// temp dir, returning both paths.
func issueFiles(t testing.TB, ca *pki.CA, cn string, usage pki.Usage, hosts ...string) (certFile, keyFile string) {
	t.Helper()
	certPEM, keyPEM, err := ca.Issue(cn, usage, hosts, 24*time.Hour)
	if err != nil {
		t.Fatalf("issuing a %v certificate for %q: %v", usage, cn, err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, cn+".crt"), filepath.Join(dir, cn+".key")
	if err := os.WriteFile(certFile, certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// TestOnDemandExternalMosquitto runs the server and an on-demand agent
// against a real Mosquitto with mutual TLS and a per-device ACL (the setup
// docs/aws-iot.md describes for AWS IoT): the server wakes the asleep device
// through it, and a device cannot read another device's wake-ups.
func TestOnDemandExternalMosquitto(t *testing.T) {
	t.Parallel()
	needOpenSSH(t, "mosquitto_pub", "mosquitto_sub")
	const prefix = "switchboard"

	// The server's state-dir CA signs everything: the broker's certificate,
	// the server's client certificate, and (through enroll) the devices'.
	stateDir := filepath.Join(t.TempDir(), "state")
	ca, created, err := pki.LoadOrCreateCA(stateDir)
	if err != nil || !created {
		t.Fatalf("creating the MQTT CA in a fresh state dir: created %v: %v", created, err)
	}
	brokerURL, _ := mosquittotest.Start(t, ca, prefix)
	srvCert, srvKey := issueFiles(t, ca, serverIdentity, pki.ClientCert)
	caFile := filepath.Join(stateDir, pki.CACertFile)

	r := newOnDemandRig(t, onDemandOpts{stateDir: stateDir, mqttURL: brokerURL, serverArgs: []string{
		"--mqtt", brokerURL, "--mqtt-ca", caFile, "--mqtt-cert", srvCert, "--mqtt-key", srvKey,
	}})
	if got := r.srv.logsFrom(0, logMsg("mqtt broker listening")); len(got) != 0 {
		t.Errorf("with --mqtt %s the server started its embedded broker too: %v", brokerURL, got)
	}
	dev42 := r.enroll(t, "dev42")
	dev43 := r.enroll(t, "dev43")
	a := r.startAgent(t, dev42)
	r.awaitState(t, "dev42", "asleep")

	// dev43, with its own certificate, listens on its own wake topic and on
	// dev42's. It publishes its own retained state, so the server believes
	// it asleep and wakes it (nobody answers: it has no agent).
	spy := r.identity(dev43)
	spy.mustPublish(t, prefix+"/dev43/state", stateJSON("asleep", time.Now()), true)
	r.awaitState(t, "dev43", "asleep")
	sub := spy.subscribe(t, prefix+"/dev43/wake", prefix+"/dev42/wake")
	t.Logf("dev43 subscribing to its own wake topic and to dev42's: SUBACK %v (Mosquitto 2.0 grants both and filters on delivery)", sub.subacks(t))

	smark, amark := r.srv.mark(), a.mark()
	var ghost result
	done := make(chan struct{})
	go func() {
		defer close(done)
		ghost = r.ssh(t, "-J", "pivot", "dev43", "true")
	}()
	cold := r.ssh(t, "-J", "pivot", "dev42", remoteCmd)
	reached(t, "ssh -J pivot dev42 (asleep, through Mosquitto)", cold, r.sshd.port)
	warm := r.ssh(t, "-J", "pivot", "dev42", remoteCmd)
	reached(t, "ssh -J pivot dev42 (connected)", warm, r.sshd.port)
	t.Logf("wake through Mosquitto: ssh -J pivot dev42 took %v asleep, %v connected: the wake-up added %v; %s",
		cold.dur.Round(time.Millisecond), warm.dur.Round(time.Millisecond), (cold.dur - warm.dur).Round(time.Millisecond),
		setupTimes(r.awaitCircuits(t, smark, "dev42", 2)))
	w := r.srv.waitLogFrom(t, smark, logMsg("wake sent", "device", "dev42"), logTimeout)
	a.waitLogFrom(t, amark, logMsg("woken", "id", w.str("id")), logTimeout)
	<-done
	mustMatch(t, regexp.QuoteMeta(`switchboard: device "dev43" did not answer the wake-up within 5s`), ghost.stderr, "ssh -J pivot dev43 (asleep, no agent)")

	// The spy got its own wake-up (so it was listening), never dev42's.
	own := sub.awaitMessage(t, prefix+"/dev43/wake", logTimeout)
	checkWakePayload(t, own.payload, r.srv.addr)
	if got := sub.on(prefix + "/dev42/wake"); len(got) != 0 {
		t.Errorf("dev43 read dev42's wake-ups through Mosquitto: %v", got)
	}
}
