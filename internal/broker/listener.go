package broker

import (
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/mochi-mqtt/server/v2/listeners"
)

// connectTimeout bounds the TLS handshake and the CONNECT packet together;
// mochi itself waits for CONNECT forever.
const connectTimeout = 10 * time.Second

// listener is a mochi listener for TLS over TCP that, unlike mochi's own,
// bounds the handshake and the wait for CONNECT, tracks every connection
// so that Close ends them all (mochi closes only clients that have sent
// CONNECT, and then waits for the rest), and waits for its goroutines.
type listener struct {
	id      string
	ln      net.Listener
	tls     *tls.Config
	log     *slog.Logger
	timeout time.Duration // for the handshake and CONNECT

	mu      sync.Mutex
	closed  bool
	conns   map[net.Conn]struct{}
	done    chan struct{}  // closed by Close
	serving sync.WaitGroup // Serve
	connWG  sync.WaitGroup // serveConn
}

var _ listeners.Listener = (*listener)(nil)

func newListener(id string, ln net.Listener, cfg *tls.Config, log *slog.Logger, timeout time.Duration) *listener {
	return &listener{id: id, ln: ln, tls: cfg, log: log, timeout: timeout, conns: map[net.Conn]struct{}{}, done: make(chan struct{})}
}

func (l *listener) ID() string                  { return l.id }
func (l *listener) Address() string             { return l.ln.Addr().String() }
func (l *listener) Protocol() string            { return "mqtts" }
func (l *listener) Init(log *slog.Logger) error { return nil }

// Serve accepts connections until Close. mochi runs it in a goroutine of
// its own; Close waits for it.
func (l *listener) Serve(establish listeners.EstablishFn) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.serving.Add(1)
	l.mu.Unlock()
	defer l.serving.Done()

	var delay time.Duration
	for {
		raw, err := l.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors or the like: back off, as net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			l.log.Warn("accept failed", "error", err, "retry_in", delay)
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-l.done:
				t.Stop()
				return
			}
			continue
		}
		delay = 0
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			raw.Close()
			return
		}
		l.conns[raw] = struct{}{}
		l.connWG.Add(1)
		l.mu.Unlock()
		go l.serveConn(raw, establish)
	}
}

// serveConn runs one connection: the TLS handshake, then mochi's client
// until it ends.
func (l *listener) serveConn(raw net.Conn, establish listeners.EstablishFn) {
	defer l.connWG.Done()
	defer func() {
		l.mu.Lock()
		delete(l.conns, raw)
		l.mu.Unlock()
		raw.Close()
	}()
	// mochi replaces this deadline with the keepalive once CONNECT is in.
	_ = raw.SetDeadline(time.Now().Add(l.timeout))
	conn := tls.Server(raw, l.tls)
	if err := conn.Handshake(); err != nil {
		select {
		case <-l.done: // closed by Close
		default:
			l.log.Info("tls handshake failed", "remote", raw.RemoteAddr().String(), "error", err)
		}
		return
	}
	if err := establish(l.id, conn); err != nil {
		l.log.Debug("client ended", "remote", raw.RemoteAddr().String(), "error", err)
	}
}

// Close stops accepting, asks mochi to disconnect its clients (a DISCONNECT
// each, given a second to leave), closes every connection and waits for
// their goroutines. (Waiting here matters: mochi's Close then waits for its
// clients with a WaitGroup that each client adds itself to, which must not
// race with a connection still starting.)
func (l *listener) Close(closeClients listeners.CloseFn) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.closed = true
	close(l.done)
	conns := make([]net.Conn, 0, len(l.conns))
	for c := range l.conns {
		conns = append(conns, c)
	}
	l.mu.Unlock()

	l.ln.Close()
	deadline := time.Now().Add(time.Second)
	for _, c := range conns {
		_ = c.SetWriteDeadline(deadline)
	}
	closeClients(l.id)
	for _, c := range conns {
		c.Close()
	}
	l.connWG.Wait()
}

// wait returns once Serve has ended.
func (l *listener) wait() { l.serving.Wait() }
