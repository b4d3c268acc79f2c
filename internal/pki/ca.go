// Package pki is the server's own certificate authority for MQTT: it
// issues the broker's server certificate and the client certificates that
// identify devices (and the server itself) to the broker by their common
// name.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// File names of the CA in its directory.
const (
	CACertFile = "mqtt-ca.pem"
	CAKeyFile  = "mqtt-ca.key"
)

// CACommonName is the subject of the CA certificate.
const CACommonName = "switchboard MQTT CA"

// caValidity is how long a new CA is valid.
const caValidity = 10 * 365 * 24 * time.Hour

// clockSkew backdates every certificate so that a peer whose clock is a
// little behind still accepts it.
const clockSkew = 5 * time.Minute

// Usage says what a certificate is for.
type Usage int

const (
	// ClientCert identifies an MQTT client (a device, or the server's own
	// client) by its common name.
	ClientCert Usage = iota + 1
	// ServerCert identifies the broker by the host names and addresses
	// clients dial.
	ServerCert
)

func (u Usage) String() string {
	switch u {
	case ClientCert:
		return "client"
	case ServerCert:
		return "server"
	}
	return fmt.Sprintf("Usage(%d)", int(u))
}

// CA is a certificate authority kept in a directory. Its methods are safe
// for concurrent use.
type CA struct {
	dir     string
	cert    *x509.Certificate
	certPEM []byte
	key     crypto.Signer

	mu  sync.Mutex // serialises the server certificate cache in dir
	now func() time.Time
}

// LoadOrCreateCA reads the CA in dir (mqtt-ca.pem and mqtt-ca.key), or
// creates one there (ECDSA P-256, valid ten years, key mode 0600) if
// neither file exists. An existing CA is never overwritten: a file that
// cannot be read, parsed or matched is an error the caller must resolve by
// hand, since replacing the CA would strand every issued certificate.
// created reports whether a new CA was made.
func LoadOrCreateCA(dir string) (ca *CA, created bool, err error) {
	certPath := filepath.Join(dir, CACertFile)
	keyPath := filepath.Join(dir, CAKeyFile)

	key, err := loadKey(keyPath)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if _, err := os.Stat(certPath); err == nil {
			return nil, false, fmt.Errorf("pki: %s exists but its key %s is missing: restore the key or remove both to start a new CA", certPath, keyPath)
		}
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, false, fmt.Errorf("pki: %w", err)
		}
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, false, fmt.Errorf("pki: generate CA key: %w", err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			return nil, false, fmt.Errorf("pki: marshal CA key: %w", err)
		}
		if err := writeNew(keyPath, pemBlock("PRIVATE KEY", der), 0o600); errors.Is(err, fs.ErrExist) {
			// Another process created the CA meanwhile: use theirs.
			return LoadOrCreateCA(dir)
		} else if err != nil {
			return nil, false, err
		}
		key, created = k, true
	case err != nil:
		return nil, false, err
	}

	certPEM, err := os.ReadFile(certPath)
	if errors.Is(err, fs.ErrNotExist) {
		// Either we just made the key, or a start was interrupted between
		// the key and the certificate: a certificate made from the key is
		// as good as the lost one (issued certificates name the CA's key).
		certPEM, err = newCACert(key, time.Now())
		if err != nil {
			return nil, false, err
		}
		err = writeNew(certPath, certPEM, 0o644)
		if errors.Is(err, fs.ErrExist) {
			// Another process wrote it meanwhile: use theirs.
			certPEM, err = os.ReadFile(certPath)
		} else if err != nil {
			return nil, false, err
		}
	}
	if err != nil {
		return nil, false, fmt.Errorf("pki: %w", err)
	}
	cert, err := parseCACert(certPath, certPEM, key)
	if err != nil {
		return nil, false, err
	}
	return &CA{dir: dir, cert: cert, certPEM: certPEM, key: key, now: time.Now}, created, nil
}

func newCACert(key crypto.Signer, now time.Time) ([]byte, error) {
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: CACommonName},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("pki: create CA certificate: %w", err)
	}
	return pemBlock("CERTIFICATE", der), nil
}

func loadKey(path string) (crypto.Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		return nil, fmt.Errorf("pki: %w", err)
	}
	key, err := parseKey(b)
	if err != nil {
		return nil, fmt.Errorf("pki: %s: %w", path, err)
	}
	return key, nil
}

// parseKey reads a PKCS#8 (or SEC 1 "EC PRIVATE KEY") PEM private key.
func parseKey(b []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, errors.New("no PEM private key")
	}
	var k any
	var err error
	switch block.Type {
	case "PRIVATE KEY":
		k, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("PEM block %q is not a private key", block.Type)
	}
	if err != nil {
		return nil, err
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("unsupported private key type %T", k)
	}
	return s, nil
}

func parseCert(b []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM certificate")
	}
	return x509.ParseCertificate(block.Bytes)
}

