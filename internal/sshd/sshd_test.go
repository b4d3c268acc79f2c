package sshd

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/crypto/ssh"

	"github.com/switchboard-dev/switchboard/internal/board"
	"github.com/switchboard-dev/switchboard/internal/policy"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newSigner(t testing.TB) ssh.Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func authLine(opts string, s ssh.Signer) string {
	return opts + " " + strings.TrimSpace(string(ssh.MarshalAuthorizedKey(s.PublicKey())))
}

// testServer runs a Server on loopback with the given authorized_keys lines
// and shuts it down at cleanup; goleak in TestMain then proves every
// connection, channel and keepalive goroutine ended.
type testServer struct {
	srv  *Server
	addr string
	host ssh.PublicKey
}

func startServer(t testing.TB, lines []string, tweak func(*Config)) *testServer {
	t.Helper()
	p, errs := policy.Parse([]byte(strings.Join(lines, "\n")))
	if len(errs) > 0 {
		t.Fatalf("policy: %v", errs)
	}
	host := newSigner(t)
	cfg := Config{
		HostKeys: []ssh.Signer{host},
		Policy:   func() *policy.Policy { return p },
		Board:    board.New(nil),
		Logger:   slog.New(slog.DiscardHandler),
	}
	if tweak != nil {
		tweak(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-served; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	return &testServer{srv: srv, addr: ln.Addr().String(), host: host.PublicKey()}
}

func (ts *testServer) dial(t testing.TB, user string, key ssh.Signer) *ssh.Client {
	t.Helper()
	c, err := ssh.Dial("tcp", ts.addr, &ssh.ClientConfig{
		User:            user,
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(key)},
		HostKeyCallback: ssh.FixedHostKey(ts.host),
		Timeout:         5 * time.Second,
	})
	if err != nil {
		t.Fatalf("dial as %s: %v", user, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// echoDevice registers ports on c and serves every forwarded channel by
// echoing it back, the way a device's sshd would answer. done closes when the
// connection has ended and every echo has finished.
func echoDevice(t testing.TB, c *ssh.Client, ports ...uint32) (allocated []uint32, done <-chan struct{}) {
	t.Helper()
	chans := c.HandleChannelOpen("forwarded-tcpip")
	for _, port := range ports {
		ok, reply, err := c.SendRequest("tcpip-forward", true, ssh.Marshal(tcpipForwardRequest{BindAddr: "localhost", BindPort: port}))
		if err != nil || !ok {
			t.Fatalf("tcpip-forward %d: ok=%v err=%v", port, ok, err)
		}
		if port == 0 {
			var r tcpipForwardReply
			if err := ssh.Unmarshal(reply, &r); err != nil {
				t.Fatalf("tcpip-forward reply: %v", err)
			}
			port = r.Port
		}
		allocated = append(allocated, port)
	}
	d := make(chan struct{})
	go func() {
		defer close(d)
		var wg sync.WaitGroup
		for nc := range chans {
			var req forwardedTCPIPRequest
			if err := ssh.Unmarshal(nc.ExtraData(), &req); err != nil || req.Addr != "localhost" {
				nc.Reject(ssh.ConnectionFailed, fmt.Sprintf("unexpected forward %+v", req))
				continue
			}
			ch, reqs, err := nc.Accept()
			if err != nil {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				go ssh.DiscardRequests(reqs)
				io.Copy(ch, ch)
				ch.CloseWrite()
				ch.Close()
			}()
		}
		wg.Wait()
	}()
	return allocated, d
}

func roundTrip(t testing.TB, op *ssh.Client, target, msg string) {
	t.Helper()
	conn, err := op.Dial("tcp", target)
	if err != nil {
		t.Fatalf("dial %s: %v", target, err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, msg); err != nil {
		t.Fatal(err)
	}
	conn.(interface{ CloseWrite() error }).CloseWrite()
	got, err := io.ReadAll(conn)
	if err != nil || string(got) != msg {
		t.Fatalf("echo via %s: %q, %v", target, got, err)
	}
}

// TestCircuitsComeAndGo opens many circuits, concurrent and sequential,
// through a device that then leaves; every goroutine must be gone at the end.
func TestCircuitsComeAndGo(t *testing.T) {
	devKey, opKey := newSigner(t), newSigner(t)
	ts := startServer(t, []string{
		authLine(`access="listen",hostname="dev42",alias="cam"`, devKey),
		authLine(`access="initiate"`, opKey),
	}, nil)
	dev := ts.dial(t, "anything", devKey)
	ports, devDone := echoDevice(t, dev, 22, 0)
	port := ports[1]
	if port < firstAllocatedPort {
		t.Fatalf("allocated port %d", port)
	}
	op := ts.dial(t, "alice", opKey)

	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			roundTrip(t, op, "DEV42:22", fmt.Sprintf("circuit %d", i))
		}()
	}
	wg.Wait()
	roundTrip(t, op, "cam:22", "by alias")
	roundTrip(t, op, fmt.Sprintf("dev42:%d", port), "allocated port")

	dev.Close()
	<-devDone
	eventually(t, 5*time.Second, func() bool {
		info, _ := ts.srv.cfg.Board.Lookup("dev42")
		return !info.Connected
	}, "the device stayed on the board after it left")
	_, err := op.Dial("tcp", "dev42:22")
	var oce *ssh.OpenChannelError
	if !errors.As(err, &oce) || !strings.Contains(oce.Message, `device "dev42" is offline (last seen `) {
		t.Fatalf("dial after the device left: %v", err)
	}
}

const firstAllocatedPort = 49152

// TestRefusals checks the sentence an operator reads for each refusal.
func TestRefusals(t *testing.T) {
	devKey, opKey, narrowKey, listenOnly := newSigner(t), newSigner(t), newSigner(t), newSigner(t)
	ts := startServer(t, []string{
		authLine(`access="listen",hostname="dev42"`, devKey),
		authLine(`access="listen",hostname="sleeper"`, listenOnly),
		authLine(`access="initiate"`, opKey),
		authLine(`access="initiate",permitopen="lab-*:22"`, narrowKey),
	}, func(c *Config) { c.Domain = "example.test" })
	_, _ = echoDevice(t, ts.dial(t, "x", devKey), 22)
	op := ts.dial(t, "alice", opKey)
	narrow := ts.dial(t, "bob", narrowKey)
	dev := ts.dial(t, "x", listenOnly)

	for _, tc := range []struct {
		client *ssh.Client
		target string
		want   string
	}{
		{op, "nosuch:22", `switchboard: no device named "nosuch"`},
		{op, "sleeper:22", `switchboard: device "sleeper" is offline (never seen)`},
		{op, "dev42:80", `switchboard: device "dev42" does not expose port 80 (it exposes 22)`},
		{narrow, "dev42:22", `switchboard: your key may not reach "dev42:22"`},
		{dev, "dev42:22", `switchboard: your key may not reach "dev42:22"`},
		{op, "bad name!:22", `switchboard: no device named "bad name!"`},
	} {
		_, err := tc.client.Dial("tcp", tc.target)
		var oce *ssh.OpenChannelError
		if !errors.As(err, &oce) || oce.Message != tc.want {
			t.Errorf("dial %s: got %v, want %q", tc.target, err, tc.want)
		}
	}
	roundTrip(t, op, "dev42.example.test:22", "with the domain")
}

// TestHostileRequests sends malformed and unknown requests: each is refused
// and the connection keeps working.
func TestHostileRequests(t *testing.T) {
	devKey, opKey := newSigner(t), newSigner(t)
	ts := startServer(t, []string{
		authLine(`access="listen",access="initiate",hostname="both"`, devKey),
		authLine(`access="initiate"`, opKey),
	}, nil)
	c := ts.dial(t, "x", devKey)
	for _, req := range []struct {
		name    string
		payload []byte
	}{
		{"tcpip-forward", []byte{0, 0, 0, 9, 'a'}},
		{"tcpip-forward", ssh.Marshal(tcpipForwardRequest{BindAddr: "", BindPort: 70000})},
		{"cancel-tcpip-forward", nil},
		{"streamlocal-forward@openssh.com", ssh.Marshal(struct{ Path string }{"/tmp/x"})},
		{"no-such-request", nil},
	} {
		ok, _, err := c.SendRequest(req.name, true, req.payload)
		if err != nil || ok {
			t.Errorf("%s %x: ok=%v err=%v, want a refusal", req.name, req.payload, ok, err)
		}
	}
	for _, ch := range []struct {
		typ   string
		extra []byte
	}{
		{"direct-tcpip", []byte("junk")},
		{"direct-tcpip", ssh.Marshal(directTCPIPRequest{Host: "both", Port: 0})},
		{"x11", nil},
		{"direct-streamlocal@openssh.com", ssh.Marshal(struct{ Path string }{"/run/x"})},
	} {
		if _, _, err := c.OpenChannel(ch.typ, ch.extra); !errors.As(err, new(*ssh.OpenChannelError)) {
			t.Errorf("channel %s: %v, want a rejection", ch.typ, err)
		}
	}
	_, _ = echoDevice(t, c, 22)
	roundTrip(t, ts.dial(t, "op", opKey), "both:22", "still works")
}

// TestTakeover: the same key takes its name back and hangs up the old
// connection; another key is refused.
func TestTakeover(t *testing.T) {
	devKey, otherKey := newSigner(t), newSigner(t)
	ts := startServer(t, []string{
		authLine(`access="listen"`, devKey),
		authLine(`access="listen"`, otherKey),
	}, nil)
	first := ts.dial(t, "dev7", devKey)
	_, firstDone := echoDevice(t, first, 22)
	second := ts.dial(t, "dev7", devKey)
	_, _ = echoDevice(t, second, 22)
	select {
	case <-firstDone:
	case <-time.After(5 * time.Second):
		t.Fatal("the displaced connection was not closed")
	}
	other := ts.dial(t, "dev7", otherKey)
	ok, _, err := other.SendRequest("tcpip-forward", true, ssh.Marshal(tcpipForwardRequest{BindPort: 22}))
	if err != nil || ok {
		t.Fatalf("another key claimed a held name: ok=%v err=%v", ok, err)
	}
}

// TestKeepaliveDropsDeadClient: a client that stops answering is dropped
// and its device leaves the board.
func TestKeepaliveDropsDeadClient(t *testing.T) {
	devKey := newSigner(t)
	b := board.New(nil)
	ts := startServer(t, []string{authLine(`access="listen"`, devKey)}, func(c *Config) {
		c.Board = b
		c.KeepaliveInterval = 50 * time.Millisecond
		c.KeepaliveCountMax = 2
	})
	// A raw connection whose reader we stop: keepalives go unanswered.
	nc, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	stall := &stallConn{Conn: nc}
	sc, chans, reqs, err := ssh.NewClientConn(stall, ts.addr, &ssh.ClientConfig{
		User: "sleepy", Auth: []ssh.AuthMethod{ssh.PublicKeys(devKey)}, HostKeyCallback: ssh.FixedHostKey(ts.host),
	})
	if err != nil {
		t.Fatal(err)
	}
	go ssh.DiscardRequests(reqs)
	go func() {
		for nc := range chans {
			nc.Reject(ssh.Prohibited, "")
		}
	}()
	if ok, _, err := sc.SendRequest("tcpip-forward", true, ssh.Marshal(tcpipForwardRequest{BindPort: 22})); !ok || err != nil {
		t.Fatalf("forward: %v %v", ok, err)
	}
	stall.stop()
	sc.Wait()
	// The client sees the hang-up a moment before the server's handler
	// detaches the device: await that, bounded.
	eventually(t, 5*time.Second, func() bool {
		info, _ := b.Lookup("sleepy")
		return !info.Connected
	}, "device still connected after its link died")
}

func eventually(t testing.TB, within time.Duration, cond func() bool, msg string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal(msg)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// stallConn stops delivering reads after stop, like a frozen peer.
type stallConn struct {
	net.Conn
	mu   sync.Mutex
	dead bool
}

func (s *stallConn) stop() {
	s.mu.Lock()
	s.dead = true
	s.mu.Unlock()
}

func (s *stallConn) Read(p []byte) (int, error) {
	n, err := s.Conn.Read(p)
	s.mu.Lock()
	dead := s.dead
	s.mu.Unlock()
	if dead {
		// Swallow what arrives until the server hangs up.
		for err == nil {
			_, err = s.Conn.Read(p)
		}
		return 0, err
	}
	return n, err
}

// TestHandshakeLimits: a silent connection is cut after the handshake
// timeout, and a source over its unauthenticated limit is refused at once.
func TestHandshakeLimits(t *testing.T) {
	ts := startServer(t, nil, func(c *Config) {
		c.HandshakeTimeout = 300 * time.Millisecond
		c.MaxUnauthPerSource = 2
	})
	var silent []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", ts.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		silent = append(silent, c)
		// Reading the server's banner proves it counted this connection.
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 64)); err != nil {
			t.Fatalf("no banner: %v", err)
		}
	}
	third, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer third.Close()
	third.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := third.Read(make([]byte, 64)); err == nil {
		t.Fatalf("third unauthenticated connection got %d bytes; want it closed", n)
	}
	for _, c := range silent {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadAll(c); err != nil && !errors.Is(err, io.EOF) && !strings.Contains(err.Error(), "reset") {
			t.Fatalf("silent connection: %v, want the server to close it", err)
		}
	}
}

// TestChannelLimit: channels beyond the per-connection limit are refused
// with a sentence, and a slot frees when a channel closes.
func TestChannelLimit(t *testing.T) {
	devKey, opKey := newSigner(t), newSigner(t)
	ts := startServer(t, []string{
		authLine(`access="listen",hostname="dev1"`, devKey),
		authLine(`access="initiate"`, opKey),
	}, func(c *Config) { c.MaxChannelsPerConn = 2 })
	_, _ = echoDevice(t, ts.dial(t, "x", devKey), 22)
	op := ts.dial(t, "op", opKey)
	a, err := op.Dial("tcp", "dev1:22")
	if err != nil {
		t.Fatal(err)
	}
	b, err := op.Dial("tcp", "dev1:22")
	if err != nil {
		t.Fatal(err)
	}
	var oce *ssh.OpenChannelError
	if _, err := op.Dial("tcp", "dev1:22"); !errors.As(err, &oce) || !strings.Contains(oce.Message, "too many channels") {
		t.Fatalf("third channel: %v, want a refusal", err)
	}
	a.Close()
	b.Close()
	eventually(t, 5*time.Second, func() bool {
		c, err := op.Dial("tcp", "dev1:22")
		if err == nil {
			c.Close()
		}
		return err == nil
	}, "no slot freed after channels closed")
}

// TestWedgedDeviceIsHungUp: a device that answers keepalives but never
// answers circuit opens gets refusals that say so, and after a few timeouts
// in a row the server hangs it up, freeing every pending open.
func TestWedgedDeviceIsHungUp(t *testing.T) {
	devKey, opKey := newSigner(t), newSigner(t)
	b := board.New(nil)
	ts := startServer(t, []string{
		authLine(`access="listen",hostname="wedged"`, devKey),
		authLine(`access="initiate"`, opKey),
	}, func(c *Config) {
		c.Board = b
		c.OpenTimeout = 100 * time.Millisecond
	})
	dev := ts.dial(t, "x", devKey)
	chans := dev.HandleChannelOpen("forwarded-tcpip")
	held := make(chan int)
	go func() { // take each open and never answer it
		var pending []ssh.NewChannel
		for nc := range chans {
			pending = append(pending, nc)
		}
		held <- len(pending)
	}()
	if ok, _, err := dev.SendRequest("tcpip-forward", true, ssh.Marshal(tcpipForwardRequest{BindPort: 22})); !ok || err != nil {
		t.Fatalf("forward: %v %v", ok, err)
	}
	op := ts.dial(t, "op", opKey)
	for i := range maxOpenTimeouts {
		_, err := op.Dial("tcp", "wedged:22")
		var oce *ssh.OpenChannelError
		if !errors.As(err, &oce) || !strings.Contains(oce.Message, `device "wedged" did not answer within 100ms`) {
			t.Fatalf("open %d: %v", i, err)
		}
	}
	if n := <-held; n != maxOpenTimeouts {
		t.Fatalf("device saw %d opens, want %d", n, maxOpenTimeouts)
	}
	eventually(t, 5*time.Second, func() bool {
		info, _ := b.Lookup("wedged")
		return !info.Connected
	}, "the wedged device is still registered")
}

// neverWaker wakes every name successfully, but no device ever comes.
type neverWaker struct{ woken chan struct{} }

func (w neverWaker) Wake(context.Context, string) error { close(w.woken); return nil }
func (neverWaker) State(context.Context, string) (board.WakeState, bool, error) {
	return board.WakeState{}, false, nil
}

// TestWaitingCircuitEndsWithItsConnection: an operator whose circuit waits
// for a woken device hangs up; the wait ends at once, so shutdown is quick.
func TestWaitingCircuitEndsWithItsConnection(t *testing.T) {
	opKey := newSigner(t)
	b := board.New(nil)
	w := neverWaker{woken: make(chan struct{})}
	b.SetWaker(w, time.Hour)
	ts := startServer(t, []string{authLine(`access="initiate"`, opKey)}, func(c *Config) { c.Board = b })
	op := ts.dial(t, "op", opKey)
	opened := make(chan error, 1)
	go func() {
		_, err := op.Dial("tcp", "sleeper:22")
		opened <- err
	}()
	<-w.woken // the circuit is now waiting for the device
	op.Close()
	<-opened
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- ts.srv.Shutdown(ctx) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("shutdown: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("shutdown still waiting after 5s: the abandoned circuit kept waiting for its device")
	}
}
