// Package agent is the device side of switchboard: it holds a reverse tunnel
// to the server (dialling out, pinning the server's host key, registering
// virtual ports), serves each circuit by dialling a local target, and
// reconnects forever with jittered backoff. It never imports the server's
// packages.
package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/switchboard-dev/switchboard/internal/circuit"
	"github.com/switchboard-dev/switchboard/internal/keepalive"
)

// Agent keeps one device connected to its server. Create it with New and
// call Run once.
type Agent struct {
	log    *slog.Logger
	dialer net.Dialer
	reload chan Config

	mu  sync.Mutex // guards cfg and creds, replaced by Reload
	cfg Config
	crd credentials

	od onDemandState
}

// credentials are what the config's files hold, loaded once per (re)load.
type credentials struct {
	signer   ssh.Signer
	hostKeys ssh.HostKeyCallback
	algos    []string // host key algorithms known_hosts has for the server
}

// New checks cfg and loads the identity and known_hosts files.
func New(cfg Config, logger *slog.Logger) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	crd, err := loadCredentials(cfg)
	if err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Agent{
		log:    logger.With("component", "agent"),
		reload: make(chan Config, 1),
		cfg:    cfg,
		crd:    crd,
	}, nil
}

func loadCredentials(cfg Config) (credentials, error) {
	b, err := os.ReadFile(cfg.Identity)
	if err != nil {
		return credentials{}, fmt.Errorf("agent: identity: %w", err)
	}
	signer, err := ssh.ParsePrivateKey(b)
	if err != nil {
		return credentials{}, fmt.Errorf("agent: identity %s: %w", cfg.Identity, err)
	}
	cb, err := knownhosts.New(cfg.KnownHosts)
	if err != nil {
		return credentials{}, fmt.Errorf("agent: known_hosts: %w", err)
	}
	algos := knownAlgorithms(cb, cfg.Server)
	if len(algos) == 0 {
		return credentials{}, fmt.Errorf("agent: %s has no host key for %s: the server's key must be pinned (switchboard enroll writes it)",
			cfg.KnownHosts, knownhosts.Normalize(cfg.Server))
	}
	return credentials{signer: signer, hostKeys: cb, algos: algos}, nil
}

// knownAlgorithms asks the known_hosts callback which key types it holds for
// server, by offering a key it cannot know. Negotiating only those avoids a
// false "mismatch" when the server also has a key of another type.
func knownAlgorithms(cb ssh.HostKeyCallback, server string) []string {
	addr, err := net.ResolveTCPAddr("tcp", server)
	if err != nil {
		addr = &net.TCPAddr{}
	}
	var ke *knownhosts.KeyError
	if err := cb(server, addr, probeKey{}); !errors.As(err, &ke) {
		return nil
	}
	var algos []string
	for _, k := range ke.Want {
		switch t := k.Key.Type(); t {
		case ssh.KeyAlgoRSA:
			algos = append(algos, ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA)
		default:
			algos = append(algos, t)
		}
	}
	return slices.Compact(algos)
}

// probeKey is a public key no known_hosts file can contain.
type probeKey struct{}

func (probeKey) Type() string                        { return "switchboard-probe" }
func (probeKey) Marshal() []byte                     { return []byte("switchboard-probe") }
func (probeKey) Verify([]byte, *ssh.Signature) error { return errors.New("probe") }

// Reload replaces the configuration. If only the forwards changed, the live
// connection keeps its circuits and registers or cancels ports; otherwise
// the agent reconnects at once with the new settings.
func (a *Agent) Reload(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	crd, err := loadCredentials(cfg)
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.cfg, a.crd = cfg, crd
	a.mu.Unlock()
	select {
	case <-a.reload: // replace a reload not yet picked up
	default:
	}
	a.reload <- cfg
	return nil
}

func (a *Agent) current() (Config, credentials) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cfg, a.crd
}

// errReconnect ends a session so that the next one starts without waiting.
var errReconnect = errors.New("agent: configuration changed")

