// Package mosquittotest runs a real Mosquitto broker for tests, set up as
// switchboard expects an external broker to be: mutual TLS with
// certificates of a pki.CA, the certificate's name as the user name, and
// an ACL that lets each device subscribe only to its own wake topic and
// publish only its own state, and the server do anything under the prefix.
package mosquittotest

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/switchboard-dev/switchboard/internal/pki"
)

// ServerIdentity is the user (certificate name) the ACL gives the run of
// the prefix.
const ServerIdentity = "switchboard-server"

// startTimeout bounds how long Mosquitto may take to accept TLS.
const startTimeout = 10 * time.Second

// Binary returns the path of the mosquitto binary. When it is missing it
// skips the test, or fails it when CI=true.
func Binary(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath("mosquitto"); err == nil {
		return p
	}
	for _, p := range []string{"/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	msg := "mosquitto not found (apt-get install mosquitto)"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// Start runs Mosquitto on a free port of 127.0.0.1 with a broker
// certificate of ca, and returns its mqtts:// URL and a function that
// stops it (also called at the end of the test).
func Start(t testing.TB, ca *pki.CA, prefix string) (url string, stop func()) {
	t.Helper()
	var err error
	for range 3 { // another process may take the port between the probe and the bind
		var addr string
		addr, err = freePort()
		if err != nil {
			t.Fatal(err)
		}
		url, stop, err = start(t, ca, prefix, addr)
		if err == nil {
			return url, stop
		}
	}
	t.Fatal(err)
	return "", nil
}

// StartAt is Start on a given address, such as the one of a broker just
// stopped, to restart it.
func StartAt(t testing.TB, ca *pki.CA, prefix, addr string) (url string, stop func()) {
	t.Helper()
	url, stop, err := start(t, ca, prefix, addr)
	if err != nil {
		t.Fatal(err)
	}
	return url, stop
}

func start(t testing.TB, ca *pki.CA, prefix, addr string) (string, func(), error) {
	t.Helper()
	bin := Binary(t)
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", nil, fmt.Errorf("mosquittotest: %w", err)
	}
	dir := t.TempDir()
	path := func(name string) string { return filepath.Join(dir, name) }
	certPEM, keyPEM, err := ca.Issue("mosquitto", pki.ServerCert, []string{host, "localhost"}, 24*time.Hour)
	if err != nil {
		return "", nil, err
	}
	conf := fmt.Sprintf(`# written by mosquittotest
per_listener_settings false
allow_anonymous false
persistence false
log_dest stderr
log_type error
log_type warning
log_type notice
acl_file %s
listener %s %s
cafile %s
certfile %s
keyfile %s
require_certificate true
use_identity_as_username true
`, path("acl"), port, host, path("ca.pem"), path("server.pem"), path("server.key"))
	if os.Geteuid() == 0 {
		conf = "user root\n" + conf // else it drops to "mosquitto", who cannot read dir
	}
	acl := fmt.Sprintf(`pattern read %[1]s/%%u/wake
pattern write %[1]s/%%u/state

user %[2]s
topic readwrite %[1]s/#
`, prefix, ServerIdentity)
	for name, data := range map[string][]byte{
		"mosquitto.conf": []byte(conf),
		"acl":            []byte(acl),
		"ca.pem":         ca.CertPEM(),
		"server.pem":     certPEM,
		"server.key":     keyPEM,
	} {
		if err := os.WriteFile(path(name), data, 0o600); err != nil {
			return "", nil, err
		}
	}

	out := &syncBuffer{}
	cmd := exec.Command(bin, "-c", path("mosquitto.conf"))
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return "", nil, fmt.Errorf("mosquittotest: %w", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(5 * time.Second):
				_ = cmd.Process.Kill()
				<-exited
			}
		})
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("mosquitto on %s said:\n%s", addr, out.String())
		}
	})

	probe, err := probeConfig(ca)
	if err != nil {
		stop()
		return "", nil, err
	}
	probe.ServerName = host
	deadline := time.Now().Add(startTimeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: time.Second}, "tcp", addr, probe)
		if err == nil {
			c.Close()
			return "mqtts://" + addr, stop, nil
		}
		select {
		case <-exited:
			return "", nil, fmt.Errorf("mosquittotest: mosquitto exited before accepting TLS on %s:\n%s", addr, out.String())
		case <-tick.C:
		}
		if time.Now().After(deadline) {
			stop()
			return "", nil, fmt.Errorf("mosquittotest: mosquitto did not accept TLS on %s within %v: %v\n%s", addr, startTimeout, err, out.String())
		}
	}
}

// probeConfig is a client that completes a handshake with the broker.
func probeConfig(ca *pki.CA) (*tls.Config, error) {
	certPEM, keyPEM, err := ca.Issue(ServerIdentity, pki.ClientCert, nil, time.Hour)
	if err != nil {
		return nil, err
	}
	return pki.ClientTLS(ca.CertPEM(), certPEM, keyPEM, "")
}

func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("mosquittotest: %w", err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	if port == 0 {
		return "", errors.New("mosquittotest: no free port")
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), nil
}

// syncBuffer collects the broker's output from its two streams.
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
