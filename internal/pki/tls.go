package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// File names of the broker's cached server certificate in the CA's
// directory. They are a cache: ServerTLS reissues them when they no longer
// fit.
const (
	ServerCertFile = "mqtt-server.pem"
	ServerKeyFile  = "mqtt-server.key"
)

const (
	// serverValidity is how long a new broker certificate is valid.
	serverValidity = 365 * 24 * time.Hour
	// renewBefore is how long before its expiry the broker certificate is
	// replaced.
	renewBefore = 30 * 24 * time.Hour
	// serverCN names the broker certificate; clients check its SANs.
	serverCN = "switchboard MQTT broker"
)

// ServerTLS returns the TLS configuration of the embedded broker: a server
// certificate for hosts (the names and addresses devices dial), signed by
// the CA and cached in its directory, and client certificates required and
// verified against the CA. The certificate is reissued when the cached one
// does not cover hosts, and renewed in place 30 days before it expires,
// without a restart.
func (ca *CA) ServerTLS(hosts []string) (*tls.Config, error) {
	if len(hosts) == 0 {
		return nil, errors.New("pki: server TLS: no hosts")
	}
	hosts = append([]string(nil), hosts...)
	for i, h := range hosts {
		hosts[i] = bareHost(h)
	}
	sc := &serverCert{ca: ca, hosts: hosts}
	if err := sc.refresh(); err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		ClientAuth:     tls.RequireAndVerifyClientCert,
		ClientCAs:      ca.CertPool(),
		GetCertificate: sc.get,
	}, nil
}

// serverCert holds the broker certificate and renews it when it nears its
// expiry.
type serverCert struct {
	ca    *CA
	hosts []string

	mu   sync.Mutex
	cert *tls.Certificate
}

func (sc *serverCert) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	sc.mu.Lock()
	cert := sc.cert
	sc.mu.Unlock()
	if sc.ca.now().Add(renewBefore).Before(cert.Leaf.NotAfter) {
		return cert, nil
	}
	if err := sc.refresh(); err != nil {
		// Serve the old certificate while it lasts; the error will recur.
		return cert, nil
	}
	sc.mu.Lock()
	defer sc.mu.Unlock()
	return sc.cert, nil
}

// refresh loads the cached certificate, or issues and caches a new one when
// the cached one is missing, broken, foreign, too narrow or nearly expired.
func (sc *serverCert) refresh() error {
	ca := sc.ca
	ca.mu.Lock()
	defer ca.mu.Unlock()
	certPath := filepath.Join(ca.dir, ServerCertFile)
	keyPath := filepath.Join(ca.dir, ServerKeyFile)
	cert, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil || !ca.fits(cert.Leaf, sc.hosts) {
		leaf, certPEM, keyPEM, err := ca.issue(serverCN, ServerCert, sc.hosts, serverValidity)
		if err != nil {
			return err
		}
		if err := writeReplace(keyPath, keyPEM, 0o600); err != nil {
			return err
		}
		if err := writeReplace(certPath, certPEM, 0o644); err != nil {
			return err
		}
		cert, err = tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return fmt.Errorf("pki: server certificate: %w", err)
		}
		cert.Leaf = leaf
	}
	sc.mu.Lock()
	sc.cert = &cert
	sc.mu.Unlock()
	return nil
}

// fits reports whether leaf is a server certificate of this CA valid for
// every host for at least renewBefore.
func (ca *CA) fits(leaf *x509.Certificate, hosts []string) bool {
	if leaf == nil {
		return false
	}
	now := ca.now()
	if !now.Add(renewBefore).Before(leaf.NotAfter) {
		return false
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots:       ca.CertPool(),
		CurrentTime: now,
		KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}); err != nil {
		return false
	}
	for _, h := range hosts {
		if leaf.VerifyHostname(h) != nil {
			return false
		}
	}
	return true
}

// ClientTLS returns the TLS configuration of an MQTT client: caPEM holds
// the roots that verify the broker (empty: the system's roots, as for AWS
// IoT Core), certPEM and keyPEM the client's certificate and key (both
// empty: none), and serverName the broker's name when it differs from the
// host dialled (empty: the host dialled).
func ClientTLS(caPEM, certPEM, keyPEM []byte, serverName string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: bareHost(serverName)}
	if len(caPEM) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(caPEM) {
			return nil, errors.New("pki: client TLS: no certificate in the CA bundle")
		}
		cfg.RootCAs = pool
	}
	switch {
	case len(certPEM) == 0 && len(keyPEM) == 0:
	case len(certPEM) == 0 || len(keyPEM) == 0:
		return nil, errors.New("pki: client TLS: a client certificate needs both the certificate and its key")
	default:
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return nil, fmt.Errorf("pki: client TLS: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// LoadClientTLS is ClientTLS with its PEM read from files; an empty caFile
// means the system's roots, empty certFile and keyFile no client
// certificate.
func LoadClientTLS(caFile, certFile, keyFile, serverName string) (*tls.Config, error) {
	read := func(path string) ([]byte, error) {
		if path == "" {
			return nil, nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("pki: %w", err)
		}
		return b, nil
	}
	caPEM, err := read(caFile)
	if err != nil {
		return nil, err
	}
	certPEM, err := read(certFile)
	if err != nil {
		return nil, err
	}
	keyPEM, err := read(keyFile)
	if err != nil {
		return nil, err
	}
	cfg, err := ClientTLS(caPEM, certPEM, keyPEM, serverName)
	if err != nil {
		return nil, fmt.Errorf("%w (files %s)", err, describeFiles(caFile, certFile, keyFile))
	}
	return cfg, nil
}

func describeFiles(files ...string) string {
	s := ""
	for _, f := range files {
		if f == "" {
			continue
		}
		if s != "" {
			s += ", "
		}
		s += f
	}
	return s
}

// HostOf returns the host part of a HOST:PORT address, or addr itself when
// it has no port: what a server certificate must name.
func HostOf(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return bareHost(addr)
}
