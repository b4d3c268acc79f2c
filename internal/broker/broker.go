// Package broker embeds an MQTT broker (mochi-mqtt) for the wake protocol:
// clients are identified by their verified TLS client certificate, and each
// device may only subscribe to its own wake topic and publish its own
// state.
package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"

	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/switchboard-dev/switchboard/internal/wake"
)

// DefaultServerIdentity is the certificate name of the server's own client.
const DefaultServerIdentity = "switchboard-server"

// MaxPacketSize bounds every MQTT packet a client sends (a larger one ends
// its connection). Wake payloads are about 150 bytes and capped at 1 KiB.
const MaxPacketSize = 4 << 10

// Options configures Start.
type Options struct {
	// Listen is the TCP address to listen on, such as ":8883".
	Listen string
	// TLS is the listener's configuration; it must require and verify
	// client certificates (pki.CA.ServerTLS does).
	TLS *tls.Config
	// Prefix is the first topic level (default wake.DefaultPrefix).
	Prefix string
	// ServerIdentity is the certificate name that may publish and
	// subscribe to anything under the prefix (default
	// DefaultServerIdentity). No device may carry this name.
	ServerIdentity string
	// Logger receives refusals and denials (component "broker"); nil
	// means slog.Default().
	Logger *slog.Logger
	// Admit, if set, is asked at every connection whether a device (any
	// identity but the server's) may connect now, so that removing its
	// key revokes its MQTT access too, not only its certificate's expiry.
	Admit func(identity string) error
}

// Broker is a running MQTT broker. Close stops it.
type Broker struct {
	srv       *mqtt.Server
	ln        *listener
	closeOnce sync.Once
}

// Start listens on opts.Listen and serves MQTT over mutual TLS until
// Close. It returns once the listener accepts connections.
func Start(opts Options) (*Broker, error) {
	if opts.Listen == "" {
		return nil, errors.New("broker: no listen address")
	}
	if opts.TLS == nil {
		return nil, errors.New("broker: no TLS configuration: clients are identified by their certificates")
	}
	if opts.Prefix == "" {
		opts.Prefix = wake.DefaultPrefix
	}
	if !validPrefix(opts.Prefix) {
		return nil, fmt.Errorf("broker: invalid topic prefix %q", opts.Prefix)
	}
	if opts.ServerIdentity == "" {
		opts.ServerIdentity = DefaultServerIdentity
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "broker")

	srv := mqtt.New(&mqtt.Options{
		Capabilities: capabilities(),
		Logger:       slog.New(quietHandler{log.Handler()}),
		// Nobody may read $SYS (see acl): publish it rarely.
		SysTopicResendInterval: 3600,
	})
	h := &hook{acl: acl{topics: wake.Topics{Prefix: opts.Prefix}, server: opts.ServerIdentity}, srv: srv, log: log, admit: opts.Admit}
	if err := srv.AddHook(h, nil); err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	tcp, err := net.Listen("tcp", opts.Listen)
	if err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	ln := newListener("mqtts", tcp, opts.TLS, log, connectTimeout)
	b := &Broker{srv: srv, ln: ln}
	if err := srv.AddListener(ln); err != nil {
		tcp.Close()
		return nil, fmt.Errorf("broker: %w", err)
	}
	if err := srv.Serve(); err != nil {
		b.Close()
		return nil, fmt.Errorf("broker: %w", err)
	}
	log.Info("listening", "addr", tcp.Addr().String(), "prefix", opts.Prefix)
	return b, nil
}

// capabilities are mochi's defaults adjusted for the wake protocol. (A
// zero Capabilities would refuse every client.)
func capabilities() *mqtt.Capabilities {
	c := mqtt.NewDefaultServerCapabilities()
	// A retained state stays until the device replaces it: mochi's default
	// drops every retained message after 24 hours.
	c.MaximumMessageExpiryInterval = 0
	c.MaximumPacketSize = MaxPacketSize
	// Sessions end with their connection; clients resubscribe.
	c.MaximumSessionExpiryInterval = 0
	// Each client's send queue is allocated up front (mochi: 8192 slots).
	c.MaximumClientWritesPending = 256
	c.MaximumQos = 1
	c.SharedSubAvailable = 0
	// mochi checks the ACL before resolving a topic alias: refuse aliases.
	c.TopicAliasMaximum = 0
	c.MinimumProtocolVersion = 4 // MQTT 3.1.1
	return c
}

// Addr returns the address the broker listens on.
func (b *Broker) Addr() net.Addr { return b.ln.ln.Addr() }

// Close disconnects every client, stops listening and returns once the
// broker's connections have ended. Retained messages are lost: devices
// publish their state again when they reconnect.
func (b *Broker) Close() error {
	b.closeOnce.Do(func() {
		_ = b.srv.Close()
		b.ln.wait()
	})
	return nil
}

// quietHandler passes on mochi's own log records at WARN and above,
// without the packets some of them carry (payloads stay out of logs).
type quietHandler struct{ h slog.Handler }

func (q quietHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelWarn && q.h.Enabled(ctx, l)
}

func (q quietHandler) Handle(ctx context.Context, r slog.Record) error {
	out := slog.NewRecord(r.Time, r.Level, "mochi: "+r.Message, r.PC)
	r.Attrs(func(a slog.Attr) bool {
		if !secret(a.Key) {
			out.AddAttrs(a)
		}
		return true
	})
	return q.h.Handle(ctx, out)
}

func (q quietHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	kept := make([]slog.Attr, 0, len(attrs))
	for _, a := range attrs {
		if !secret(a.Key) {
			kept = append(kept, a)
		}
	}
	return quietHandler{q.h.WithAttrs(kept)}
}

func (q quietHandler) WithGroup(name string) slog.Handler { return quietHandler{q.h.WithGroup(name)} }

// secret names the attributes in which mochi logs whole packets.
func secret(key string) bool { return key == "pk" || key == "packet" }
