package sshd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/switchboard-dev/switchboard/internal/board"
	"github.com/switchboard-dev/switchboard/internal/circuit"
	"github.com/switchboard-dev/switchboard/internal/keepalive"
	"github.com/switchboard-dev/switchboard/internal/policy"
)

// keyExtension carries the verified key from authentication to the
// connection. The library may call PublicKeyCallback for keys the client only
// offers, so the key is recorded only once its signature is verified.
const keyExtension = "switchboard-key"

func remoteAddr(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// checkKey is a pure lookup: is this key admitted from this address now?
func (s *Server) checkKey(meta ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
	src := remoteAddr(meta.RemoteAddr())
	if _, isCert := key.(*ssh.Certificate); isCert {
		err := &policy.Denial{Reason: "certificates are not supported yet", Code: "certificate"}
		s.logAuth(meta, key, nil, err)
		return nil, err
	}
	if _, err := s.cfg.Policy().Authorize(key, src.Addr(), s.cfg.Now()); err != nil {
		s.logAuth(meta, key, nil, err)
		return nil, err
	}
	return &ssh.Permissions{}, nil
}

// keyVerified runs once the client has proved it holds the key: only now is
// the decision final and logged as an accept.
func (s *Server) keyVerified(meta ssh.ConnMetadata, key ssh.PublicKey, perms *ssh.Permissions, _ string) (*ssh.Permissions, error) {
	src := remoteAddr(meta.RemoteAddr())
	entry, err := s.cfg.Policy().Authorize(key, src.Addr(), s.cfg.Now())
	s.logAuth(meta, key, entry, err)
	if err != nil {
		return nil, err
	}
	perms.Extensions = map[string]string{keyExtension: string(key.Marshal())}
	return perms, nil
}

func (s *Server) logAuth(meta ssh.ConnMetadata, key ssh.PublicKey, entry *policy.Entry, err error) {
	attrs := []any{
		"fingerprint", ssh.FingerprintSHA256(key),
		"user", meta.User(),
		"source", meta.RemoteAddr().String(),
	}
	if err != nil {
		var d *policy.Denial
		reason, code := err.Error(), "other"
		if errors.As(err, &d) {
			reason, code = d.Reason, d.Code
		}
		s.cfg.Observer.AuthDenied(code)
		s.log.Info("auth", append(attrs, "result", "deny", "reason", reason)...)
		return
	}
	s.log.Info("auth", append(attrs, "result", "accept", "line", entry.Line, "roles", entry.Roles.String())...)
}

// conn is one authenticated SSH connection: a device, an operator, or both.
type conn struct {
	srv *Server
	sc  *ssh.ServerConn
	// ctx ends with the connection: work done for it (a device open or a
	// wake-up for this operator's circuit) stops waiting then.
	ctx    context.Context
	end    context.CancelFunc
	key    ssh.PublicKey
	fp     string // the key's fingerprint
	remote netip.AddrPort
	// opLog names the key as "operator" (circuits, commands); devLog as
	// "fingerprint" (device events), as the auth log does.
	opLog, devLog *slog.Logger

	mu      sync.Mutex
	device  *board.Device // set by the first accepted tcpip-forward
	expires *time.Timer   // hangs a device up when its key expires
	why     string        // why the server hung up, if it did

	// Device side: circuits waiting for this device to answer, and how many
	// opens in a row it let time out.
	opening  atomic.Int32
	timeouts atomic.Int32
}

// maxLogLen clips strings a client chose before they reach the log.
const maxLogLen = 128

func clip(s string) string {
	if len(s) <= maxLogLen {
		return s
	}
	return s[:maxLogLen] + "…"
}

// hangup closes the connection, remembering the first reason given so the
// disconnect log says why.
func (c *conn) hangup(why string) {
	c.mu.Lock()
	if c.why == "" {
		c.why = why
	}
	c.mu.Unlock()
	c.sc.Close()
}

func (s *Server) handle(nc net.Conn) {
	src := remoteAddr(nc.RemoteAddr())
	if !s.admit(nc, src.Addr()) {
		nc.Close()
		return
	}
	// The library's handshake has no timeout of its own. A socket deadline
	// is wall-clock time, whatever clock the policy uses.
	nc.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	sc, chans, reqs, err := ssh.NewServerConn(nc, s.ssh)
	s.authenticated(nc, src.Addr())
	s.cfg.Observer.Handshake(err == nil)
	if err != nil {
		s.log.Debug("handshake failed", "source", src.String(), "error", err.Error())
		nc.Close()
		return
	}
	nc.SetDeadline(time.Time{})

	key, err := ssh.ParsePublicKey([]byte(sc.Permissions.Extensions[keyExtension]))
	if err != nil {
		// Unreachable unless keyVerified changes; refuse rather than guess.
		s.log.Error("authenticated connection without a verified key", "source", src.String())
		sc.Close()
		return
	}
	log := s.log.With("source", src.String(), "user", clip(sc.User()))
	fp := ssh.FingerprintSHA256(key)
	ctx, cancel := context.WithCancel(context.Background())
	c := &conn{
		srv:    s,
		end:    cancel,
		sc:     sc,
		ctx:    ctx,
		key:    key,
		fp:     fp,
		remote: src,
		opLog:  log.With("operator", fp),
		devLog: log.With("fingerprint", fp),
	}
	if !s.track(c, true) {
		cancel()
		sc.Close()
		return
	}
	// The handshake grew this goroutine's stack, and the runtime never
	// shrinks a parked goroutine's stack back to the minimum: the
	// connection's long-lived loop starts on a fresh one. Adding while the
	// count is held above zero by this goroutine is safe against Wait.
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer cancel()
		defer s.track(c, false)
		c.serve(chans, reqs)
	}()
}