func parseCACert(path string, certPEM []byte, key crypto.Signer) (*x509.Certificate, error) {
	cert, err := parseCert(certPEM)
	if err != nil {
		return nil, fmt.Errorf("pki: %s: %w", path, err)
	}
	if !cert.IsCA || !cert.BasicConstraintsValid {
		return nil, fmt.Errorf("pki: %s is not a CA certificate", path)
	}
	if !samePublicKey(cert.PublicKey, key.Public()) {
		return nil, fmt.Errorf("pki: %s does not match the key beside it", path)
	}
	if now := time.Now(); now.After(cert.NotAfter) {
		return nil, fmt.Errorf("pki: %s expired on %s: issue a new CA and re-enroll the devices", path, cert.NotAfter.UTC().Format(time.RFC3339))
	}
	return cert, nil
}

func samePublicKey(a, b crypto.PublicKey) bool {
	ak, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ak.Equal(b)
}

// Issue makes a certificate and its new ECDSA P-256 key, signed by the CA.
// A ClientCert carries cn as its identity (a device's name, or the
// server's own "switchboard-server") and takes no hosts; a ServerCert is
// valid for hosts (DNS names and IP addresses, at least one). The
// certificate is valid for validity, but never beyond the CA itself.
// keyPEM is PKCS#8.
func (ca *CA) Issue(cn string, usage Usage, hosts []string, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	_, certPEM, keyPEM, err = ca.issue(cn, usage, hosts, validity)
	return certPEM, keyPEM, err
}

func (ca *CA) issue(cn string, usage Usage, hosts []string, validity time.Duration) (*x509.Certificate, []byte, []byte, error) {
	if cn == "" {
		return nil, nil, nil, errors.New("pki: issue: empty common name")
	}
	if validity <= 0 {
		return nil, nil, nil, fmt.Errorf("pki: issue %q: validity %v is not positive", cn, validity)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, nil, err
	}
	now := ca.now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
	}
	if tmpl.NotAfter.After(ca.cert.NotAfter) {
		tmpl.NotAfter = ca.cert.NotAfter
	}
	switch usage {
	case ClientCert:
		if len(hosts) > 0 {
			return nil, nil, nil, fmt.Errorf("pki: issue %q: hosts apply only to server certificates", cn)
		}
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	case ServerCert:
		if len(hosts) == 0 {
			return nil, nil, nil, fmt.Errorf("pki: issue %q: a server certificate needs at least one host", cn)
		}
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		for _, h := range hosts {
			h = bareHost(h)
			if h == "" {
				return nil, nil, nil, fmt.Errorf("pki: issue %q: empty host", cn)
			}
			if ip := net.ParseIP(h); ip != nil {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			} else {
				tmpl.DNSNames = append(tmpl.DNSNames, h)
			}
		}
	default:
		return nil, nil, nil, fmt.Errorf("pki: issue %q: unknown usage %v", cn, usage)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("pki: generate key: %w", err)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("pki: issue %q: %w", cn, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("pki: issue %q: %w", cn, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("pki: marshal key: %w", err)
	}
	return cert, pemBlock("CERTIFICATE", der), pemBlock("PRIVATE KEY", keyDER), nil
}

// bareHost strips the brackets of an IPv6 literal.
func bareHost(h string) string {
	return strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(h), "["), "]")
}

// newSerial returns a random positive 128-bit serial number.
func newSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	for {
		n, err := rand.Int(rand.Reader, limit)
		if err != nil {
			return nil, fmt.Errorf("pki: serial number: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
}

// Certificate returns the CA certificate.
func (ca *CA) Certificate() *x509.Certificate { return ca.cert }

// CertPool returns a new pool holding only the CA certificate: the roots a
// client verifies the broker with, or the client CAs the broker verifies
// clients with.
func (ca *CA) CertPool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

// CertPEM returns the CA certificate in PEM, as devices need it to verify
// the broker.
func (ca *CA) CertPEM() []byte { return append([]byte(nil), ca.certPEM...) }

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

// writeNew creates path with data and mode, all or nothing: the data is
// written and synced under a temporary name, then linked into place, which
// fails with fs.ErrExist if path exists. A crash leaves no half-written
// file behind.
func writeNew(path string, data []byte, mode os.FileMode) error {
	tmp, err := writeTemp(path, data, mode)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	if err := os.Link(tmp, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return err
		}
		return fmt.Errorf("pki: %w", err)
	}
	return nil
}

// writeReplace atomically replaces path with data: for files that are a
// cache (the server certificate), never for the CA.
func writeReplace(path string, data []byte, mode os.FileMode) error {
	tmp, err := writeTemp(path, data, mode)
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("pki: %w", err)
	}
	return nil
}

func writeTemp(path string, data []byte, mode os.FileMode) (string, error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".pki-*")
	if err != nil {
		return "", fmt.Errorf("pki: %w", err)
	}
	fail := func(err error) (string, error) {
		tmp.Close()
		os.Remove(tmp.Name())
		return "", fmt.Errorf("pki: write %s: %w", path, err)
	}
	if err := tmp.Chmod(mode); err != nil {
		return fail(err)
	}
	if _, err := tmp.Write(data); err != nil {
		return fail(err)
	}
	if err := tmp.Sync(); err != nil {
		return fail(err)
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return "", fmt.Errorf("pki: write %s: %w", path, err)
	}
	return tmp.Name(), nil
}
