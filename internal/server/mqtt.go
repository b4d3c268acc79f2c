package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/switchboard-dev/switchboard/internal/broker"
	"github.com/switchboard-dev/switchboard/internal/mqttc"
	"github.com/switchboard-dev/switchboard/internal/pki"
	"github.com/switchboard-dev/switchboard/internal/policy"
	"github.com/switchboard-dev/switchboard/internal/wake"
	"github.com/switchboard-dev/switchboard/internal/waker"
)

// MQTTOptions configures on-demand devices.
type MQTTOptions struct {
	// Mode is "embedded" (the default: a broker in this process), "off", or
	// an external broker's mqtts://HOST:PORT.
	Mode string
	// Listen is the embedded broker's address.
	Listen string
	// Hosts are the names and addresses in the embedded broker's TLS
	// certificate; default: the public address's host, localhost and
	// 127.0.0.1.
	Hosts []string
	// CA, Cert and Key are for an external broker: the CA that signed its
	// certificate, and this server's client certificate and key.
	CA, Cert, Key string
	Prefix        string
	WakeTimeout   time.Duration
}

// Defaults for on-demand devices.
const (
	DefaultMQTTListen  = ":8883"
	DefaultWakeTimeout = 30 * time.Second
	// ServerIdentity is the MQTT identity (certificate CN and client id) of
	// the server itself.
	ServerIdentity = "switchboard-server"
)

func (m *MQTTOptions) validate() error {
	switch {
	case m.Mode == "" || m.Mode == "embedded" || m.Mode == "off":
	case strings.HasPrefix(m.Mode, "mqtts://"):
		u, err := url.Parse(m.Mode)
		if err != nil || u.Hostname() == "" || u.Port() == "" {
			return fmt.Errorf("--mqtt %q: want mqtts://HOST:PORT", m.Mode)
		}
		if m.CA == "" || m.Cert == "" || m.Key == "" {
			return errors.New("an external broker needs --mqtt-ca, --mqtt-cert and --mqtt-key")
		}
	default:
		return fmt.Errorf("--mqtt %q: want embedded, off or mqtts://HOST:PORT", m.Mode)
	}
	if m.WakeTimeout < 0 {
		return errors.New("--wake-timeout must not be negative")
	}
	return nil
}

// onDemand is what Run starts for on-demand devices; close ends it.
type onDemand struct {
	waker  *waker.Waker
	client *mqttc.Client
	broker *broker.Broker
}

func (d *onDemand) close() {
	if d.client != nil {
		d.client.Close()
	}
	if d.broker != nil {
		d.broker.Close()
	}
}

// startOnDemand starts the embedded broker (or reaches the external one) and
// the server's own MQTT client, and returns the waker for the board.
func startOnDemand(ctx context.Context, o Options, publicAddr string, current func() *policy.Policy, logger *slog.Logger) (*onDemand, error) {
	m := o.MQTT
	d := &onDemand{}
	switch m.Mode {
	case "", "embedded":
		ca, created, err := pki.LoadOrCreateCA(o.StateDir)
		if err != nil {
			return nil, err
		}
		if created {
			logger.Info("mqtt CA created", "path", o.StateDir)
		}
		// The certificate names what devices dial, plus loopback, which the
		// server's own client uses when the broker listens on every address.
		hosts := m.Hosts
		if len(hosts) == 0 {
			host, _, _ := net.SplitHostPort(publicAddr)
			hosts = []string{host}
		}
		hosts = append(hosts, "localhost", "127.0.0.1")
		if h, _, err := net.SplitHostPort(m.Listen); err == nil && h != "" {
			if ip := net.ParseIP(h); ip == nil || !ip.IsUnspecified() {
				hosts = append(hosts, h)
			}
		}
		serverTLS, err := ca.ServerTLS(hosts)
		if err != nil {
			return nil, err
		}
		d.broker, err = broker.Start(broker.Options{
			Listen: m.Listen, TLS: serverTLS, Prefix: m.Prefix, ServerIdentity: ServerIdentity,
			Logger: logger,
			Admit:  func(name string) error { return enrolled(current(), name) },
		})
		if err != nil {
			return nil, fmt.Errorf("server: mqtt broker: %w", err)
		}
		logger.Info("mqtt broker listening", "addr", d.broker.Addr().String())
		certPEM, keyPEM, err := ca.Issue(ServerIdentity, pki.ClientCert, nil, 10*365*24*time.Hour)
		if err != nil {
			d.close()
			return nil, err
		}
		// The server dials its own broker where it listens: on loopback if
		// it listens on every address.
		host, port, _ := net.SplitHostPort(d.broker.Addr().String())
		if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
			host = "127.0.0.1"
		}
		tc, err := pki.ClientTLS(ca.CertPEM(), certPEM, keyPEM, host)
		if err != nil {
			d.close()
			return nil, err
		}
		if err := d.dial(ctx, "mqtts://"+net.JoinHostPort(host, port), tc, logger); err != nil {
			d.close()
			return nil, err
		}
	default:
		u, _ := url.Parse(m.Mode)
		tc, err := pki.LoadClientTLS(m.CA, m.Cert, m.Key, u.Hostname())
		if err != nil {
			return nil, err
		}
		if err := d.dial(ctx, m.Mode, tc, logger); err != nil {
			return nil, err
		}
	}
	d.waker = &waker.Waker{
		Client: d.client,
		Topics: wake.Topics{Prefix: m.Prefix},
		Server: publicAddr,
		Valid:  m.WakeTimeout,
		Log:    logger.With("component", "wake"),
	}
	return d, nil
}

func (d *onDemand) dial(ctx context.Context, u string, tc *tls.Config, logger *slog.Logger) error {
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, err := mqttc.Dial(dctx, mqttc.Options{
		URL: u, ClientID: ServerIdentity, TLS: tc, Logger: logger,
	})
	if err != nil {
		return fmt.Errorf("server: mqtt %s: %w", u, err)
	}
	d.client = c
	return nil
}

// publicAddress is what wake-ups tell devices to dial: --public-addr, or
// else the listen address with this machine's name for an empty host.
func publicAddress(o Options) string {
	if o.PublicAddr != "" {
		return o.PublicAddr
	}
	host, port, _ := net.SplitHostPort(o.Listen)
	if host == "" || host == "0.0.0.0" || host == "::" {
		host, _ = os.Hostname()
	}
	return net.JoinHostPort(host, port)
}

// enrolled says whether authorized_keys still names a device: a line whose
// hostname= or alias= is name, with access="listen". Certificates outlive
// keys; this is what revokes a removed device's MQTT access.
func enrolled(p *policy.Policy, name string) error {
	if e := p.Owner(name); e != nil && e.Roles&policy.Listen != 0 {
		return nil
	}
	return fmt.Errorf("no authorized_keys line names %q with access=\"listen\"", name)
}