// onFreshStack runs fn in a short-lived goroutine and waits for it. The
// connection loop parks for hours between requests; work with deep stacks
// (policy, the board, logging) grows the short-lived goroutine's stack, not
// the loop's, so each idle connection keeps only a minimum-size stack.
func onFreshStack(fn func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	<-done
}

// serve runs the connection's one dispatch loop: global requests must be
// answered in order, and both streams must be drained or the connection
// stalls, so a single select handles both. Channels get their own goroutines.
func (c *conn) serve(chans <-chan ssh.NewChannel, reqs <-chan *ssh.Request) {
	cfg := c.srv.cfg
	stopKeepalive := keepalive.Start(c.sc, cfg.KeepaliveInterval, cfg.KeepaliveCountMax, func() {
		c.hangup(fmt.Sprintf("keepalive timeout: no reply for %s", cfg.KeepaliveInterval*time.Duration(cfg.KeepaliveCountMax)))
	})
	var wg sync.WaitGroup
	slots := make(chan struct{}, c.srv.cfg.MaxChannelsPerConn)
	for chans != nil || reqs != nil {
		select {
		case nc, ok := <-chans:
			if !ok {
				chans = nil
				continue
			}
			select {
			case slots <- struct{}{}:
			default:
				nc.Reject(ssh.ResourceShortage, fmt.Sprintf(
					"switchboard: too many channels open on this connection (limit %d)", cap(slots)))
				continue
			}
			wg.Add(1)
			go func() {
				defer func() { <-slots; wg.Done() }()
				c.dispatchChannel(nc)
			}()
		case req, ok := <-reqs:
			if !ok {
				reqs = nil
				continue
			}
			onFreshStack(func() { c.dispatchRequest(req) })
		}
	}
	stopKeepalive()
	// Both streams are closed, so the connection has ended: Wait returns at
	// once with why, unless the server hung up first and said why itself.
	why := "the client closed the connection"
	if err := c.sc.Wait(); err != nil && !errors.Is(err, io.EOF) {
		why = err.Error()
	}
	c.hangup(why)
	c.mu.Lock()
	if c.expires != nil {
		c.expires.Stop()
	}
	dev := c.device
	why = c.why
	c.mu.Unlock()
	if dev != nil {
		c.srv.cfg.Board.Detach(dev)
		c.srv.cfg.Observer.DeviceOnline(-1)
		c.devLog.Info("device disconnected", "device", dev.Name(), "reason", why)
	}
	// Before waiting for the channels: a circuit still waiting for a device
	// or a wake-up on behalf of this connection must give up now.
	c.end()
	wg.Wait()
}

func (c *conn) dispatchRequest(req *ssh.Request) {
	switch req.Type {
	case "tcpip-forward":
		c.tcpipForward(req)
	case "cancel-tcpip-forward":
		c.cancelTCPIPForward(req)
	default:
		// keepalive@openssh.com, no-more-sessions@openssh.com and anything
		// unknown: a failure reply is what OpenSSH's sshd sends too.
		if req.WantReply {
			req.Reply(false, nil)
		}
	}
}

