package broker

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/switchboard-dev/switchboard/internal/mqttc"
	"github.com/switchboard-dev/switchboard/internal/pki"
	"github.com/switchboard-dev/switchboard/internal/wake"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const waitFor = 10 * time.Second

var topics = wake.Topics{Prefix: wake.DefaultPrefix}

// env is a running broker with its CA, and the broker's log.
type env struct {
	t    *testing.T
	ca   *pki.CA
	b    *Broker
	url  string
	port string
	logs *syncBuffer
	dir  string // certificate files for the CLI clients
}

func start(t *testing.T) *env { t.Helper(); return startWith(t, nil) }

func startWith(t *testing.T, tweak func(*Options)) *env {
	t.Helper()
	dir := t.TempDir()
	ca, _, err := pki.LoadOrCreateCA(filepath.Join(dir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := ca.ServerTLS([]string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	opts := Options{Listen: "127.0.0.1:0", TLS: cfg, Logger: slog.New(slog.NewTextHandler(logs, nil))}
	if tweak != nil {
		tweak(&opts)
	}
	b, err := Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		b.Close()
		if t.Failed() {
			t.Logf("broker log:\n%s", logs)
		}
	})
	_, port, _ := net.SplitHostPort(b.Addr().String())
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), ca.CertPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	return &env{t: t, ca: ca, b: b, url: "mqtts://" + b.Addr().String(), port: port, logs: logs, dir: dir}
}

func (e *env) options(name string) mqttc.Options {
	e.t.Helper()
	certPEM, keyPEM, err := e.ca.Issue(name, pki.ClientCert, nil, time.Hour)
	if err != nil {
		e.t.Fatal(err)
	}
	cfg, err := pki.ClientTLS(e.ca.CertPEM(), certPEM, keyPEM, "")
	if err != nil {
		e.t.Fatal(err)
	}
	return mqttc.Options{
		URL: e.url, ClientID: name, TLS: cfg, Logger: slog.New(slog.DiscardHandler),
		Backoff: func(n int) time.Duration { return time.Duration(n) * 20 * time.Millisecond },
	}
}

func (e *env) dial(name string) *mqttc.Client {
	e.t.Helper()
	return dialOptions(e.t, e.options(name))
}

