package sshd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/switchboard-dev/switchboard/internal/board"
	"github.com/switchboard-dev/switchboard/internal/circuit"
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
		err := &policy.Denial{Reason: "certificates are not supported yet"}
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
		reason := err.Error()
		if errors.As(err, &d) {
			reason = d.Reason
		}
		s.log.Info("auth", append(attrs, "result", "deny", "reason", reason)...)
		return
	}
	s.log.Info("auth", append(attrs, "result", "accept", "line", entry.Line, "roles", entry.Roles.String())...)
}

// conn is one authenticated SSH connection: a device, an operator, or both.
type conn struct {
	srv    *Server
	sc     *ssh.ServerConn
	key    ssh.PublicKey
	remote netip.AddrPort
	// opLog names the key as "operator" (circuits, commands); devLog as
	// "fingerprint" (device events), as the auth log does.
	opLog, devLog *slog.Logger

	mu     sync.Mutex
	device *board.Device // set by the first accepted tcpip-forward
	why    string        // why the server hung up, if it did
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
	if !s.admit(src.Addr()) {
		s.log.Warn("connection refused: too many unauthenticated connections", "source", src.String())
		nc.Close()
		return
	}
	// The library's handshake has no timeout of its own.
	nc.SetDeadline(s.cfg.Now().Add(s.cfg.HandshakeTimeout))
	sc, chans, reqs, err := ssh.NewServerConn(nc, s.ssh)
	s.authenticated(src.Addr())
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
	log := s.log.With("source", src.String(), "user", sc.User())
	fp := ssh.FingerprintSHA256(key)
	c := &conn{
		srv:    s,
		sc:     sc,
		key:    key,
		remote: src,
		opLog:  log.With("operator", fp),
		devLog: log.With("fingerprint", fp),
	}
	if !s.track(c, true) {
		sc.Close()
		return
	}
	defer s.track(c, false)
	c.serve(chans, reqs)
}

// serve runs the connection's one dispatch loop: global requests must be
// answered in order, and both streams must be drained or the connection
// stalls, so a single select handles both. Channels get their own goroutines.
func (c *conn) serve(chans <-chan ssh.NewChannel, reqs <-chan *ssh.Request) {
	stopKeepalive := c.keepalive()
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
			c.dispatchRequest(req)
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
	if dev := c.registered(); dev != nil {
		c.srv.cfg.Board.Detach(dev)
		c.mu.Lock()
		why := c.why
		c.mu.Unlock()
		c.devLog.Info("device disconnected", "device", dev.Name(), "reason", why)
	}
	wg.Wait()
}

// keepalive pings the client every interval and hangs up when a ping goes
// unanswered for CountMax intervals. Any reply, even a failure, proves the
// peer alive. Timers, not a goroutine, so an idle connection costs nothing.
func (c *conn) keepalive() (stop func()) {
	interval := c.srv.cfg.KeepaliveInterval
	deadline := interval * time.Duration(c.srv.cfg.KeepaliveCountMax)
	var (
		mu      sync.Mutex
		stopped bool
		t       *time.Timer
	)
	t = time.AfterFunc(interval, func() {
		watchdog := time.AfterFunc(deadline, func() {
			c.hangup("keepalive timeout: no reply for " + deadline.String())
		})
		_, _, err := c.sc.SendRequest("keepalive@openssh.com", true, nil)
		watchdog.Stop()
		mu.Lock()
		defer mu.Unlock()
		if err == nil && !stopped {
			t.Reset(interval)
		}
	})
	return func() {
		mu.Lock()
		stopped = true
		t.Stop()
		mu.Unlock()
	}
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
	if fwd.BindPort != 0 && !e.MayListen(fwd.BindPort) {
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
			Fingerprint: ssh.FingerprintSHA256(c.key),
			Remote:      c.remote.String(),
		}, c)
		if err != nil {
			return nil, 0, err
		}
		for _, old := range displaced {
			c.devLog.Info("device takeover", "device", old.Name())
		}
		c.device = dev
	}
	port, err := c.device.Listen(fwd.BindAddr, fwd.BindPort)
	if err == nil && fwd.BindPort == 0 && !e.MayListen(port) {
		c.device.Cancel(port)
		err = errors.New("the key's permitlisten does not allow an allocated port")
	}
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
		ch, reqs, err := c.sc.OpenChannel("forwarded-tcpip", payload)
		if err == nil {
			go ssh.DiscardRequests(reqs)
		}
		done <- opened{ch, err}
	}()
	select {
	case o := <-done:
		return o.ch, o.err
	case <-ctx.Done():
		go func() {
			if o := <-done; o.err == nil {
				o.ch.Close()
			}
		}()
		return nil, ctx.Err()
	}
}

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
	if e, err := c.entry(p); err == nil && e.Hostname != "" {
		return e.Hostname
	}
	if n, err := policy.CanonicalName(c.sc.User()); err == nil {
		return n
	}
	return c.sc.User()
}