// Run keeps the device connected until ctx ends, then closes the connection
// and its circuits and returns nil.
func (a *Agent) Run(ctx context.Context) error {
	cfg, _ := a.current()
	bo := Backoff{Min: cfg.BackoffMin, Max: cfg.BackoffMax}
	for attempt := 1; ; attempt++ {
		cfg, _ = a.current()
		bo.Min, bo.Max = cfg.BackoffMin, cfg.BackoffMax
		a.log.Info("connecting", "server", cfg.Server, "attempt", attempt)
		up, err := a.session(ctx, sessionOpts{})
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, errReconnect) {
			bo.Reset()
			continue
		}
		// A connection that stayed up through a few keepalives was healthy:
		// what ended it is news, not a continuing failure.
		if up > 3*cfg.KeepaliveInterval {
			bo.Reset()
		}
		wait := bo.Next()
		level := slog.LevelWarn
		var mismatch *knownhosts.KeyError
		if errors.As(err, &mismatch) {
			level = slog.LevelError
		}
		a.log.Log(ctx, level, "waiting", "reason", err.Error(), "backoff", wait.Round(time.Millisecond).String(), "attempt", attempt)
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil
		case <-timer.C:
		case <-a.reload:
			// New settings deserve a prompt try, not the old backoff.
			timer.Stop()
			bo.Reset()
		}
	}
}

// sessionOpts adapts one session: an on-demand one dials the server named
// in the wake-up and hangs up when idle.
type sessionOpts struct {
	server string       // dial this instead of the configured server
	crd    *credentials // with these known host keys
	// idle hangs up after this long without a circuit; maxLen after this
	// long regardless, in case a circuit leaks. Zero: never.
	idle, maxLen time.Duration
	// registered is called once the forwards are registered.
	registered func()
}

// errIdle ends an on-demand session that has nothing left to do.
var errIdle = errors.New("agent: idle")