func dialOptions(t *testing.T, o mqttc.Options) *mqttc.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	c, err := mqttc.Dial(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func dialErr(o mqttc.Options) error {
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	c, err := mqttc.Dial(ctx, o)
	if err == nil {
		c.Close()
	}
	return err
}

type msg struct {
	topic, payload string
	retained       bool
}

// collect subscribes c to each topic, all into one channel, in the order
// the broker delivers them.
func collect(t *testing.T, c *mqttc.Client, topics ...string) <-chan msg {
	t.Helper()
	ch := make(chan msg, 32)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	for _, topic := range topics {
		if _, err := c.Subscribe(ctx, topic, func(p []byte, r bool) { ch <- msg{topic, string(p), r} }); err != nil {
			t.Fatal(err)
		}
	}
	return ch
}

func publish(t *testing.T, c *mqttc.Client, topic, payload string, retain bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if err := c.Publish(ctx, topic, []byte(payload), retain); err != nil {
		t.Fatal(err)
	}
}

func await(t *testing.T, ch <-chan msg, what string) msg {
	t.Helper()
	select {
	case m := <-ch:
		return m
	case <-time.After(waitFor):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

func refusal(err error) byte {
	var r *mqttc.RefusedError
	if errors.As(err, &r) {
		return r.Code
	}
	return 0
}

func TestDeviceUsesItsOwnTopics(t *testing.T) {
	e := start(t)
	server := e.dial(DefaultServerIdentity)
	dev := e.dial("dev1")

	wakes := collect(t, dev, topics.Wake("dev1"))
	publish(t, server, topics.Wake("dev1"), "wake-1", false)
	if m := await(t, wakes, "a wake-up"); m.payload != "wake-1" || m.retained {
		t.Errorf("device got %+v", m)
	}

	publish(t, dev, topics.State("dev1"), "asleep", true)
	if m := await(t, collect(t, server, topics.State("dev1")), "the retained state"); m.payload != "asleep" || !m.retained {
		t.Errorf("a later subscriber got %+v, want the retained state", m)
	}
}

func TestDeviceCannotReachOtherDevices(t *testing.T) {
	e := start(t)
	server := e.dial(DefaultServerIdentity)
	dev := e.dial("dev1")
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()

	_, err := dev.Subscribe(ctx, topics.Wake("dev2"), func([]byte, bool) { t.Error("delivery on a refused subscription") })
	if refusal(err) != 0x87 {
		t.Errorf("subscribing to another device's wake: %v, want not authorized", err)
	}
	_, err = dev.Subscribe(ctx, topics.State("dev1"), func([]byte, bool) {})
	if refusal(err) != 0x87 {
		t.Errorf("subscribing to its own state: %v, want not authorized", err)
	}

	states := collect(t, server, topics.State("dev2"), topics.State("dev1"))
	if err := dev.Publish(ctx, topics.State("dev2"), []byte("forged-state"), true); refusal(err) != 0x87 {
		t.Errorf("publishing another device's state: %v, want not authorized", err)
	}
	if err := dev.Publish(ctx, topics.Wake("dev1"), []byte("self-wake"), false); refusal(err) != 0x87 {
		t.Errorf("publishing to its own wake topic: %v, want not authorized", err)
	}
	// The device's next message, on the same connection, comes after
	// anything the broker let through: the server sees it first.
	publish(t, dev, topics.State("dev1"), "sentinel", false)
	if m := await(t, states, "the sentinel"); m.payload != "sentinel" {
		t.Errorf("server got %+v before the sentinel", m)
	}

	logs := e.logs.String()
	for _, want := range []string{"identity=dev1 op=publish topic=switchboard/dev2/state", "identity=dev1 op=subscribe topic=switchboard/dev2/wake"} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
	}
	if strings.Contains(logs, "forged-state") || strings.Contains(logs, "self-wake") {
		t.Errorf("a payload reached the log:\n%s", logs)
	}

	// The server's own identity is confined to the prefix.
	if _, err := server.Subscribe(ctx, "elsewhere/x", func([]byte, bool) {}); refusal(err) != 0x87 {
		t.Errorf("server subscribing outside the prefix: %v", err)
	}
}

func TestConnectionsAreRefused(t *testing.T) {
	e := start(t)

	o := e.options("dev1")
	o.ClientID = "dev2"
	if err := dialErr(o); refusal(err) != 0x85 {
		t.Errorf("client id other than the certificate's name: %v, want client identifier not valid", err)
	}

	for _, name := range []string{"Dev1", "dev/1", "a..b"} {
		if err := dialErr(e.options(name)); refusal(err) != 0x87 {
			t.Errorf("certificate name %q: %v, want not authorized", name, err)
		}
	}

	o = e.options("dev1")
	o.Will = &mqttc.Will{Topic: topics.State("dev2"), Payload: []byte("offline"), Retain: true}
	if err := dialErr(o); refusal(err) != 0x87 {
		t.Errorf("will on another device's state: %v, want not authorized", err)
	}

	o = e.options("dev1")
	o.TLS.Certificates = nil
	if err := dialErr(o); err == nil {
		t.Error("a client without a certificate connected")
	}

	other, _, err := pki.LoadOrCreateCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, _ := other.Issue("dev1", pki.ClientCert, nil, time.Hour)
	o = e.options("dev1")
	o.TLS, _ = pki.ClientTLS(e.ca.CertPEM(), certPEM, keyPEM, "")
	if err := dialErr(o); err == nil {
		t.Error("a client certificate of another CA was accepted")
	}

	if logs := e.logs.String(); !strings.Contains(logs, `reason="client id is not the certificate's name"`) || !strings.Contains(logs, "tls handshake failed") {
		t.Errorf("refusals not logged:\n%s", logs)
	}
}

// TestAdmitRevokes: a device whose name the server no longer admits (its
// key was removed) is refused although its certificate is still valid.
func TestAdmitRevokes(t *testing.T) {
	e := startWith(t, func(o *Options) {
		o.Admit = func(id string) error {
			if id == "revoked" {
				return errors.New("not enrolled")
			}
			return nil
		}
	})
	e.dial("dev1")
	e.dial(DefaultServerIdentity) // the server is never asked about
	if err := dialErr(e.options("revoked")); refusal(err) != 0x87 {
		t.Fatalf("revoked device: %v, want not authorized", err)
	}
	if !strings.Contains(e.logs.String(), "not enrolled") {
		t.Errorf("refusal not logged:\n%s", e.logs)
	}
}

func TestWillFiresOnLostLink(t *testing.T) {
	e := start(t)
	server := e.dial(DefaultServerIdentity)
	o := e.options("dev1")
	o.Will = &mqttc.Will{Topic: topics.State("dev1"), Payload: []byte("offline"), Retain: true}
	dialOptions(t, o)
	states := collect(t, server, topics.State("dev1"))
	if !e.b.DropClient("dev1") {
		t.Fatal("no client dev1")
	}
	if m := await(t, states, "the will"); m.payload != "offline" {
		t.Errorf("server got %+v, want the will", m)
	}
	// The will was retained: a later subscriber gets it too.
	if m := await(t, collect(t, server, topics.State("dev1")), "the retained will"); m.payload != "offline" || !m.retained {
		t.Errorf("a later subscriber got %+v", m)
	}
}

func TestMessageSizeIsLimited(t *testing.T) {
	e := start(t)
	server := e.dial(DefaultServerIdentity)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	err := server.Publish(ctx, topics.Wake("dev1"), bytes.Repeat([]byte("x"), MaxPacketSize), false)
	if err == nil || !strings.Contains(err.Error(), "limit") {
		t.Errorf("oversized publish: %v, want the broker's limit", err)
	}
	publish(t, server, topics.Wake("dev1"), strings.Repeat("x", 1024), false)
}

func TestRetainedMessagesDoNotExpire(t *testing.T) {
	e := start(t)
	if got := e.b.srv.Options.Capabilities.MaximumMessageExpiryInterval; got != 0 {
		t.Errorf("retained messages expire after %d s", got)
	}
}

func TestCloseEndsEveryConnection(t *testing.T) {
	e := start(t)
	e.dial("dev1")
	// A connection that never starts TLS, and one that never sends CONNECT.
	raw, err := net.Dial("tcp", e.b.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	certPEM, keyPEM, _ := e.ca.Issue("dev2", pki.ClientCert, nil, time.Hour)
	cfg, _ := pki.ClientTLS(e.ca.CertPEM(), certPEM, keyPEM, "127.0.0.1")
	silent, err := tls.Dial("tcp", e.b.Addr().String(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()

	start := time.Now()
	if err := e.b.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Close took %v", d)
	}
	raw.SetDeadline(time.Now().Add(waitFor))
	if _, err := raw.Read(make([]byte, 1)); err == nil {
		t.Error("a connection survived Close")
	}
	if err := e.b.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestStartChecksOptions(t *testing.T) {
	e := start(t)
	cfg, _ := e.ca.ServerTLS([]string{"127.0.0.1"})
	for _, o := range []Options{
		{TLS: cfg},
		{Listen: "127.0.0.1:0"},
		{Listen: "127.0.0.1:0", TLS: cfg, Prefix: "a/#"},
		{Listen: "127.0.0.1:0", TLS: cfg, Prefix: "$SYS"},
		{Listen: e.b.Addr().String(), TLS: cfg},
	} {
		if b, err := Start(o); err == nil || !strings.HasPrefix(err.Error(), "broker: ") {
			if b != nil {
				b.Close()
			}
			t.Errorf("Start(%+v) = %v, want a broker error", o, err)
		}
	}
}

func TestMochiLogIsQuietAndCarriesNoPackets(t *testing.T) {
	var buf syncBuffer
	l := slog.New(quietHandler{slog.NewTextHandler(&buf, nil)})
	l.Info("chatter")
	l.With("packet", "secret-1").Warn("error processing packet", "pk", "secret-2", "client", "dev1")
	out := buf.String()
	if strings.Contains(out, "chatter") || strings.Contains(out, "secret") || !strings.Contains(out, "client=dev1") {
		t.Errorf("mochi log:\n%s", out)
	}
}

// The real Mosquitto command-line clients against the embedded broker.
func TestMosquittoClients(t *testing.T) {
	need(t, "mosquitto_pub", "mosquitto_sub")

	t.Run("own wake and retained state", func(t *testing.T) {
		e := start(t)
		server := e.dial(DefaultServerIdentity)
		sub := e.run(t, "mosquitto_sub", "dev1", "-t", topics.Wake("dev1"), "-q", "1", "-C", "1")
		e.awaitSubscribed(t, sub, "dev1", topics.Wake("dev1"))
		publish(t, server, topics.Wake("dev1"), "wake-by-cli", false)
		if out, err := sub.wait(t); err != nil || !strings.Contains(out, "wake-by-cli") {
			t.Errorf("mosquitto_sub: %v\n%s", err, out)
		}

		if out, err := e.run(t, "mosquitto_pub", "dev1", "-t", topics.State("dev1"), "-q", "1", "-r", "-m", "asleep").wait(t); err != nil {
			t.Fatalf("mosquitto_pub of its own state: %v\n%s", err, out)
		}
		// One connection per identity: a second one takes the session over.
		server.Close()
		later := e.run(t, "mosquitto_sub", DefaultServerIdentity, "-t", topics.State("dev1"), "-C", "1", "-v")
		if out, err := later.wait(t); err != nil || !strings.Contains(out, "switchboard/dev1/state asleep") {
			t.Errorf("a later subscriber: %v\n%s", err, out)
		}
		// The server may use wildcards under the prefix.
		wild := e.run(t, "mosquitto_sub", DefaultServerIdentity, "-t", "switchboard/+/state", "-C", "1", "-v")
		if out, err := wild.wait(t); err != nil || !strings.Contains(out, "switchboard/dev1/state asleep") {
			t.Errorf("the server's wildcard subscription: %v\n%s", err, out)
		}
	})

	t.Run("another device's topics", func(t *testing.T) {
		e := start(t)
		server := e.dial(DefaultServerIdentity)
		states := collect(t, server, topics.State("dev2"), topics.State("dev1"))

		for _, version := range []string{"mqttv311", "mqttv5"} {
			// mosquitto_sub gives up when every subscription is refused.
			out, _ := e.run(t, "mosquitto_sub", "dev1", "-V", version, "-t", topics.Wake("dev2"), "-q", "1").wait(t)
			if code := subackCode(out); code < 0x80 {
				t.Errorf("%s: SUBACK code %d for another device's wake topic, want a failure:\n%s", version, code, out)
			}
		}

		// MQTT 5 at QoS 1: a PUBACK with "not authorized".
		out, _ := e.run(t, "mosquitto_pub", "dev1", "-V", "mqttv5", "-q", "1", "-t", topics.State("dev2"), "-m", "forged-1").wait(t)
		if !strings.Contains(out, "RC:135") {
			t.Errorf("MQTT 5 publish to another device's state:\n%s", out)
		}
		// MQTT 3.1.1 at QoS 1: no way to say no but to disconnect.
		if out, err := e.run(t, "mosquitto_pub", "dev1", "-q", "1", "-t", topics.State("dev2"), "-m", "forged-2").wait(t); err == nil {
			t.Errorf("MQTT 3.1.1 QoS 1 publish to another device's state succeeded:\n%s", out)
		}
		// MQTT 3.1.1 at QoS 0: dropped silently.
		e.run(t, "mosquitto_pub", "dev1", "-t", topics.State("dev2"), "-m", "forged-3").wait(t)

		if out, err := e.run(t, "mosquitto_pub", "dev1", "-q", "1", "-t", topics.State("dev1"), "-m", "sentinel").wait(t); err != nil {
			t.Fatalf("sentinel: %v\n%s", err, out)
		}
		if m := await(t, states, "the sentinel"); m.payload != "sentinel" {
			t.Errorf("server got %+v: a forged state got through", m)
		}
		if strings.Contains(e.logs.String(), "forged") {
			t.Errorf("a payload reached the log:\n%s", e.logs)
		}
	})

	t.Run("refused connections", func(t *testing.T) {
		e := start(t)
		if out, err := e.run(t, "mosquitto_pub", "dev1", "-i", "dev2", "-t", topics.State("dev1"), "-m", "x").wait(t); err == nil || !strings.Contains(out, "identifier rejected") {
			t.Errorf("client id other than the certificate's name: %v\n%s", err, out)
		}
		if out, err := e.run(t, "mosquitto_pub", "", "-i", "dev1", "-t", topics.State("dev1"), "-m", "x").wait(t); err == nil {
			t.Errorf("no client certificate: connected\n%s", out)
		}
	})

	t.Run("will on abrupt disconnect", func(t *testing.T) {
		e := start(t)
		server := e.dial(DefaultServerIdentity)
		states := collect(t, server, topics.State("dev1"))
		sub := e.run(t, "mosquitto_sub", "dev1", "-t", topics.Wake("dev1"), "-q", "1",
			"--will-topic", topics.State("dev1"), "--will-payload", "offline", "--will-retain", "--will-qos", "1")
		e.awaitSubscribed(t, sub, "dev1", topics.Wake("dev1"))
		sub.cmd.Process.Signal(syscall.SIGKILL)
		sub.wait(t)
		if m := await(t, states, "the will"); m.payload != "offline" {
			t.Errorf("server got %+v, want the will", m)
		}
		server.Close() // one connection per identity
		later := e.run(t, "mosquitto_sub", DefaultServerIdentity, "-t", topics.State("dev1"), "-C", "1")
		if out, err := later.wait(t); err != nil || !strings.Contains(out, "(d0, q0, r1,") || !strings.Contains(out, "\noffline\n") {
			t.Errorf("retained will: %v\n%s", err, out)
		}
	})

	t.Run("oversized message", func(t *testing.T) {
		e := start(t)
		server := e.dial(DefaultServerIdentity)
		states := collect(t, server, topics.State("dev1"))
		big := strings.Repeat("x", MaxPacketSize)
		if out, err := e.run(t, "mosquitto_pub", "dev1", "-q", "1", "-t", topics.State("dev1"), "-m", big).wait(t); err == nil {
			t.Errorf("an oversized message was accepted:\n%.200s", out)
		}
		e.run(t, "mosquitto_pub", "dev1", "-q", "1", "-t", topics.State("dev1"), "-m", "sentinel").wait(t)
		if m := await(t, states, "the sentinel"); m.payload != "sentinel" {
			t.Errorf("server got %.40q first", m.payload)
		}
	})
}

// need skips the test when a binary is missing, or fails it when CI=true.
func need(t *testing.T, bins ...string) {
	t.Helper()
	for _, b := range bins {
		if _, err := exec.LookPath(b); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s not found (apt-get install mosquitto-clients)", b)
			}
			t.Skipf("%s not found (apt-get install mosquitto-clients)", b)
		}
	}
}

// proc is a running Mosquitto command-line client.
type proc struct {
	cmd   *exec.Cmd
	out   *syncBuffer
	lines chan string
	done  chan struct{}
	err   error
}

// run starts a Mosquitto client as name (its certificate and client id;
// "" for none) with args, in debug mode.
func (e *env) run(t *testing.T, bin, name string, args ...string) *proc {
	t.Helper()
	common := []string{"-h", "127.0.0.1", "-p", e.port, "--cafile", filepath.Join(e.dir, "ca.pem"), "-d"}
	if name != "" {
		certPEM, keyPEM, err := e.ca.Issue(name, pki.ClientCert, nil, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		cert, key := filepath.Join(e.dir, name+".pem"), filepath.Join(e.dir, name+".key")
		if err := os.WriteFile(cert, certPEM, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(key, keyPEM, 0o600); err != nil {
			t.Fatal(err)
		}
		common = append(common, "--cert", cert, "--key", key, "-i", name)
	}
	p := &proc{out: &syncBuffer{}, lines: make(chan string, 256), done: make(chan struct{})}
	p.cmd = exec.Command(bin, append(common, args...)...)
	w := &lineWriter{buf: p.out, lines: p.lines}
	p.cmd.Stdout, p.cmd.Stderr = w, w
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
	})
	return p
}

// wait returns the client's output and exit error once it has ended.
func (p *proc) wait(t *testing.T) (string, error) {
	t.Helper()
	select {
	case <-p.done:
		return p.out.String(), p.err
	case <-time.After(waitFor):
		p.cmd.Process.Kill()
		<-p.done
		t.Fatalf("%s did not end:\n%s", p.cmd.Path, p.out)
		return "", nil
	}
}

// subackCode finds mosquitto_sub's "Subscribed (mid: 1): N" in its debug
// output and returns N, the SUBACK's code, or -1.
func subackCode(out string) int {
	for _, line := range strings.Split(out, "\n") {
		var mid, code int
		if _, err := fmt.Sscanf(line, "Subscribed (mid: %d): %d", &mid, &code); err == nil {
			return code
		}
	}
	return -1
}

// awaitSubscribed waits until the broker holds client's subscription to
// topic. (mosquitto_sub's output is block-buffered in a pipe: it cannot
// tell us.)
func (e *env) awaitSubscribed(t *testing.T, p *proc, client, topic string) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(waitFor)
	for {
		if _, ok := e.b.srv.Topics.Subscribers(topic).Subscriptions[client]; ok {
			return
		}
		select {
		case <-tick.C:
		case <-p.done:
			t.Fatalf("%s ended before subscribing: %v\n%s", p.cmd.Path, p.err, p.out)
		case <-deadline:
			t.Fatalf("%s did not subscribe to %s:\n%s", client, topic, p.out)
		}
	}
}

// lineWriter keeps a process's output and passes it on line by line.
type lineWriter struct {
	mu      sync.Mutex
	buf     *syncBuffer
	partial []byte
	lines   chan string
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	w.partial = append(w.partial, p...)
	for {
		i := bytes.IndexByte(w.partial, '\n')
		if i < 0 {
			return len(p), nil
		}
		select {
		case w.lines <- string(w.partial[:i]):
		default: // nobody is reading lines any more
		}
		w.partial = w.partial[i+1:]
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
