// Package sshd is switchboard's SSH front end: it authenticates keys through
// the policy, registers devices' remote forwards on the board as virtual
// ports, joins operators' direct-tcpip channels to devices as circuits, and
// answers operators' session commands.
package sshd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/switchboard-dev/switchboard/internal/board"
	"github.com/switchboard-dev/switchboard/internal/policy"
)

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("sshd: server closed")

// Config is everything the SSH front end needs. HostKeys, Policy and Board
// are required; zero durations and limits take the defaults below.
type Config struct {
	HostKeys []ssh.Signer
	// Policy returns the current policy; it is called on every decision so a
	// reload applies at once.
	Policy func() *policy.Policy
	Board  *board.Board
	Logger *slog.Logger
	// Domain lets operators write NAME.Domain for NAME.
	Domain string
	// KeepaliveInterval and KeepaliveCountMax bound how long a dead client
	// stays registered: about Interval × (CountMax+1).
	KeepaliveInterval time.Duration
	KeepaliveCountMax int
	// HandshakeTimeout cuts connections that have not authenticated in time.
	HandshakeTimeout time.Duration
	// MaxUnauthPerSource limits concurrent unauthenticated connections from
	// one source: an IPv4 address, or an IPv6 /64 (one subscriber's prefix).
	MaxUnauthPerSource int
	// MaxUnauth limits unauthenticated connections in all, so a flood from
	// many sources cannot use up the descriptors devices need.
	MaxUnauth int
	// MaxCircuits and MaxCircuitsPerKey bound open circuits. A circuit whose
	// operator stops reading holds up to one channel window (2 MiB in
	// x/crypto/ssh) of the device's data in the server, so these bound
	// memory too.
	MaxCircuits       int
	MaxCircuitsPerKey int
	// MaxPendingOpens bounds circuits waiting for one device to answer.
	MaxPendingOpens int
	// Ciphers, if set, replaces the default cipher list. The client's order
	// decides among the ciphers both sides support.
	Ciphers []string
	// OpenTimeout bounds how long a device may take to accept a circuit.
	OpenTimeout time.Duration
	// MaxChannelsPerConn bounds the channels one connection may have open
	// at once, so one key cannot exhaust the server's goroutines.
	MaxChannelsPerConn int
	// Version goes into the SSH identification string.
	Version string
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Observer is told of handshakes, denials, devices and circuits; nil
	// counts nothing.
	Observer Observer
}

// Defaults for the zero values of Config.
const (
	DefaultKeepaliveInterval  = 15 * time.Second
	DefaultKeepaliveCountMax  = 3
	DefaultHandshakeTimeout   = 30 * time.Second
	DefaultMaxUnauthPerSource = 10
	DefaultOpenTimeout        = 15 * time.Second
	DefaultMaxChannelsPerConn = 1024
	DefaultMaxUnauth          = 512
	DefaultMaxCircuits        = 4096
	DefaultMaxCircuitsPerKey  = 256
	DefaultMaxPendingOpens    = 128
)