// session dials, registers the forwards and serves circuits until the
// connection dies, ctx ends, a reload needs a new connection, or (on
// demand) it is idle. It returns how long the connection was up.
func (a *Agent) session(ctx context.Context, o sessionOpts) (time.Duration, error) {
	cfg, crd := a.current()
	if o.server != "" {
		cfg.Server, crd = o.server, *o.crd
	}
	dctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
	nc, err := a.dialer.DialContext(dctx, "tcp", cfg.Server)
	cancel()
	if err != nil {
		return 0, fmt.Errorf("dial %s: %w", cfg.Server, err)
	}
	// The SSH handshake has no timeout of its own.
	nc.SetDeadline(time.Now().Add(cfg.ConnectTimeout))
	var hostKey string
	sc, chans, reqs, err := ssh.NewClientConn(nc, cfg.Server, &ssh.ClientConfig{
		User: cfg.Name,
		Auth: []ssh.AuthMethod{ssh.PublicKeys(crd.signer)},
		HostKeyCallback: func(host string, remote net.Addr, key ssh.PublicKey) error {
			hostKey = ssh.FingerprintSHA256(key)
			return crd.hostKeys(host, remote, key)
		},
		HostKeyAlgorithms: crd.algos,
		ClientVersion:     "SSH-2.0-switchboard-agent_" + cfg.Version,
	})
	if err != nil {
		nc.Close()
		var ke *knownhosts.KeyError
		if errors.As(err, &ke) && len(ke.Want) > 0 {
			a.log.Error("server host key mismatch", "server", cfg.Server, "known_hosts", cfg.KnownHosts,
				"presented", hostKey, "error", "the server presented a key that is not the one pinned; refusing to connect")
			return 0, fmt.Errorf("server host key mismatch (pinned in %s): %w", cfg.KnownHosts, err)
		}
		return 0, fmt.Errorf("ssh handshake with %s: %w", cfg.Server, err)
	}
	nc.SetDeadline(time.Time{})
	start := time.Now()
	a.log.Info("connected", "server", cfg.Server, "host_key", hostKey)

	s := &link{sc: sc, log: a.log, forwards: map[uint32]Forward{}}
	go ssh.DiscardRequests(reqs) // server keepalives: any reply proves us alive
	var (
		circuits sync.WaitGroup
		active   atomic.Int32
		changed  = make(chan struct{}, 1) // a circuit started or ended
	)
	poke := func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	chansDone := make(chan struct{})
	go func() {
		defer close(chansDone)
		for nc := range chans {
			if nc.ChannelType() != "forwarded-tcpip" {
				nc.Reject(ssh.UnknownChannelType, "switchboard agent: only forwarded-tcpip channels")
				continue
			}
			circuits.Add(1)
			active.Add(1)
			poke()
			go func() {
				defer func() { active.Add(-1); poke(); circuits.Done() }()
				s.serveCircuit(nc, cfg.ConnectTimeout)
			}()
		}
	}()
	// A half-dead link is noticed and the device reconnects, taking its name
	// back on the server.
	var silent atomic.Bool
	stopKeepalive := keepalive.Start(sc, cfg.KeepaliveInterval, cfg.KeepaliveCount, func() {
		silent.Store(true)
		sc.Close()
	})
	defer func() {
		stopKeepalive()
		sc.Close()
		<-chansDone
		circuits.Wait()
	}()

	if err := s.apply(cfg.Forwards); err != nil {
		return time.Since(start), err
	}
	if o.registered != nil {
		o.registered()
	}
	dead := make(chan error, 1)
	go func() { dead <- sc.Wait() }()
	idle := stoppedTimer()
	if o.idle > 0 {
		idle.Reset(o.idle)
	}
	defer idle.Stop()
	var maxLen <-chan time.Time
	if o.maxLen > 0 {
		t := time.NewTimer(o.maxLen)
		defer t.Stop()
		maxLen = t.C
	}
	hangUp := func(why string, err error) (time.Duration, error) {
		a.log.Info("hanging up", "reason", why)
		sc.Close()
		<-dead
		return time.Since(start), err
	}
	for {
		select {
		case <-changed:
			if o.idle > 0 {
				idle.Stop()
				if active.Load() == 0 {
					idle.Reset(o.idle)
				}
			}
		case <-idle.C:
			if active.Load() == 0 {
				return hangUp(fmt.Sprintf("no circuit for %s", o.idle), errIdle)
			}
		case <-maxLen:
			return hangUp(fmt.Sprintf("the session reached its maximum length, %s", o.maxLen), errIdle)
		case <-ctx.Done():
			a.log.Info("stopping", "server", cfg.Server)
			sc.Close()
			<-dead
			return time.Since(start), ctx.Err()
		case err := <-dead:
			reason := "the server closed the connection"
			switch {
			case silent.Load():
				reason = fmt.Sprintf("keepalive timeout: no reply from the server for %s",
					cfg.KeepaliveInterval*time.Duration(cfg.KeepaliveCount))
			case err != nil && !isEOF(err):
				reason = err.Error()
			}
			a.log.Warn("disconnected", "reason", reason, "up", time.Since(start).Round(time.Second).String())
			return time.Since(start), errors.New(reason)
		case next := <-a.reload:
			a.log.Info("reloaded")
			if !cfg.sameLink(next) {
				sc.Close()
				<-dead
				return time.Since(start), errReconnect
			}
			cfg = next
			if err := s.apply(next.Forwards); err != nil {
				sc.Close()
				<-dead
				return time.Since(start), err
			}
		}
	}
}

// stoppedTimer returns a timer that will not fire until Reset.
func stoppedTimer() *time.Timer {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return t
}

func isEOF(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed)
}

// link is one live connection to the server and the forwards registered on
// it.
type link struct {
	sc  ssh.Conn
	log *slog.Logger

	mu       sync.Mutex
	forwards map[uint32]Forward // registered virtual port → local target
}

