package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newCA(t testing.TB) (*CA, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "state")
	ca, created, err := LoadOrCreateCA(dir)
	if err != nil || !created {
		t.Fatalf("LoadOrCreateCA: created=%v err=%v", created, err)
	}
	return ca, dir
}

func TestCreateThenReloadKeepsTheCA(t *testing.T) {
	ca, dir := newCA(t)
	c := ca.Certificate()
	if c.Subject.CommonName != CACommonName || !c.IsCA {
		t.Errorf("CA subject %q IsCA=%v", c.Subject.CommonName, c.IsCA)
	}
	if k, ok := c.PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
		t.Errorf("CA key is %T, want ECDSA P-256", c.PublicKey)
	}
	if d := time.Until(c.NotAfter); d < 9*365*24*time.Hour {
		t.Errorf("CA valid for %v, want ~10 years", d)
	}
	for name, want := range map[string]os.FileMode{CAKeyFile: 0o600, CACertFile: 0o644} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s mode %v, want %v", name, fi.Mode().Perm(), want)
		}
	}
	b, _ := os.ReadFile(filepath.Join(dir, CAKeyFile))
	if !bytes.HasPrefix(b, []byte("-----BEGIN PRIVATE KEY-----")) {
		t.Errorf("CA key is not PKCS#8 PEM: %.40q", b)
	}

	again, created, err := LoadOrCreateCA(dir)
	if err != nil || created {
		t.Fatalf("reload: created=%v err=%v", created, err)
	}
	if !bytes.Equal(again.CertPEM(), ca.CertPEM()) {
		t.Fatal("reload changed the CA certificate")
	}
	// A certificate issued before the reload verifies with the reloaded CA.
	certPEM, _, err := ca.Issue("dev1", ClientCert, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	verify(t, again, certPEM, x509.ExtKeyUsageClientAuth, "")
}

