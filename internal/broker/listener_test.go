package broker

import (
	"crypto/tls"
	"log/slog"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/switchboard-dev/switchboard/internal/pki"
)

// A client that never finishes the handshake, or never sends CONNECT, is
// cut off after the listener's timeout.
func TestSilentConnectionsTimeOut(t *testing.T) {
	ca, _, err := pki.LoadOrCreateCA(filepath.Join(t.TempDir(), "ca"))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := ca.ServerTLS([]string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := newListener("test", tcp, cfg, slog.New(slog.DiscardHandler), 100*time.Millisecond)
	established := make(chan error, 1)
	served := make(chan struct{})
	go func() {
		defer close(served)
		// Like mochi, wait for CONNECT: here, any byte.
		l.Serve(func(_ string, c net.Conn) error {
			_, err := c.Read(make([]byte, 1))
			established <- err
			return err
		})
	}()
	defer func() {
		l.Close(func(string) {})
		l.wait()
		<-served
	}()

	raw, err := net.Dial("tcp", tcp.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := raw.Read(make([]byte, 1)); err == nil {
		t.Error("read data from a server that should have hung up")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Error("a connection without a handshake was not cut off")
	}

	certPEM, keyPEM, _ := ca.Issue("dev1", pki.ClientCert, nil, time.Hour)
	ccfg, _ := pki.ClientTLS(ca.CertPEM(), certPEM, keyPEM, "127.0.0.1")
	c, err := tls.Dial("tcp", tcp.Addr().String(), ccfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case err := <-established:
		if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
			t.Errorf("waiting for CONNECT ended with %v, want a timeout", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("a connection without CONNECT was not cut off")
	}
}