// tcpipForward is the payload of "tcpip-forward" and "cancel-tcpip-forward"
// (RFC 4254 section 7.1).
type tcpipForward struct {
	BindAddr string
	BindPort uint32
}

// forwardedTCPIP is the extra data of a "forwarded-tcpip" channel (RFC 4254
// section 7.2).
type forwardedTCPIP struct {
	Addr       string
	Port       uint32
	OriginAddr string
	OriginPort uint32
}

// bindAddr is what the agent asks to bind: like OpenSSH's default, it means
// "the device itself" to switchboard.
const bindAddr = "localhost"

// apply makes the registered forwards equal want: cancels those no longer
// wanted, registers new ones, and retargets changed ones in place. It fails
// only if, afterwards, no forward at all is registered.
func (l *link) apply(want []Forward) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	wanted := map[uint32]Forward{}
	for _, f := range want {
		wanted[f.VPort] = f
	}
	for p := range l.forwards {
		if _, ok := wanted[p]; !ok {
			l.sc.SendRequest("cancel-tcpip-forward", true, ssh.Marshal(tcpipForward{bindAddr, p}))
			delete(l.forwards, p)
			l.log.Info("forward cancelled", "vport", p)
		}
	}
	for _, f := range want {
		if _, ok := l.forwards[f.VPort]; ok {
			l.forwards[f.VPort] = f
			continue
		}
		ok, _, err := l.sc.SendRequest("tcpip-forward", true, ssh.Marshal(tcpipForward{bindAddr, f.VPort}))
		switch {
		case err != nil:
			return fmt.Errorf("tcpip-forward %d: %w", f.VPort, err)
		case !ok:
			l.log.Error("forward refused", "vport", f.VPort, "target", f.Target,
				"reason", "the server refused it; see its log (key without access=\"listen\", name held by another key, or permitlisten)")
		default:
			l.forwards[f.VPort] = f
			l.log.Info("forward registered", "vport", f.VPort, "target", f.Target)
		}
	}
	if len(l.forwards) == 0 {
		return errors.New("the server refused every forward")
	}
	return nil
}

// serveCircuit dials the local target for one forwarded channel and joins
// them. A target that refuses gets the channel refused with the reason, which
// the operator reads.
func (l *link) serveCircuit(nc ssh.NewChannel, timeout time.Duration) {
	var req forwardedTCPIP
	if err := ssh.Unmarshal(nc.ExtraData(), &req); err != nil {
		nc.Reject(ssh.ConnectionFailed, "malformed forwarded-tcpip request")
		return
	}
	l.mu.Lock()
	f, ok := l.forwards[req.Port]
	l.mu.Unlock()
	log := l.log.With("vport", req.Port, "origin", fmt.Sprintf("%s:%d", req.OriginAddr, req.OriginPort))
	if !ok {
		log.Warn("circuit", "result", "refused", "error", "port not forwarded")
		nc.Reject(ssh.Prohibited, fmt.Sprintf("port %d is not forwarded by this device", req.Port))
		return
	}
	log = log.With("target", f.Target)
	target, err := net.DialTimeout("tcp", f.Target, timeout)
	if err != nil {
		log.Warn("circuit", "result", "refused", "error", err.Error())
		nc.Reject(ssh.ConnectionFailed, dialProblem(err))
		return
	}
	ch, reqs, err := nc.Accept()
	if err != nil {
		target.Close()
		return
	}
	go ssh.DiscardRequests(reqs)
	st := circuit.Join(ch, target.(*net.TCPConn))
	log.Info("circuit", "result", "ok", "bytes_to_target", st.AToB, "bytes_from_target", st.BToA,
		"duration_ms", st.Duration.Milliseconds(), "close", st.Reason)
}

// dialProblem says briefly why the local target could not be reached, e.g.
// "connection refused", without the Go error's plumbing.
func dialProblem(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno.Error()
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "connection timed out"
	}
	return err.Error()
}
