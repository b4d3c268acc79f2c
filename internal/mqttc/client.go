// Package mqttc is the MQTT client of switchboard: an MQTT 5 connection
// (paho.golang's autopaho) that reconnects by itself, renews its
// subscriptions after every reconnection, and implements wake.Client.
package mqttc

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"

	"github.com/switchboard-dev/switchboard/internal/wake"
)

// Defaults for Options.
const (
	DefaultKeepAlive      = 30 * time.Second // AWS IoT Core allows 30 s to 20 min
	DefaultConnectTimeout = 10 * time.Second
)

const (
	// closeTimeout bounds the clean DISCONNECT in Close.
	closeTimeout = 5 * time.Second
	// receiveMaximum is how many QoS 1 messages the broker may have in
	// flight to us. paho allocates a queue of this size per connection
	// (65535 slots by default).
	receiveMaximum = 64
)

// Will is the message the broker publishes (QoS 1) when the connection
// ends without a clean Close.
type Will struct {
	Topic   string
	Payload []byte
	Retain  bool
}

// Options configures Dial.
type Options struct {
	// URL is the broker: mqtts://HOST[:PORT] (default port 8883), or
	// mqtt://HOST[:PORT] (plain TCP, default port 1883: tests only).
	URL string
	// ClientID is the MQTT client id: the device's name (the broker and
	// AWS IoT Core require it to be the certificate's name).
	ClientID string
	// TLS configures mqtts; nil means the system's roots and no client
	// certificate. An empty ServerName is set from the URL's host (SNI,
	// which AWS IoT Core requires).
	TLS *tls.Config
	// KeepAlive is the MQTT keepalive (default DefaultKeepAlive).
	KeepAlive time.Duration
	// Will, if set, is published by the broker when the connection is lost.
	Will *Will
	// OnConnect, if set, is called after every connection and
	// reconnection, once subscriptions are renewed (to republish a state,
	// say). It runs on a goroutine of the client, one call at a time, and
	// must return when ctx ends: at the next disconnection or at Close.
	OnConnect func(ctx context.Context)
	// Logger receives connection events (component "mqtt"); nil means
	// slog.Default().
	Logger *slog.Logger
	// ConnectTimeout bounds each connection attempt: TCP, TLS and CONNACK
	// (default DefaultConnectTimeout).
	ConnectTimeout time.Duration
	// Backoff returns the pause before connection attempt n (0 for the
	// first attempt after a loss); nil means a jittered exponential
	// backoff from 1 s to 1 min, with a jittered first retry.
	Backoff func(attempt int) time.Duration
}

// Client is an MQTT connection kept up until Close. It is safe for
// concurrent use.
type Client struct {
	opts Options
	url  *url.URL
	tls  *tls.Config // nil for mqtt://
	log  *slog.Logger
	cm   *autopaho.ConnectionManager

	life      context.Context // ends at Close
	stop      context.CancelFunc
	wg        sync.WaitGroup // events and unsubscribe goroutines
	upSignal  chan struct{}  // a connection came up (buffered, coalescing)
	fatal     chan error     // a permanent failure before the first connection
	closeOnce sync.Once
	closeErr  error

	subOps sync.Mutex // serialises SUBSCRIBE and UNSUBSCRIBE round trips

	mu       sync.Mutex
	subs     map[string][]*handler // copy on write
	gen      uint64                // connections made so far
	up       bool
	everUp   bool
	changed  chan struct{} // closed and replaced when up or gen changes
	connCtx  context.Context
	connStop context.CancelFunc
	conn     net.Conn // the latest network connection
	lastErr  error    // the latest failed connection attempt
	maxSize  uint32   // the broker's largest packet, 0 if it did not say
	closed   bool
}

var _ wake.Client = (*Client)(nil)