// Validate fills defaults and reports what is missing.
func (c *Config) Validate() error {
	switch {
	case len(c.HostKeys) == 0:
		return errors.New("sshd: no host key")
	case c.Policy == nil:
		return errors.New("sshd: no policy")
	case c.Board == nil:
		return errors.New("sshd: no board")
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.KeepaliveInterval <= 0 {
		c.KeepaliveInterval = DefaultKeepaliveInterval
	}
	if c.KeepaliveCountMax <= 0 {
		c.KeepaliveCountMax = DefaultKeepaliveCountMax
	}
	if c.HandshakeTimeout <= 0 {
		c.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if c.MaxUnauthPerSource <= 0 {
		c.MaxUnauthPerSource = DefaultMaxUnauthPerSource
	}
	if c.OpenTimeout <= 0 {
		c.OpenTimeout = DefaultOpenTimeout
	}
	if c.MaxChannelsPerConn <= 0 {
		c.MaxChannelsPerConn = DefaultMaxChannelsPerConn
	}
	if c.MaxUnauth <= 0 {
		c.MaxUnauth = DefaultMaxUnauth
	}
	if c.MaxCircuits <= 0 {
		c.MaxCircuits = DefaultMaxCircuits
	}
	if c.MaxCircuitsPerKey <= 0 {
		c.MaxCircuitsPerKey = DefaultMaxCircuitsPerKey
	}
	if c.MaxPendingOpens <= 0 {
		c.MaxPendingOpens = DefaultMaxPendingOpens
	}
	if c.Version == "" {
		c.Version = "dev"
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Observer == nil {
		c.Observer = nopObserver{}
	}
	return nil
}

// Server accepts SSH connections and serves them until Shutdown.
type Server struct {
	cfg Config
	log *slog.Logger
	ssh *ssh.ServerConfig

	wg sync.WaitGroup // one per connection handler

	mu         sync.Mutex
	listeners  map[net.Listener]struct{}
	pending    map[net.Conn]struct{} // not yet authenticated
	conns      map[*conn]struct{}
	unauth     map[netip.Prefix]int // pending connections by source
	circuits   int
	keyCircuit map[string]int // open circuits by operator key fingerprint
	closing    bool
	drained    chan struct{} // closed when closing and no circuit is open
	refused    refusalLog
}

// refusalLog rate-limits the log of refused connections: a flood must not
// turn into a flood of log lines.
type refusalLog struct {
	last       time.Time
	suppressed int
}

// New checks cfg and returns a server ready to Serve.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Server{
		cfg:        cfg,
		log:        cfg.Logger.With("component", "sshd"),
		listeners:  map[net.Listener]struct{}{},
		pending:    map[net.Conn]struct{}{},
		conns:      map[*conn]struct{}{},
		unauth:     map[netip.Prefix]int{},
		keyCircuit: map[string]int{},
		drained:    make(chan struct{}),
	}
	s.ssh = s.serverConfig()
	return s, nil
}

// serverConfig offers public keys only: no password or keyboard-interactive
// method is ever advertised.
func (s *Server) serverConfig() *ssh.ServerConfig {
	sc := &ssh.ServerConfig{
		PublicKeyCallback:         s.checkKey,
		VerifiedPublicKeyCallback: s.keyVerified,
		ServerVersion:             "SSH-2.0-switchboard_" + s.cfg.Version,
	}
	// The client's order decides (RFC 4253 section 7.1): stock OpenSSH picks
	// chacha20-poly1305. Operators who want AES-GCM's lower CPU cost on AES-NI
	// servers can leave chacha20 out with --ciphers.
	sc.Ciphers = s.cfg.Ciphers
	for _, k := range s.cfg.HostKeys {
		sc.AddHostKey(k)
	}
	return sc
}

// Serve accepts connections on ln until Shutdown or a fatal accept error.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	s.log.Info("listening", "addr", ln.Addr().String())

	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closing := s.closing
			s.mu.Unlock()
			if closing || errors.Is(err, net.ErrClosed) {
				return ErrServerClosed
			}
			// Out of descriptors or memory, or a transient failure: back off
			// rather than spin, and keep serving the connections we have.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			if backoff < time.Second {
				s.log.Warn("accept failed; backing off", "error", err.Error(), "backoff", backoff.String())
			}
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		if !s.startHandler(nc) {
			nc.Close()
		}
	}
}

// startHandler runs handle for nc unless shutdown has begun; the WaitGroup
// is added to under the lock, so Shutdown's Wait never races an Add.
func (s *Server) startHandler(nc net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.handle(nc)
	}()
	return true
}

// source is what pre-auth limits count by: one IPv4 address, or an IPv6
// /64, since one subscriber gets a whole /64.
func source(ip netip.Addr) netip.Prefix {
	bits := 32
	if ip.Is6() {
		bits = 64
	}
	p, _ := ip.Prefix(bits)
	return p
}

