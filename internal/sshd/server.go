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
	"syscall"
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
	// one IP address.
	MaxUnauthPerSource int
	// OpenTimeout bounds how long a device may take to accept a circuit.
	OpenTimeout time.Duration
	// MaxChannelsPerConn bounds the channels one connection may have open
	// at once, so one key cannot exhaust the server's goroutines.
	MaxChannelsPerConn int
	// Version goes into the SSH identification string.
	Version string
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Defaults for the zero values of Config.
const (
	DefaultKeepaliveInterval  = 15 * time.Second
	DefaultKeepaliveCountMax  = 3
	DefaultHandshakeTimeout   = 30 * time.Second
	DefaultMaxUnauthPerSource = 10
	DefaultOpenTimeout        = 15 * time.Second
	DefaultMaxChannelsPerConn = 1024
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
	if c.Version == "" {
		c.Version = "dev"
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return nil
}

// Server accepts SSH connections and serves them until Shutdown.
type Server struct {
	cfg Config
	log *slog.Logger
	ssh *ssh.ServerConfig

	wg sync.WaitGroup // one per connection handler

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	unauth    map[netip.Addr]int
	circuits  int
	closing   bool
	drained   chan struct{} // closed when closing and no circuit is open
}

// New checks cfg and returns a server ready to Serve.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Server{
		cfg:       cfg,
		log:       cfg.Logger.With("component", "sshd"),
		listeners: map[net.Listener]struct{}{},
		conns:     map[*conn]struct{}{},
		unauth:    map[netip.Addr]int{},
		drained:   make(chan struct{}),
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
	// AES-GCM first: with AES-NI it costs about half the CPU per byte of
	// chacha20-poly1305 in Go. The client's order decides, so this matters
	// for clients that list both without a strong preference.
	sc.Ciphers = []string{
		"aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com",
		"aes128-ctr", "aes192-ctr", "aes256-ctr",
	}
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
			if closing {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) {
				// Out of descriptors or a transient failure: back off rather
				// than spin, and keep serving the connections we have.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("accept failed; backing off", "error", err, "backoff", backoff)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("sshd: accept: %w", err)
		}
		backoff = 0
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.handle(nc)
		}()
	}
}

// admit counts an unauthenticated connection from ip, refusing it when the
// source already has too many: a cheap defence against handshake floods.
func (s *Server) admit(ip netip.Addr) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing || s.unauth[ip] >= s.cfg.MaxUnauthPerSource {
		return false
	}
	s.unauth[ip]++
	return true
}

func (s *Server) authenticated(ip netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.unauth[ip]--; s.unauth[ip] <= 0 {
		delete(s.unauth, ip)
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

// circuitStarted reserves a circuit slot; it fails once shutdown has begun so
// that draining circuits is a finite wait.
func (s *Server) circuitStarted() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.circuits++
	return true
}

func (s *Server) circuitEnded() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.circuits--
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