// Dial starts a connection to the broker and returns once it is up. If ctx
// ends first, or the broker or the TLS handshake refuses the client (a
// configuration error that retrying will not fix), it gives up and returns
// an error. After that, the client reconnects by itself until Close.
func Dial(ctx context.Context, opts Options) (*Client, error) {
	c, err := newClient(opts)
	if err != nil {
		return nil, err
	}
	cfg := autopaho.ClientConfig{
		ServerUrls:                    []*url.URL{c.url},
		KeepAlive:                     uint16(c.opts.KeepAlive.Round(time.Second) / time.Second),
		CleanStartOnInitialConnection: true,
		SessionExpiryInterval:         0,
		ReconnectBackoff:              c.backoff,
		ConnectTimeout:                c.opts.ConnectTimeout,
		AttemptConnection:             c.dial,
		OnConnectionUp:                c.connectionUp,
		OnConnectionDown:              c.connectionDown,
		OnConnectError:                c.connectError,
		ConnectPacketBuilder:          buildConnect,
		Debug:                         pahoLog{c.log, slog.LevelDebug},
		Errors:                        pahoLog{c.log, slog.LevelWarn},
		PahoDebug:                     pahoLog{c.log, slog.LevelDebug},
		PahoErrors:                    pahoLog{c.log, slog.LevelWarn},
		ClientConfig: paho.ClientConfig{
			ClientID:           c.opts.ClientID,
			OnPublishReceived:  []func(paho.PublishReceived) (bool, error){c.onPublish},
			OnClientError:      c.clientError,
			OnServerDisconnect: c.serverDisconnect,
		},
	}
	if w := opts.Will; w != nil {
		cfg.WillMessage = &paho.WillMessage{Topic: w.Topic, Payload: w.Payload, Retain: w.Retain, QoS: 1}
		cfg.WillProperties = &paho.WillProperties{}
	}
	cm, err := autopaho.NewConnection(context.Background(), cfg)
	if err != nil {
		c.stop()
		return nil, fmt.Errorf("mqttc: %w", err)
	}
	c.cm = cm
	c.wg.Add(1)
	go c.events()
	if err := c.awaitFirst(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func newClient(opts Options) (*Client, error) {
	if opts.ClientID == "" {
		return nil, errors.New("mqttc: no client id")
	}
	u, err := url.Parse(opts.URL)
	if err != nil {
		return nil, fmt.Errorf("mqttc: broker URL: %w", err)
	}
	if u.Hostname() == "" {
		return nil, fmt.Errorf("mqttc: broker URL %q has no host", opts.URL)
	}
	var tlsCfg *tls.Config
	switch u.Scheme {
	case "mqtts":
		if opts.TLS != nil {
			tlsCfg = opts.TLS.Clone()
		} else {
			tlsCfg = &tls.Config{}
		}
		if tlsCfg.ServerName == "" {
			tlsCfg.ServerName = u.Hostname()
		}
		if tlsCfg.MinVersion == 0 {
			tlsCfg.MinVersion = tls.VersionTLS12
		}
		if u.Port() == "" {
			u.Host = net.JoinHostPort(u.Hostname(), "8883")
		}
	case "mqtt":
		if u.Port() == "" {
			u.Host = net.JoinHostPort(u.Hostname(), "1883")
		}
	default:
		return nil, fmt.Errorf("mqttc: broker URL %q: scheme must be mqtts (or mqtt)", opts.URL)
	}
	if opts.KeepAlive == 0 {
		opts.KeepAlive = DefaultKeepAlive
	}
	if opts.KeepAlive < time.Second || opts.KeepAlive > 65535*time.Second {
		return nil, fmt.Errorf("mqttc: keepalive %v out of range (1 s to 18 h)", opts.KeepAlive)
	}
	if opts.ConnectTimeout <= 0 {
		opts.ConnectTimeout = DefaultConnectTimeout
	}
	if w := opts.Will; w != nil {
		if err := checkTopic(w.Topic); err != nil {
			return nil, fmt.Errorf("mqttc: will: %w", err)
		}
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	life, stop := context.WithCancel(context.Background())
	return &Client{
		opts:     opts,
		url:      u,
		tls:      tlsCfg,
		log:      log.With("component", "mqtt", "broker", u.Host, "client_id", opts.ClientID),
		life:     life,
		stop:     stop,
		upSignal: make(chan struct{}, 1),
		fatal:    make(chan error, 1),
		subs:     map[string][]*handler{},
		changed:  make(chan struct{}),
	}, nil
}

// buildConnect asks for a clean start on every connection (the client
// renews its subscriptions itself) and a small receive window.
func buildConnect(cp *paho.Connect, _ *url.URL) (*paho.Connect, error) {
	cp.CleanStart = true
	if cp.Properties == nil {
		cp.Properties = &paho.ConnectProperties{}
	}
	rm := uint16(receiveMaximum)
	cp.Properties.ReceiveMaximum = &rm
	return cp, nil
}

// dial makes the network connection of one attempt.
func (c *Client) dial(ctx context.Context, _ autopaho.ClientConfig, u *url.URL) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.ConnectTimeout)
	defer cancel()
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", u.Host)
	if err != nil {
		return nil, err
	}
	conn := raw
	if c.tls != nil {
		tc := tls.Client(raw, c.tls)
		if err := tc.HandshakeContext(ctx); err != nil {
			raw.Close()
			return nil, err
		}
		conn = tc
	}
	c.mu.Lock()
	c.conn = conn
	c.mu.Unlock()
	return packets.NewThreadSafeConn(conn), nil
}

// backoff is the pause before attempt n of a (re)connection.
func (c *Client) backoff(attempt int) time.Duration {
	if c.opts.Backoff != nil {
		return c.opts.Backoff(attempt)
	}
	if attempt == 0 {
		c.mu.Lock()
		everUp := c.everUp
		c.mu.Unlock()
		if !everUp {
			return 0
		}
		// After a broker restart, every client would come back at once.
		return rand.N(time.Second)
	}
	d := min(time.Second<<min(attempt-1, 6), time.Minute)
	return d/2 + rand.N(d/2)
}

// awaitFirst waits for the first connection.
func (c *Client) awaitFirst(ctx context.Context) error {
	for {
		c.mu.Lock()
		up, changed := c.up, c.changed
		c.mu.Unlock()
		if up {
			return nil
		}
		select {
		case <-changed:
		case err := <-c.fatal:
			return fmt.Errorf("mqttc: connect to %s as %q: %w", c.url.Redacted(), c.opts.ClientID, err)
		case <-ctx.Done():
			c.mu.Lock()
			last := c.lastErr
			c.mu.Unlock()
			if last != nil {
				return fmt.Errorf("mqttc: connect to %s as %q: %w (last attempt: %v)", c.url.Redacted(), c.opts.ClientID, ctx.Err(), last)
			}
			return fmt.Errorf("mqttc: connect to %s as %q: %w", c.url.Redacted(), c.opts.ClientID, ctx.Err())
		}
	}
}

// connectionUp runs on autopaho's goroutine when a connection is made; it
// must not block.
func (c *Client) connectionUp(_ *autopaho.ConnectionManager, ack *paho.Connack) {
	c.mu.Lock()
	c.maxSize = 0
	if ack != nil && ack.Properties != nil && ack.Properties.MaximumPacketSize != nil {
		c.maxSize = *ack.Properties.MaximumPacketSize
	}
	c.gen++
	c.up, c.everUp = true, true
	if c.connStop != nil {
		c.connStop()
	}
	c.connCtx, c.connStop = context.WithCancel(c.life)
	c.lastErr = nil
	c.notifyLocked()
	c.mu.Unlock()
	select {
	case c.upSignal <- struct{}{}:
	default:
	}
	c.log.Info("connected")
}

// connectionDown runs on autopaho's goroutine when a connection is lost;
// it must not block. Returning true keeps autopaho reconnecting.
func (c *Client) connectionDown() bool {
	c.mu.Lock()
	c.up = false
	if c.connStop != nil {
		c.connStop()
	}
	c.notifyLocked()
	c.mu.Unlock()
	return true
}

func (c *Client) notifyLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

func (c *Client) connectError(err error) {
	err = classify(err)
	c.mu.Lock()
	c.lastErr = err
	first := !c.everUp
	c.mu.Unlock()
	if first && permanent(err) {
		select {
		case c.fatal <- err:
		default:
		}
		return
	}
	c.log.Warn("connection attempt failed", "error", err.Error())
}

func (c *Client) clientError(err error) {
	c.log.Info("connection lost", "error", err.Error())
}

func (c *Client) serverDisconnect(d *paho.Disconnect) {
	reason := reasonName(d.ReasonCode)
	if d.Properties != nil && d.Properties.ReasonString != "" {
		reason += ": " + d.Properties.ReasonString
	}
	c.log.Info("broker closed the connection", "reason", reason)
}

// events renews the subscriptions and calls OnConnect after each
// connection, one connection at a time.
func (c *Client) events() {
	defer c.wg.Done()
	for {
		select {
		case <-c.life.Done():
			return
		case <-c.upSignal:
		}
		c.mu.Lock()
		ctx := c.connCtx
		c.mu.Unlock()
		if ctx.Err() != nil {
			continue // already down again; the next connection signals anew
		}
		c.resubscribe(ctx)
		if c.opts.OnConnect != nil {
			c.opts.OnConnect(ctx)
		}
	}
}

// Close disconnects cleanly (so the broker does not publish the will) and
// returns once every goroutine of the client has ended. Calls in flight
// fail; later ones return ErrClosed.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.closed = true
		c.mu.Unlock()
		c.stop()
		ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
		defer cancel()
		if err := c.cm.Disconnect(ctx); err != nil {
			// The DISCONNECT could not be sent in time: cut the connection.
			c.mu.Lock()
			conn := c.conn
			c.mu.Unlock()
			if conn != nil {
				conn.Close()
			}
			<-c.cm.Done()
			c.closeErr = fmt.Errorf("mqttc: close: %w", err)
		}
		c.wg.Wait()
	})
	return c.closeErr
}

// pahoLog passes paho's log lines to slog.
type pahoLog struct {
	l     *slog.Logger
	level slog.Level
}

func (p pahoLog) Println(v ...any) {
	if p.l.Enabled(context.Background(), p.level) {
		p.l.Log(context.Background(), p.level, "paho: "+strings.TrimSpace(fmt.Sprintln(v...)))
	}
}

func (p pahoLog) Printf(format string, v ...any) {
	if p.l.Enabled(context.Background(), p.level) {
		p.l.Log(context.Background(), p.level, "paho: "+strings.TrimSpace(fmt.Sprintf(format, v...)))
	}
}