// admit counts an unauthenticated connection, refusing it when its source
// or the server as a whole already has too many: a cheap defence against
// handshake floods that keeps descriptors for devices.
func (s *Server) admit(nc net.Conn, ip netip.Addr) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	src := source(ip)
	var why string
	switch {
	case s.closing:
		return false
	case len(s.pending) >= s.cfg.MaxUnauth:
		why = "too many unauthenticated connections in all"
	case s.unauth[src] >= s.cfg.MaxUnauthPerSource:
		why = "too many unauthenticated connections from this source"
	default:
		s.unauth[src]++
		s.pending[nc] = struct{}{}
		return true
	}
	if now := time.Now(); now.Sub(s.refused.last) >= time.Second {
		s.log.Warn("connection refused", "source", ip.String(), "reason", why,
			"also_refused_since_last_log", s.refused.suppressed)
		s.refused = refusalLog{last: now}
	} else {
		s.refused.suppressed++
	}
	return false
}

func (s *Server) authenticated(nc net.Conn, ip netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	src := source(ip)
	delete(s.pending, nc)
	if s.unauth[src]--; s.unauth[src] <= 0 {
		delete(s.unauth, src)
	}
}

func (s *Server) track(c *conn, on bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if on {
		if s.closing {
			return false
		}
		s.conns[c] = struct{}{}
	} else {
		delete(s.conns, c)
	}
	return true
}

// circuitStarted reserves a circuit slot for the operator key fp, or says
// why not. It fails once shutdown has begun, so draining is a finite wait.
func (s *Server) circuitStarted(fp string) (ok bool, why string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closing:
		return false, "the server is shutting down; try again in a moment"
	case s.circuits >= s.cfg.MaxCircuits:
		return false, fmt.Sprintf("the server is at its limit of %d open circuits", s.cfg.MaxCircuits)
	case s.keyCircuit[fp] >= s.cfg.MaxCircuitsPerKey:
		return false, fmt.Sprintf("your key already has %d circuits open, its limit", s.cfg.MaxCircuitsPerKey)
	}
	s.circuits++
	s.keyCircuit[fp]++
	return true, ""
}

func (s *Server) circuitEnded(fp string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.circuits--
	if s.keyCircuit[fp]--; s.keyCircuit[fp] <= 0 {
		delete(s.keyCircuit, fp)
	}
	if s.closing && s.circuits == 0 {
		close(s.drained)
	}
}

// Shutdown stops accepting, refuses new circuits, waits for open circuits
// to end until ctx is done, then closes every connection and waits for their
// handlers to return.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if !s.closing {
		s.closing = true
		if s.circuits == 0 {
			close(s.drained)
		}
	}
	for ln := range s.listeners {
		ln.Close()
	}
	open := s.circuits
	s.mu.Unlock()

	s.log.Info("shutdown", "open_circuits", open)
	var err error
	select {
	case <-s.drained:
	case <-ctx.Done():
		err = fmt.Errorf("sshd: shutdown: circuits still open: %w", ctx.Err())
	}
	s.mu.Lock()
	for nc := range s.pending {
		nc.Close() // a handshake in progress would otherwise hold Wait up
	}
	for c := range s.conns {
		c.hangup("the server is shutting down")
	}
	s.mu.Unlock()
	s.wg.Wait()
	return err
}

// Revalidate re-checks live devices against a new policy and hangs up those
// whose key may no longer listen under the names they hold. Operators are
// re-checked on each circuit, so nothing is needed for them here.
func (s *Server) Revalidate(p *policy.Policy) {
	s.mu.Lock()
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		dev := c.registered()
		if dev == nil {
			continue
		}
		names, err := c.deviceNames(p)
		if err == nil && !slices.Equal(names, dev.Names()) {
			err = errors.New("its names changed")
		}
		if err != nil {
			c.devLog.Warn("device revoked by authorized_keys reload", "device", dev.Name(), "reason", err.Error())
			c.hangup("revoked by an authorized_keys reload: " + err.Error())
		}
	}
}