func (c *conn) dispatchChannel(nc ssh.NewChannel) {
	switch nc.ChannelType() {
	case "direct-tcpip":
		c.directTCPIP(nc)
	case "session":
		c.session(nc)
	default:
		nc.Reject(ssh.UnknownChannelType, fmt.Sprintf("switchboard: channel type %q is not supported", nc.ChannelType()))
	}
}

// entry re-authorizes the connection's key against the current policy, so
// that a reload that removes or narrows a key applies to its next request.
func (c *conn) entry(p *policy.Policy) (*policy.Entry, error) {
	return p.Authorize(c.key, c.remote.Addr(), c.srv.cfg.Now())
}

func (c *conn) registered() *board.Device {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.device
}

// deviceNames returns the names this connection may listen under: the key's
// hostname= and aliases, or its SSH user name when it has none — unless
// another key's hostname= or alias= reserves that name.
func (c *conn) deviceNames(p *policy.Policy) ([]string, error) {
	e, err := c.entry(p)
	if err != nil {
		return nil, err
	}
	if e.Roles&policy.Listen == 0 {
		return nil, errors.New(`the key has no access="listen"`)
	}
	names, err := e.Names(c.sc.User())
	if err != nil {
		return nil, err
	}
	for _, n := range names {
		if owner := p.Owner(n); owner != nil && !sameKey(owner.Key, c.key) {
			return nil, fmt.Errorf("name %q is reserved for another key (authorized_keys line %d)", n, owner.Line)
		}
	}
	return names, nil
}

func sameKey(a, b ssh.PublicKey) bool {
	return string(a.Marshal()) == string(b.Marshal())
}

func (c *conn) tcpipForward(req *ssh.Request) {
	fwd, err := parseTCPIPForward(req.Payload)
	if err != nil {
		c.devLog.Warn("forward refused", "device", c.sc.User(), "reason", err.Error())
		req.Reply(false, nil)
		return
	}
	p := c.srv.cfg.Policy()
	dev, port, err := c.listen(p, fwd)
	if err != nil {
		c.devLog.Warn("forward refused", "device", c.wantedName(p), "port", fwd.BindPort, "reason", err.Error())
		req.Reply(false, nil)
		// A connection that came only to listen and holds no name has no
		// use left: OpenSSH without ExitOnForwardFailure would sit idle
		// forever, invisible. Hang up so its supervisor retries later.
		if e, aerr := c.entry(c.srv.cfg.Policy()); c.registered() == nil && (aerr != nil || e.Roles&policy.Initiate == 0) {
			c.hangup("its forward was refused: " + err.Error())
		}
		return
	}
	var reply []byte
	if fwd.BindPort == 0 {
		reply = ssh.Marshal(tcpipForwardReply{Port: port})
	}
	req.Reply(true, reply)
	c.devLog.Info("device registered", "device", dev.Name(), "names", dev.Names(),
		"port", port, "bind_addr", fwd.BindAddr)
}