func TestIssueUsagesAndSANs(t *testing.T) {
	ca, _ := newCA(t)

	certPEM, keyPEM, err := ca.Issue("dev42", ClientCert, nil, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leaf := verify(t, ca, certPEM, x509.ExtKeyUsageClientAuth, "")
	if leaf.Subject.CommonName != "dev42" {
		t.Errorf("client CN %q", leaf.Subject.CommonName)
	}
	if len(leaf.DNSNames)+len(leaf.IPAddresses) != 0 {
		t.Errorf("client certificate has SANs %v %v", leaf.DNSNames, leaf.IPAddresses)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: ca.CertPool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Error("a client certificate verified as a server certificate")
	}
	if leaf.SerialNumber.BitLen() < 64 {
		t.Errorf("serial %v looks too small to be random", leaf.SerialNumber)
	}
	if !bytes.HasPrefix(keyPEM, []byte("-----BEGIN PRIVATE KEY-----")) {
		t.Errorf("key is not PKCS#8 PEM")
	}
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		t.Errorf("certificate and key do not pair: %v", err)
	}

	certPEM, _, err = ca.Issue("broker", ServerCert, []string{"pivot.example.com", "127.0.0.1", "[::1]"}, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leaf = verify(t, ca, certPEM, x509.ExtKeyUsageServerAuth, "pivot.example.com")
	for _, h := range []string{"127.0.0.1", "::1"} {
		if err := leaf.VerifyHostname(h); err != nil {
			t.Errorf("server certificate does not cover %s: %v", h, err)
		}
	}
	if leaf.VerifyHostname("other.example.com") == nil {
		t.Error("server certificate covers a host it was not issued for")
	}

	// Two certificates never share a serial.
	a, _, _ := ca.Issue("x", ClientCert, nil, time.Hour)
	b, _, _ := ca.Issue("x", ClientCert, nil, time.Hour)
	if mustParse(t, a).SerialNumber.Cmp(mustParse(t, b).SerialNumber) == 0 {
		t.Error("two certificates share a serial number")
	}

	// Validity never outlasts the CA.
	long, _, err := ca.Issue("y", ClientCert, nil, 100*365*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if mustParse(t, long).NotAfter.After(ca.Certificate().NotAfter) {
		t.Error("certificate outlives its CA")
	}
}

func TestIssueRefusesNonsense(t *testing.T) {
	ca, _ := newCA(t)
	for _, tc := range []struct {
		name  string
		cn    string
		usage Usage
		hosts []string
		valid time.Duration
	}{
		{"empty cn", "", ClientCert, nil, time.Hour},
		{"zero validity", "a", ClientCert, nil, 0},
		{"client with hosts", "a", ClientCert, []string{"h"}, time.Hour},
		{"server without hosts", "a", ServerCert, nil, time.Hour},
		{"server with empty host", "a", ServerCert, []string{""}, time.Hour},
		{"unknown usage", "a", Usage(9), nil, time.Hour},
	} {
		if _, _, err := ca.Issue(tc.cn, tc.usage, tc.hosts, tc.valid); err == nil || !strings.HasPrefix(err.Error(), "pki: ") {
			t.Errorf("%s: err = %v, want a pki error", tc.name, err)
		}
	}
}

func TestCorruptFilesAreErrorsAndKept(t *testing.T) {
	for _, tc := range []struct {
		name  string
		spoil func(t *testing.T, dir string)
		want  string
	}{
		{"garbage key", func(t *testing.T, dir string) { write(t, dir, CAKeyFile, "not a key") }, CAKeyFile},
		{"garbage cert", func(t *testing.T, dir string) { write(t, dir, CACertFile, "not a cert") }, CACertFile},
		{"key of another CA", func(t *testing.T, dir string) {
			other, _ := newCA(t)
			b, _ := os.ReadFile(filepath.Join(other.dir, CAKeyFile))
			write(t, dir, CAKeyFile, string(b))
		}, "does not match"},
		{"missing key", func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, CAKeyFile)) }, "missing"},
		{"a leaf as CA", func(t *testing.T, dir string) {
			ca, _, err := LoadOrCreateCA(dir)
			if err != nil {
				t.Fatal(err)
			}
			leaf, _, _ := ca.Issue("x", ClientCert, nil, time.Hour)
			write(t, dir, CACertFile, string(leaf))
		}, "not a CA"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, dir := newCA(t)
			tc.spoil(t, dir)
			before := snapshot(t, dir)
			_, _, err := LoadOrCreateCA(dir)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "pki: ") {
				t.Fatalf("err = %v, want a pki error mentioning %q", err, tc.want)
			}
			if after := snapshot(t, dir); after != before {
				t.Fatalf("LoadOrCreateCA changed the directory:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
}

func TestInterruptedCreationRecoversTheCertificate(t *testing.T) {
	ca, dir := newCA(t)
	leaf, _, err := ca.Issue("dev1", ClientCert, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// A crash between the key and the certificate leaves only the key.
	if err := os.Remove(filepath.Join(dir, CACertFile)); err != nil {
		t.Fatal(err)
	}
	again, created, err := LoadOrCreateCA(dir)
	if err != nil || created {
		t.Fatalf("created=%v err=%v", created, err)
	}
	verify(t, again, leaf, x509.ExtKeyUsageClientAuth, "")
}

func TestServerTLSCachesAndReissues(t *testing.T) {
	ca, dir := newCA(t)
	cfg, err := ca.ServerTLS([]string{"127.0.0.1", "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ClientAuth != tls.RequireAndVerifyClientCert || cfg.MinVersion != tls.VersionTLS12 {
		t.Errorf("ClientAuth=%v MinVersion=%x", cfg.ClientAuth, cfg.MinVersion)
	}
	first, _ := os.ReadFile(filepath.Join(dir, ServerCertFile))
	if fi, err := os.Stat(filepath.Join(dir, ServerKeyFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("server key: %v %v", fi, err)
	}

	// Same hosts (a subset): the cache is reused.
	if _, err := ca.ServerTLS([]string{"localhost"}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, ServerCertFile)); !bytes.Equal(b, first) {
		t.Error("server certificate reissued although it covers the hosts")
	}
	// A new host: reissued.
	if _, err := ca.ServerTLS([]string{"localhost", "pivot.example.com"}); err != nil {
		t.Fatal(err)
	}
	second, _ := os.ReadFile(filepath.Join(dir, ServerCertFile))
	if bytes.Equal(second, first) {
		t.Fatal("server certificate not reissued for a new host")
	}
	if mustParse(t, second).VerifyHostname("pivot.example.com") != nil {
		t.Error("reissued certificate lacks the new host")
	}
	// Near expiry: reissued.
	ca.now = func() time.Time { return time.Now().Add(340 * 24 * time.Hour) }
	if _, err := ca.ServerTLS([]string{"localhost"}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, ServerCertFile)); bytes.Equal(b, second) {
		t.Error("server certificate not renewed 25 days before expiry")
	}
	// A corrupt cache is replaced, not an error.
	ca.now = time.Now
	write(t, dir, ServerCertFile, "junk")
	if _, err := ca.ServerTLS([]string{"localhost"}); err != nil {
		t.Fatalf("corrupt cache: %v", err)
	}
	if _, err := ca.ServerTLS(nil); err == nil {
		t.Error("ServerTLS accepted no hosts")
	}
}

// TestMutualTLS runs real handshakes: a client certificate of the CA is
// accepted and its CN seen; no certificate, or one of another CA, is not.
func TestMutualTLS(t *testing.T) {
	ca, _ := newCA(t)
	srvCfg, err := ca.ServerTLS([]string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue("dev7", ClientCert, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	good, err := ClientTLS(ca.CertPEM(), certPEM, keyPEM, "")
	if err != nil {
		t.Fatal(err)
	}
	if cn, err := handshake(t, srvCfg, good, "127.0.0.1"); err != nil || cn != "dev7" {
		t.Fatalf("good client: cn=%q err=%v", cn, err)
	}

	noCert, _ := ClientTLS(ca.CertPEM(), nil, nil, "")
	if _, err := handshake(t, srvCfg, noCert, "127.0.0.1"); err == nil {
		t.Error("a client without a certificate was accepted")
	}

	other, _ := newCA(t)
	oc, ok, _ := other.Issue("dev7", ClientCert, nil, time.Hour)
	foreign, _ := ClientTLS(ca.CertPEM(), oc, ok, "")
	if _, err := handshake(t, srvCfg, foreign, "127.0.0.1"); err == nil {
		t.Error("a client certificate of another CA was accepted")
	}

	// A server certificate is not a client certificate.
	sc, sk, _ := ca.Issue("srv", ServerCert, []string{"x"}, time.Hour)
	wrongUsage, _ := ClientTLS(ca.CertPEM(), sc, sk, "")
	if _, err := handshake(t, srvCfg, wrongUsage, "127.0.0.1"); err == nil {
		t.Error("a server certificate was accepted as a client certificate")
	}

	// The client checks the broker's name.
	wrongName, _ := ClientTLS(ca.CertPEM(), certPEM, keyPEM, "elsewhere.example.com")
	if _, err := handshake(t, srvCfg, wrongName, "127.0.0.1"); err == nil {
		t.Error("client accepted a broker certificate for another name")
	}
}

func TestClientTLSFromFiles(t *testing.T) {
	ca, _ := newCA(t)
	dir := t.TempDir()
	certPEM, keyPEM, _ := ca.Issue("dev1", ClientCert, nil, time.Hour)
	write(t, dir, "ca.pem", string(ca.CertPEM()))
	write(t, dir, "c.pem", string(certPEM))
	write(t, dir, "c.key", string(keyPEM))
	p := func(n string) string { return filepath.Join(dir, n) }
	cfg, err := LoadClientTLS(p("ca.pem"), p("c.pem"), p("c.key"), "broker.example.com")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ServerName != "broker.example.com" || len(cfg.Certificates) != 1 || cfg.RootCAs == nil {
		t.Errorf("cfg: ServerName=%q certs=%d roots=%v", cfg.ServerName, len(cfg.Certificates), cfg.RootCAs != nil)
	}
	if _, err := LoadClientTLS(p("missing.pem"), "", "", ""); err == nil {
		t.Error("missing CA file accepted")
	}
	if _, err := LoadClientTLS(p("c.key"), "", "", ""); err == nil {
		t.Error("a key accepted as a CA bundle")
	}
	if _, err := LoadClientTLS(p("ca.pem"), p("c.pem"), "", ""); err == nil {
		t.Error("a certificate without its key accepted")
	}
	if _, err := LoadClientTLS(p("ca.pem"), p("c.pem"), p("ca.pem"), ""); err == nil || !strings.Contains(err.Error(), "c.pem") {
		t.Errorf("mismatched pair: %v", err)
	}
	sys, err := LoadClientTLS("", "", "", "")
	if err != nil || sys.RootCAs != nil {
		t.Errorf("no CA file should mean the system roots: %v", err)
	}
}

func TestHostOf(t *testing.T) {
	for in, want := range map[string]string{
		"pivot.example.com:2222": "pivot.example.com",
		"127.0.0.1:8883":         "127.0.0.1",
		"[::1]:8883":             "::1",
		"pivot":                  "pivot",
		"[::1]":                  "::1",
	} {
		if got := HostOf(in); got != want {
			t.Errorf("HostOf(%q) = %q, want %q", in, got, want)
		}
	}
}

// handshake runs a TLS handshake over a loopback connection and returns
// the client CN the server saw.
func handshake(t *testing.T, srvCfg, cliCfg *tls.Config, serverName string) (string, error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		cn  string
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		s := tls.Server(c, srvCfg)
		if err := s.Handshake(); err != nil {
			done <- result{err: err}
			return
		}
		// Read until the client closes, so that TLS 1.3 alerts reach it.
		_, _ = io.Copy(io.Discard, s)
		done <- result{cn: s.ConnectionState().PeerCertificates[0].Subject.CommonName}
	}()
	cfg := cliCfg.Clone()
	if cfg.ServerName == "" {
		cfg.ServerName = serverName
	}
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", ln.Addr().String(), cfg)
	if err == nil {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		// With TLS 1.3 the server's verdict on the client arrives after
		// the client's handshake: a read surfaces it.
		_, err = c.Write([]byte("x"))
		if err == nil {
			c.CloseWrite()
			_, err = c.Read(make([]byte, 1))
			if err == io.EOF {
				err = nil
			}
		}
		c.Close()
	}
	r := <-done
	if err != nil {
		return "", err
	}
	return r.cn, r.err
}

func verify(t *testing.T, ca *CA, certPEM []byte, usage x509.ExtKeyUsage, host string) *x509.Certificate {
	t.Helper()
	leaf := mustParse(t, certPEM)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: ca.CertPool(), DNSName: host, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
		t.Fatalf("certificate does not verify: %v", err)
	}
	return leaf
}

func mustParse(t *testing.T, certPEM []byte) *x509.Certificate {
	t.Helper()
	c, err := parseCert(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func write(t *testing.T, dir, name, s string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}

func snapshot(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		data, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		b.WriteString(e.Name() + "=" + string(data) + ";")
	}
	return b.String()
}
