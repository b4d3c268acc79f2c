package mqttc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/switchboard-dev/switchboard/internal/broker"
	"github.com/switchboard-dev/switchboard/internal/broker/mosquittotest"
	"github.com/switchboard-dev/switchboard/internal/pki"
	"github.com/switchboard-dev/switchboard/internal/wake"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const waitFor = 10 * time.Second

var topics = wake.Topics{Prefix: wake.DefaultPrefix}

// backend is a broker the client is tested against. start returns its URL
// and a function that restarts it on the same address.
type backend struct {
	name  string
	start func(t *testing.T, ca *pki.CA) (url string, restart func())
}

var backends = []backend{
	{"embedded", startEmbedded},
	{"mosquitto", startMosquitto},
}

func startEmbedded(t *testing.T, ca *pki.CA) (string, func()) {
	t.Helper()
	cfg, err := ca.ServerTLS([]string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	run := func(addr string) *broker.Broker {
		b, err := broker.Start(broker.Options{Listen: addr, TLS: cfg, Logger: quiet()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		return b
	}
	b := run("127.0.0.1:0")
	addr := b.Addr().String()
	return "mqtts://" + addr, func() {
		b.Close()
		b = run(addr)
	}
}

func startMosquitto(t *testing.T, ca *pki.CA) (string, func()) {
	t.Helper()
	url, stop := mosquittotest.Start(t, ca, wake.DefaultPrefix)
	addr := strings.TrimPrefix(url, "mqtts://")
	return url, func() {
		stop()
		_, stop = mosquittotest.StartAt(t, ca, wake.DefaultPrefix, addr)
	}
}

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

func newCA(t *testing.T) *pki.CA {
	t.Helper()
	ca, _, err := pki.LoadOrCreateCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// options returns the options of a client named name, with a certificate
// of ca and a quick reconnection.
func options(t *testing.T, ca *pki.CA, url, name string) Options {
	t.Helper()
	certPEM, keyPEM, err := ca.Issue(name, pki.ClientCert, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := pki.ClientTLS(ca.CertPEM(), certPEM, keyPEM, "")
	if err != nil {
		t.Fatal(err)
	}
	return Options{
		URL: url, ClientID: name, TLS: cfg, Logger: quiet(),
		Backoff: func(n int) time.Duration { return time.Duration(n) * 20 * time.Millisecond },
	}
}

func dial(t *testing.T, opts Options) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	c, err := Dial(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

type msg struct {
	payload  string
	retained bool
}

// subscribe collects topic's messages on a channel.
func subscribe(t *testing.T, c *Client, topic string) (<-chan msg, func()) {
	t.Helper()
	ch := make(chan msg, 16)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	stop, err := c.Subscribe(ctx, topic, func(p []byte, retained bool) { ch <- msg{string(p), retained} })
	if err != nil {
		t.Fatal(err)
	}
	return ch, stop
}

func publish(t *testing.T, c *Client, topic, payload string, retain bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if err := c.Publish(ctx, topic, []byte(payload), retain); err != nil {
		t.Fatal(err)
	}
}

func await[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(waitFor):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// awaitPayload waits for a message with payload, skipping others.
func awaitPayload(t *testing.T, ch <-chan msg, payload string) msg {
	t.Helper()
	for {
		if m := await(t, ch, fmt.Sprintf("%q", payload)); m.payload == payload {
			return m
		}
	}
}

// dropConnection cuts c's network connection without a DISCONNECT, as a
// lost link does.
func dropConnection(c *Client) {
	c.mu.Lock()
	conn := c.conn
	c.mu.Unlock()
	conn.Close()
}

func forEachBackend(t *testing.T, f func(t *testing.T, ca *pki.CA, url string, restart func())) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			ca := newCA(t)
			url, restart := b.start(t, ca)
			f(t, ca, url, restart)
		})
	}
}

func TestPublishSubscribeRetainedAndWill(t *testing.T) {
	forEachBackend(t, func(t *testing.T, ca *pki.CA, url string, _ func()) {
		server := dial(t, options(t, ca, url, "switchboard-server"))
		devOpts := options(t, ca, url, "dev1")
		devOpts.Will = &Will{Topic: topics.State("dev1"), Payload: []byte("offline"), Retain: true}
		dev := dial(t, devOpts)

		// server → device: the wake topic.
		wakes, _ := subscribe(t, dev, topics.Wake("dev1"))
		publish(t, server, topics.Wake("dev1"), "wake-1", false)
		if m := await(t, wakes, "a wake-up"); m != (msg{"wake-1", false}) {
			t.Errorf("device got %+v", m)
		}

		// device → all: a retained state reaches a later subscriber...
		publish(t, dev, topics.State("dev1"), "asleep", true)
		states, _ := subscribe(t, server, topics.State("dev1"))
		if m := await(t, states, "the retained state"); m != (msg{"asleep", true}) {
			t.Errorf("server got %+v, want the retained state", m)
		}
		// ...and a live one is not marked retained. (mochi may also pass
		// on "asleep" live: it acknowledges a publish before it delivers
		// it, so a subscription can overtake it.)
		publish(t, dev, topics.State("dev1"), "connected", true)
		if m := awaitPayload(t, states, "connected"); m.retained {
			t.Errorf("server got %+v, want a live state", m)
		}

		// A lost link fires the will.
		dropConnection(dev)
		awaitPayload(t, states, "offline")
	})
}

func TestRefusals(t *testing.T) {
	forEachBackend(t, func(t *testing.T, ca *pki.CA, url string, _ func()) {
		embedded := strings.HasSuffix(t.Name(), "/embedded")
		server := dial(t, options(t, ca, url, "switchboard-server"))
		dev := dial(t, options(t, ca, url, "dev1"))
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()

		// Another device's wake topic: mochi refuses the subscription;
		// Mosquitto's acl_file grants every SUBSCRIBE and filters each
		// delivery instead. Either way nothing arrives.
		var refused *RefusedError
		foreign := make(chan string, 4)
		_, err := dev.Subscribe(ctx, topics.Wake("dev2"), func(p []byte, _ bool) { foreign <- string(p) })
		if embedded && (!errors.As(err, &refused) || refused.Code != 0x87 || refused.Op != "subscribe") {
			t.Errorf("subscribing to another device's wake: %v, want not authorized", err)
		}
		own, _ := subscribe(t, dev, topics.Wake("dev1"))
		publish(t, server, topics.Wake("dev2"), "for-dev2", false)
		publish(t, server, topics.Wake("dev1"), "for-dev1", false)
		await(t, own, "the device's own wake-up")
		select {
		case p := <-foreign:
			t.Errorf("dev1 received %q from dev2's wake topic", p)
		default:
		}

		// Another device's state: mochi says no; Mosquitto acknowledges
		// (so as not to tell what exists) and drops it.
		states, _ := subscribe(t, server, topics.State("dev2"))
		err = dev.Publish(ctx, topics.State("dev2"), []byte("forged"), true)
		if embedded && (!errors.As(err, &refused) || refused.Code != 0x87) {
			t.Errorf("publishing another device's state: %v, want not authorized", err)
		}
		publish(t, server, topics.State("dev2"), "genuine", false)
		if m := await(t, states, "dev2's state"); m.payload != "genuine" {
			t.Errorf("server got %+v from dev2's state topic, want only its own message", m)
		}

		if _, err := dev.Subscribe(ctx, "switchboard/+/wake", func([]byte, bool) {}); err == nil {
			t.Error("a wildcard subscription was sent")
		}
		// The connection survives refusals.
		publish(t, dev, topics.State("dev1"), "asleep", true)

		// No client certificate: refused during the handshake, at once.
		opts := options(t, ca, url, "dev3")
		opts.TLS.Certificates = nil
		start := time.Now()
		if c, err := Dial(ctx, opts); err == nil {
			c.Close()
			t.Error("a client without a certificate connected")
		} else if time.Since(start) > waitFor/2 {
			t.Errorf("Dial took %v to give up on a refused certificate", time.Since(start))
		}
	})
}

func TestClientIDMustBeTheCertificateName(t *testing.T) {
	ca := newCA(t)
	url, _ := startEmbedded(t, ca)
	opts := options(t, ca, url, "dev1")
	opts.ClientID = "dev2"
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	c, err := Dial(ctx, opts)
	var refused *RefusedError
	if !errors.As(err, &refused) || refused.Code != 0x85 || refused.Op != "connect" {
		if c != nil {
			c.Close()
		}
		t.Fatalf("Dial with another name: %v, want client identifier not valid", err)
	}
	if !strings.Contains(err.Error(), "client identifier not valid") {
		t.Errorf("error does not say why: %v", err)
	}
}

func TestReconnectRenewsSubscriptions(t *testing.T) {
	forEachBackend(t, func(t *testing.T, ca *pki.CA, url string, restart func()) {
		server := dial(t, options(t, ca, url, "switchboard-server"))
		connects := make(chan struct{}, 4)
		devOpts := options(t, ca, url, "dev1")
		devOpts.OnConnect = func(ctx context.Context) { connects <- struct{}{} }
		dev := dial(t, devOpts)
		await(t, connects, "the first OnConnect")
		wakes, _ := subscribe(t, dev, topics.Wake("dev1"))

		restart()
		// OnConnect runs after the subscriptions are renewed.
		await(t, connects, "OnConnect after the restart")
		publish(t, server, topics.Wake("dev1"), "after-restart", false)
		if m := await(t, wakes, "a wake-up after the restart"); m.payload != "after-restart" {
			t.Errorf("device got %+v", m)
		}
	})
}

func TestCancelAndSeveralHandlers(t *testing.T) {
	ca := newCA(t)
	url, _ := startEmbedded(t, ca)
	server := dial(t, options(t, ca, url, "switchboard-server"))
	dev := dial(t, options(t, ca, url, "dev1"))

	first, cancelFirst := subscribe(t, dev, topics.Wake("dev1"))
	second, cancelSecond := subscribe(t, dev, topics.Wake("dev1"))
	publish(t, server, topics.Wake("dev1"), "one", false)
	await(t, first, "the first handler's message")
	await(t, second, "the second handler's message")

	cancelFirst()
	cancelFirst() // idempotent
	publish(t, server, topics.Wake("dev1"), "two", false)
	if m := await(t, second, "the message after a cancel"); m.payload != "two" {
		t.Fatalf("second handler got %+v", m)
	}
	select {
	case m := <-first:
		t.Errorf("a cancelled handler got %+v", m)
	default:
	}

	// The last cancel unsubscribes; a new subscription still works.
	cancelSecond()
	third, _ := subscribe(t, dev, topics.Wake("dev1"))
	publish(t, server, topics.Wake("dev1"), "three", false)
	if m := await(t, third, "a message after resubscribing"); m.payload != "three" {
		t.Errorf("third handler got %+v", m)
	}
}

func TestPublishWaitsForTheConnection(t *testing.T) {
	ca := newCA(t)
	url, _ := startEmbedded(t, ca)
	dev := dial(t, options(t, ca, url, "dev1"))
	server := dial(t, options(t, ca, url, "switchboard-server"))
	states, _ := subscribe(t, server, topics.State("dev1"))

	// Cut the device's link: its publish waits for the reconnection.
	dropConnection(dev)
	publish(t, dev, topics.State("dev1"), "asleep", true)
	if m := await(t, states, "the state"); m.payload != "asleep" {
		t.Errorf("server got %+v", m)
	}
}

func TestDialGivesUpWithContext(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	ca := newCA(t)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err = Dial(ctx, options(t, ca, "mqtts://"+addr, "dev1"))
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "last attempt") {
		t.Errorf("Dial to nowhere: %v", err)
	}
}

func TestCloseWhileTheBrokerIsGone(t *testing.T) {
	ca := newCA(t)
	cfg, _ := ca.ServerTLS([]string{"127.0.0.1"})
	b, err := broker.Start(broker.Options{Listen: "127.0.0.1:0", TLS: cfg, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	c := dial(t, options(t, ca, "mqtts://"+b.Addr().String(), "dev1"))
	b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := c.Publish(ctx, topics.State("dev1"), []byte("x"), false); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Publish without a broker: %v", err)
	}
	start := time.Now()
	c.Close()
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Close took %v", d)
	}
	if err := c.Publish(context.Background(), topics.State("dev1"), nil, false); !errors.Is(err, ErrClosed) {
		t.Errorf("Publish after Close: %v", err)
	}
	if _, err := c.Subscribe(context.Background(), topics.Wake("dev1"), func([]byte, bool) {}); !errors.Is(err, ErrClosed) {
		t.Errorf("Subscribe after Close: %v", err)
	}
}

func TestOptionsAreChecked(t *testing.T) {
	for _, o := range []Options{
		{URL: "mqtts://h", ClientID: ""},
		{URL: "http://h", ClientID: "a"},
		{URL: "mqtts://", ClientID: "a"},
		{URL: "mqtts://h", ClientID: "a", KeepAlive: time.Millisecond},
		{URL: "mqtts://h", ClientID: "a", Will: &Will{Topic: "a/#"}},
	} {
		if c, err := Dial(context.Background(), o); err == nil || !strings.HasPrefix(err.Error(), "mqttc: ") {
			if c != nil {
				c.Close()
			}
			t.Errorf("Dial(%+v) = %v, want an mqttc error", o, err)
		}
	}
}

func TestServerNameComesFromTheURL(t *testing.T) {
	c, err := newClient(Options{URL: "mqtts://abc.iot.eu-west-1.amazonaws.com", ClientID: "a"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.stop()
	if c.tls.ServerName != "abc.iot.eu-west-1.amazonaws.com" || c.url.Host != "abc.iot.eu-west-1.amazonaws.com:8883" {
		t.Errorf("ServerName %q, host %q", c.tls.ServerName, c.url.Host)
	}
}