// listen registers the connection as a device on its first forward, taking
// its names over from an older connection of the same key, then adds the
// virtual port. Whatever the bind address, it means the device itself.
func (c *conn) listen(p *policy.Policy, fwd tcpipForwardRequest) (*board.Device, uint32, error) {
	e, err := c.entry(p)
	if err != nil {
		return nil, 0, err
	}
	// Every check comes before Attach: a refused request must not take a
	// name over from a healthy connection.
	if !e.MayListen(fwd.BindPort) {
		if fwd.BindPort == 0 {
			return nil, 0, errors.New("the key's permitlisten names ports, so it may not ask for any free port")
		}
		return nil, 0, fmt.Errorf("port %d is not in the key's permitlisten", fwd.BindPort)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.device == nil {
		names, err := c.deviceNames(p)
		if err != nil {
			return nil, 0, err
		}
		dev, displaced, err := c.srv.cfg.Board.Attach(names, board.Identity{
			Fingerprint: c.fp,
			Remote:      c.remote.String(),
		}, c)
		if err != nil {
			return nil, 0, err
		}
		for _, old := range displaced {
			c.devLog.Info("device takeover", "device", old.Name())
		}
		c.device = dev
		c.srv.cfg.Observer.DeviceOnline(1)
		// A reload between reading p and Attach would have missed this
		// device in Revalidate: check again against what is current now.
		if now := c.srv.cfg.Policy(); now != p {
			if again, err := c.deviceNames(now); err != nil || !slices.Equal(again, names) {
				c.srv.cfg.Board.Detach(dev)
				c.srv.cfg.Observer.DeviceOnline(-1)
				c.device = nil
				const why = "authorized_keys changed while it registered"
				if c.why == "" { // c.mu is held: hangup would deadlock
					c.why = why
				}
				c.sc.Close()
				return nil, 0, errors.New(why)
			}
		}
		if !e.Expiry.IsZero() {
			c.expires = time.AfterFunc(e.Expiry.Sub(c.srv.cfg.Now()), func() {
				c.hangup("its key expired (expiry-time=" + e.Expiry.UTC().Format(time.RFC3339) + ")")
			})
		}
	}
	port, err := c.device.Listen(fwd.BindAddr, fwd.BindPort)
	return c.device, port, err
}

func (c *conn) cancelTCPIPForward(req *ssh.Request) {
	fwd, err := parseTCPIPForward(req.Payload)
	dev := c.registered()
	ok := err == nil && dev != nil && dev.Cancel(fwd.BindPort)
	if ok {
		c.devLog.Info("forward cancelled", "device", dev.Name(), "port", fwd.BindPort)
	}
	if req.WantReply {
		req.Reply(ok, nil)
	}
}

// OpenForward implements board.Link: it opens a forwarded-tcpip channel on
// the device's connection. OpenChannel cannot be cancelled, so when ctx ends
// first the late channel, if any, is closed by the goroutine that waits.
func (c *conn) OpenForward(ctx context.Context, f board.Forward, origin netip.AddrPort) (circuit.Stream, error) {
	// Each open that the device leaves unanswered holds two goroutines and
	// a pending channel until the device answers or goes: bound them.
	if n := c.opening.Add(1); int(n) > c.srv.cfg.MaxPendingOpens {
		c.opening.Add(-1)
		return nil, errNotAnswering
	}
	payload := ssh.Marshal(forwardedTCPIPRequest{
		Addr:       f.BindAddr,
		Port:       f.Port,
		OriginAddr: origin.Addr().String(),
		OriginPort: uint32(origin.Port()),
	})
	type opened struct {
		ch  ssh.Channel
		err error
	}
	done := make(chan opened, 1)
	go func() {
		defer c.opening.Add(-1)
		ch, reqs, err := c.sc.OpenChannel("forwarded-tcpip", payload)
		if err == nil {
			go ssh.DiscardRequests(reqs)
		}
		done <- opened{ch, err}
	}()
	select {
	case o := <-done:
		c.timeouts.Store(0)
		return o.ch, o.err
	case <-ctx.Done():
		if errors.Is(ctx.Err(), context.DeadlineExceeded) && c.timeouts.Add(1) >= maxOpenTimeouts {
			// Answering keepalives but no opens: a wedged client. Hanging
			// up lets it reconnect and frees every pending open at once.
			c.hangup(fmt.Sprintf("it left %d circuit opens in a row unanswered", maxOpenTimeouts))
		}
		go func() {
			if o := <-done; o.err == nil {
				o.ch.Close()
			}
		}()
		return nil, ctx.Err()
	}
}

// maxOpenTimeouts is how many opens in a row a device may leave unanswered
// before the server hangs it up.
const maxOpenTimeouts = 3

// errNotAnswering says too many circuits already wait for the device.
var errNotAnswering = errors.New("sshd: device is not answering circuit opens")

// Close implements board.Link; the board calls it when a newer connection
// of the same key takes the device's names over.
func (c *conn) Close() error {
	c.hangup("taken over by a newer connection of the same key")
	return nil
}

// wantedName is the name a refused device was after, for the log: its
// hostname= if the key has one, else its SSH user name.
func (c *conn) wantedName(p *policy.Policy) string {
	if dev := c.registered(); dev != nil {
		return dev.Name()
	}
	if e, err := c.entry(p); err == nil {
		if names, err := e.Names(c.sc.User()); err == nil {
			return names[0]
		}
	}
	return clip(c.sc.User())
}
